"""circuitkit.circuit"""
