"""Faust agents: thin loops that decode events, call the domain, write tables and emit."""
