"""circuitkit.sae"""
