"""Deployment checks: Dockerfile, compose file and deploy/k8s against the code and topics.yaml."""
