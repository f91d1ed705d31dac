"""Shopify jobs inside the workers: periodic reconciliation and inventory write-back.

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
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from cartloom.app import app, settings, topology
from cartloom.shopify.admin_client import AdminClient, RedisRateBudget
from cartloom.shopify.reconcile import reconcile
from cartloom.shopify.writeback import InventoryWriteback, WritebackRunner
from cartloom.sinks.redis import redis_client

log = logging.getLogger(__name__)
LEASE_KEY = "cartloom:shopify:reconcile:lease"


def enabled_api() -> bool:
    """Whether an Admin API URL and token are configured."""
    return bool(settings.shopify_api_url and settings.shopify_access_token is not None)


def enabled() -> bool:
    """Whether this worker should reconcile periodically."""
    return settings.shopify_reconcile_interval_seconds > 0 and enabled_api()


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


LEDGER_TABLE = "reservation_by_line"


@app.service
class ShopifyWriteback(mode.Service):
    """Runs inventory write-back (``CARTLOOM_SHOPIFY_WRITEBACK_ENABLED``) from the ledger."""

    @mode.Service.task
    async def _write_back(self) -> None:
        if not (settings.shopify_writeback_enabled and enabled_api()):
            return
        spec = topology.tables.get(LEDGER_TABLE)
        if spec is None:
            log.error("write-back enabled but topics.yaml has no %s table", LEDGER_TABLE)
            return
        assert settings.shopify_api_url and settings.shopify_access_token
        shop = settings.shopify_api_url.split("://", 1)[-1].split("/", 1)[0]
        redis = redis_client(settings)
        budget = RedisRateBudget(
            redis, shop, settings.shopify_api_bucket_size, settings.shopify_api_restore_rate
        )
        consumer = AIOKafkaConsumer(
            spec.changelog_topic(settings.app_id),
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"{settings.app_id}-shopify-writeback",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        token = settings.shopify_access_token.get_secret_value()
        try:
            async with AdminClient(
                settings.shopify_api_url, token, settings.shopify_api_version, budget
            ) as client:
                writeback = InventoryWriteback(
                    client, redis, settings.shopify_writeback_location_id
                )
                runner = WritebackRunner(writeback, consumer)
                self.add_future(self._stop_with_worker(runner))
                await runner.run()
        finally:
            await redis.aclose()

    async def _stop_with_worker(self, runner: WritebackRunner) -> None:
        await self.wait_until_stopped()
        runner.stop()
