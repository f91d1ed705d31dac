"""Shared pieces every layer may use.

Settings, metrics, the clock, the partitioner, ``topics.yaml`` and the Redis keys.

Nothing here imports Faust's app, the agents, the sinks or the CLI.
"""
