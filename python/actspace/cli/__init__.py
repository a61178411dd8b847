"""actspace.cli"""
