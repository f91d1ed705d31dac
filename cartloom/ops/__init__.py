"""Operator tools behind the CLI.

The audit, dead-letter replay, the load generator, topic admin and the dataflow diagram.
"""
