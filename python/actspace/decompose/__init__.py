"""actspace.decompose"""
