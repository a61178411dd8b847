"""actspace.capture"""
