"""circuitkit.patching"""
