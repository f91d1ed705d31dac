"""Shopify's webhooks and Admin API reads turned into CartLoom's events and views: pure, no I/O."""
