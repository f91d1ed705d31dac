"""The embedded local stack: a real broker, redis-server and moto_server without Docker."""
