"""circuitkit.viz"""
