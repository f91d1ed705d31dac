"""Keeping one materialiser per store running: in a worker, or in ``cartloom sink``.

A materialiser that crashes loses nothing (offsets are committed only after the writes),
so it is logged, counted and started again from the last commit after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cartloom.core import metrics
from cartloom.core.settings import Settings
from cartloom.core.topology import Topology
from cartloom.sinks.base import Sink
from cartloom.sinks.dynamodb import DynamoDBSink
from cartloom.sinks.materialiser import SINK_DEAD_LETTER_TOPIC, Materialiser, sink_group_id
from cartloom.sinks.redis import RedisSink
from cartloom.stream.kafka_clients import kafka_connection

log = logging.getLogger(__name__)

#: Pause before a materialiser that crashed is started again.
RESTART_DELAY_SECONDS = 5.0
#: The stores and how to build each one's sink.
STORES: dict[str, Callable[[Settings], Sink]] = {"dynamodb": DynamoDBSink, "redis": RedisSink}


def changelog_entities(settings: Settings, topology: Topology) -> dict[str, str]:
    """Changelog topic -> materialised entity, for every table that is materialised."""
    return {
        spec.changelog_topic(settings.app_id): spec.entity
        for spec in topology.tables.values()
        if spec.entity
    }


def build_materialiser(settings: Settings, topology: Topology, sink: Sink) -> Materialiser:
    """A materialiser for ``sink`` in its own consumer group."""
    return Materialiser(
        sink,
        kafka=kafka_connection(settings),
        group_id=sink_group_id(settings.app_id, sink.name),
        entities=changelog_entities(settings, topology),
        batch_max=settings.sink_batch_max,
        batch_within_seconds=settings.sink_batch_within_seconds,
        retry_max_seconds=settings.sink_retry_max_seconds,
        max_attempts=settings.sink_max_attempts,
        dead_letter_topic=settings.topic_name(SINK_DEAD_LETTER_TOPIC),
        fetch_max_wait_ms=settings.broker_fetch_max_wait_ms,
    )


class SinkSupervisor:
    """Runs each store's materialiser until :meth:`stop`, restarting one that crashed."""

    def __init__(self, settings: Settings, topology: Topology, stores: list[str]) -> None:
        self._settings = settings
        self._topology = topology
        self._stores = stores
        self._current: dict[str, Materialiser] = {}
        self._stopping = asyncio.Event()
        #: Stores whose materialiser is running now (not waiting to restart).
        self.running: set[str] = set()

    async def run(self) -> None:
        """Supervise every store until stopped; return once each has finished its batch."""
        await asyncio.gather(*(self._supervise(store) for store in self._stores))

    async def _supervise(self, store: str) -> None:
        while not self._stopping.is_set():
            sink = STORES[store](self._settings)
            materialiser = build_materialiser(self._settings, self._topology, sink)
            self._current[store] = materialiser
            self.running.add(store)
            try:
                await materialiser.run()
                return
            except Exception:
                metrics.SINK_FAILURES.labels(store=store).inc()
                log.exception("%s materialiser crashed; restarting", store)
            finally:
                self.running.discard(store)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=RESTART_DELAY_SECONDS)

    def stop(self) -> None:
        """Let each materialiser finish its batch in hand, then close it."""
        self._stopping.set()
        for materialiser in self._current.values():
            materialiser.stop()
