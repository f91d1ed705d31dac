"""Runs the DynamoDB and Redis materialisers inside each worker (``CARTLOOM_SINKS_ENABLED``).

``cartloom sink`` runs the same supervisor in a process of its own
(:mod:`cartloom.sinks.process`), to scale the sinks apart from the order workers.
"""

from __future__ import annotations

import asyncio

import mode

from cartloom.sinks.base import Sink
from cartloom.sinks.materialiser import Materialiser
from cartloom.sinks.runner import STORES, SinkSupervisor
from cartloom.sinks.runner import build_materialiser as build_for
from cartloom.stream.app import app, settings, topology


def build_materialiser(sink: Sink) -> Materialiser:
    """A materialiser for ``sink`` with the worker's settings, in its own consumer group."""
    return build_for(settings, topology, sink)


@app.service
class Materialisers(mode.Service):
    """Keeps one materialiser per store running with the worker and stops them with it."""

    def __post_init__(self) -> None:
        self._supervisor: SinkSupervisor | None = None
        self._running: asyncio.Future[None] | None = None

    async def on_started(self) -> None:
        """Start the sinks once the worker is up (they only need the broker and the stores)."""
        if not settings.sinks_enabled:
            return
        self._supervisor = SinkSupervisor(settings, topology, list(STORES))
        self._running = self.add_future(self._supervisor.run())

    async def on_stop(self) -> None:
        """Let each materialiser finish its batch in hand, then close it."""
        if self._supervisor is not None:
            self._supervisor.stop()
        if self._running is not None:
            await asyncio.wait([self._running], timeout=15)
