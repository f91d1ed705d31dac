"""Runs the DynamoDB and Redis materialisers inside each worker (``CARTLOOM_SINKS_ENABLED``)."""

from __future__ import annotations

import asyncio

import mode

from cartloom.app import app, settings, topology
from cartloom.sinks.base import Sink
from cartloom.sinks.dynamodb import DynamoDBSink
from cartloom.sinks.materialiser import Materialiser, sink_group_id
from cartloom.sinks.redis import RedisSink


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
        bootstrap_servers=settings.bootstrap_servers,
        group_id=sink_group_id(settings.app_id, sink.name),
        entities=changelog_entities(),
        batch_max=settings.sink_batch_max,
        retry_max_seconds=settings.sink_retry_max_seconds,
    )


@app.service
class Materialisers(mode.Service):
    """Starts one materialiser per store with the worker and stops them with it."""

    def __post_init__(self) -> None:
        self._running: list[tuple[Materialiser, asyncio.Future[None]]] = []

    async def on_started(self) -> None:
        """Start the sinks once the worker is up (they only need the broker and the stores)."""
        if not settings.sinks_enabled:
            return
        for sink in (DynamoDBSink(settings), RedisSink(settings)):
            materialiser = build_materialiser(sink)
            self._running.append((materialiser, self.add_future(materialiser.run())))

    async def on_stop(self) -> None:
        """Let each materialiser finish its batch in hand, then close it."""
        for materialiser, future in self._running:
            materialiser.stop()
            await asyncio.wait({future}, timeout=10)
