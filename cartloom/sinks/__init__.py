"""Sinks: materialise table changes into DynamoDB and Redis, never going backwards."""
