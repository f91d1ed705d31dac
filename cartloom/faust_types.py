"""Faust classes CartLoom configures the app with."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread


class RawKeyTable(faust.Table):  # type: ignore[type-arg]
    """A table whose ``str`` keys travel as the producers' raw key bytes, not as JSON.

    Faust encodes ``str`` keys as JSON (``'"o-1"'``). Raw bytes keep the changelog keys
    equal to the input topics' keys, so web-view routing hashes the same bytes as the
    producers' partitioner and the sinks read plain ids. Choosing the codec here (not by
    assigning ``key_serializer`` after construction) matters: Faust builds the changelog
    topic, which recovery decodes with, while the table is being registered.
    """

    def _serializer_from_type(self, typ: Any) -> Any:
        if typ is str:
            return "raw"
        return super()._serializer_from_type(typ)


class TunedConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the fetch wait the app's settings choose.

    Faust hard-codes ``fetch_max_wait_ms=1500``. A real Kafka broker answers a fetch as
    soon as records arrive, so the wait only bounds empty polls; the embedded broker holds
    every fetch for the whole wait, which made each hop of the order saga cost up to 1.5 s.
    The app (``cartloom.app.CartloomApp``) carries the value as ``fetch_max_wait_ms``.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts; 500 ms (aiokafka's default) for a plain Faust app.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 500)
        return consumer


class TunedConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, on :class:`TunedConsumerThread`."""

    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class TunedTransport(aiokafka_driver.Transport):
    """Faust's aiokafka transport, with :class:`TunedConsumer`."""

    Consumer = TunedConsumer
