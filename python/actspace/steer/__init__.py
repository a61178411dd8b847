"""actspace.steer"""
