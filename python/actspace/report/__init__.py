"""actspace.report"""
