"""actspace.stats"""
