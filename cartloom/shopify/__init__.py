"""Shopify integration: webhook receiver, signatures, Admin API client, simulator, sync jobs."""
