"""Runs the DynamoDB and Redis materialisers inside each worker (``CARTLOOM_SINKS_ENABLED``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import mode

from cartloom import metrics
from cartloom.app import app, settings, topology
from cartloom.kafka_clients import kafka_connection
from cartloom.sinks.base import Sink
from cartloom.sinks.dynamodb import DynamoDBSink
from cartloom.sinks.materialiser import SINK_DEAD_LETTER_TOPIC, Materialiser, sink_group_id
from cartloom.sinks.redis import RedisSink

log = logging.getLogger(__name__)

#: Pause before a materialiser that crashed is started again.
RESTART_DELAY_SECONDS = 5.0


def changelog_entities() -> dict[str, str]:
    """Changelog topic -> materialised entity, for every table that is materialised."""
    return {
        spec.changelog_topic(settings.app_id): spec.entity
        for spec in topology.tables.values()
        if spec.entity
    }


def build_materialiser(sink: Sink) -> Materialiser:
    """A materialiser for ``sink`` in its own consumer group."""
    return Materialiser(
        sink,
        kafka=kafka_connection(settings),
        group_id=sink_group_id(settings.app_id, sink.name),
        entities=changelog_entities(),
        batch_max=settings.sink_batch_max,
        retry_max_seconds=settings.sink_retry_max_seconds,
        max_attempts=settings.sink_max_attempts,
        dead_letter_topic=settings.topic_name(SINK_DEAD_LETTER_TOPIC),
    )


@app.service
class Materialisers(mode.Service):
    """Keeps one materialiser per store running with the worker and stops them with it."""

    def __post_init__(self) -> None:
        self._current: dict[str, Materialiser] = {}
        self._supervisors: list[asyncio.Future[None]] = []

    async def on_started(self) -> None:
        """Start the sinks once the worker is up (they only need the broker and the stores)."""
        if not settings.sinks_enabled:
            return
        self._supervisors = [
            self.add_future(self._supervise(store, factory))
            for store, factory in (("dynamodb", DynamoDBSink), ("redis", RedisSink))
        ]

    async def _supervise(self, store: str, factory: Callable[..., Sink]) -> None:
        """Run the store's materialiser; if it crashes, log, count, and start a fresh one.

        A crash loses nothing: offsets are committed only after writes, so the new
        materialiser re-reads from the last commit.
        """
        while not self.should_stop:
            materialiser = build_materialiser(factory(settings))
            self._current[store] = materialiser
            try:
                await materialiser.run()
                return
            except Exception:
                metrics.SINK_FAILURES.labels(store=store).inc()
                log.exception("%s materialiser crashed; restarting", store)
                await self.sleep(RESTART_DELAY_SECONDS)

    async def on_stop(self) -> None:
        """Let each materialiser finish its batch in hand, then close it."""
        for materialiser in self._current.values():
            materialiser.stop()
        if self._supervisors:
            await asyncio.wait(self._supervisors, timeout=15)
