"""Periodic Shopify reconciliation inside the workers, one replica at a time.

Every ``CARTLOOM_SHOPIFY_RECONCILE_INTERVAL_SECONDS`` each worker tries to take a Redis
lease (``SET NX EX``) for the interval; the one that gets it runs
:func:`cartloom.shopify.reconcile.reconcile`. Disabled when the interval is 0 or no Admin
API URL and token are configured. A failed run is logged and counted; the next interval
tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import mode
from redis.asyncio import Redis

from cartloom.app import app, settings
from cartloom.shopify.reconcile import reconcile
from cartloom.sinks.redis import redis_client

log = logging.getLogger(__name__)
LEASE_KEY = "cartloom:shopify:reconcile:lease"


def enabled() -> bool:
    """Whether this worker should reconcile periodically."""
    return bool(
        settings.shopify_reconcile_interval_seconds > 0
        and settings.shopify_api_url
        and settings.shopify_access_token is not None
    )


@app.service
class PeriodicReconciliation(mode.Service):
    """Runs reconciliation every interval on whichever worker holds the lease."""

    @mode.Service.task
    async def _reconcile_periodically(self) -> None:
        if not enabled():
            return
        interval = settings.shopify_reconcile_interval_seconds
        owner = f"{socket.gethostname()}:{os.getpid()}"
        redis = redis_client(settings)
        try:
            while not self.should_stop:
                await self.sleep(interval)
                if await redis.set(LEASE_KEY, owner, nx=True, ex=max(1, int(interval))):
                    await self._run_once(redis)
        finally:
            await redis.aclose()

    async def _run_once(self, redis: Redis) -> None:
        try:
            await asyncio.wait_for(reconcile(settings, redis), timeout=3600)
        except Exception:
            log.exception("periodic reconciliation failed; next try in one interval")
