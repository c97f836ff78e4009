"""circuitkit.studies"""
