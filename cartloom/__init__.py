"""CartLoom: a real-time e-commerce backend on Faust and Kafka."""

__version__ = "0.1.0"
