"""circuitkit.heads"""
