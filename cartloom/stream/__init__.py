"""The Faust wiring: the app, its tables and topics, the consumer, batching and dead letters.

Everything that knows how CartLoom sits on Faust and Kafka lives here, so the agents can be
only the dataflow graph and the domain only decisions.
"""
