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
from redis.asyncio import Redis

from cartloom.core import metrics
from cartloom.core.redis_keys import RedisKeys
from cartloom.shopify.admin_client import AdminClient, RedisRateBudget
from cartloom.shopify.reconcile import reconcile
from cartloom.shopify.writeback import (
    WRITEBACK_DEAD_LETTER_TOPIC,
    WRITEBACK_PROGRESS_TOPIC,
    InventoryWriteback,
    WritebackRunner,
)
from cartloom.shopify.writeback_progress import WritebackProgress
from cartloom.sinks.redis import redis_client
from cartloom.stream.app import app, settings, topology
from cartloom.stream.deadletter import DEAD_LETTER_MAX_REQUEST_BYTES
from cartloom.stream.kafka_clients import kafka_connection

log = logging.getLogger(__name__)


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
                lease = RedisKeys(settings.namespace).reconcile_lease()
                if await redis.set(lease, owner, nx=True, ex=max(1, int(interval))):
                    await self._run_once(redis)
        finally:
            await redis.aclose()

    async def _run_once(self, redis: Redis) -> None:
        try:
            await asyncio.wait_for(reconcile(settings, redis), timeout=3600)
        except Exception:
            log.exception("periodic reconciliation failed; next try in one interval")


LEDGER_TABLE = "reservation_by_line"
#: Pause before a write-back that crashed (a dead letter the broker refused, a consumer
#: failure) is started again; its batch was not committed and is read again.
WRITEBACK_RESTART_DELAY_SECONDS = 5.0


@app.service
class ShopifyWriteback(mode.Service):
    """Runs inventory write-back (``CARTLOOM_SHOPIFY_WRITEBACK_ENABLED``) from the ledger.

    Write-back never stops for good while the worker runs: the runner itself sets aside
    the lines it cannot push, and if it crashes anyway it is logged, counted and started
    again (from the last commit).
    """

    def __post_init__(self) -> None:
        self._runner: WritebackRunner | None = None

    @mode.Service.task
    async def _write_back(self) -> None:
        if not (settings.shopify_writeback_enabled and enabled_api()):
            return
        spec = topology.tables.get(LEDGER_TABLE)
        if spec is None:
            log.error("write-back enabled but topics.yaml has no %s table", LEDGER_TABLE)
            return
        while not self.should_stop:
            try:
                await self._run_once(spec.changelog_topic(settings.app_id))
                return
            except Exception:
                metrics.SHOPIFY_WRITEBACKS.labels(outcome="crashed").inc()
                log.exception(
                    "inventory write-back crashed; restarting in %.0f s",
                    WRITEBACK_RESTART_DELAY_SECONDS,
                )
                await self.sleep(WRITEBACK_RESTART_DELAY_SECONDS)

    async def _run_once(self, changelog: str) -> None:
        assert settings.shopify_api_url and settings.shopify_access_token
        shop = settings.shopify_api_url.split("://", 1)[-1].split("/", 1)[0]
        redis = redis_client(settings)
        names = RedisKeys(settings.namespace)
        budget = RedisRateBudget(
            redis,
            shop,
            settings.shopify_api_bucket_size,
            settings.shopify_api_restore_rate,
            key=names.api_budget(shop),
        )
        kafka = kafka_connection(settings)
        consumer = kafka.consumer(
            changelog,
            group_id=f"{settings.app_id}-shopify-writeback",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = kafka.producer(
            acks="all",
            max_request_size=DEAD_LETTER_MAX_REQUEST_BYTES,
        )
        token = settings.shopify_access_token.get_secret_value()
        try:
            async with AdminClient(
                settings.shopify_api_url, token, settings.shopify_api_version, budget
            ) as client:
                progress = WritebackProgress(
                    kafka, producer, settings.topic_name(WRITEBACK_PROGRESS_TOPIC)
                )
                writeback = InventoryWriteback(
                    client, progress, settings.shopify_writeback_location_id
                )
                self._runner = WritebackRunner(
                    writeback,
                    consumer,
                    producer,
                    max_attempts=settings.shopify_writeback_max_attempts,
                    dead_letter_topic=settings.topic_name(WRITEBACK_DEAD_LETTER_TOPIC),
                )
                if not self.should_stop:
                    await self._runner.run()
        finally:
            self._runner = None
            await redis.aclose()

    async def on_stop(self) -> None:
        """Let the runner finish its batch in hand."""
        if self._runner is not None:
            self._runner.stop()
