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
    """Faust's aiokafka consumer thread, with the fetch wait CartLoom's settings choose.

    Faust hard-codes ``fetch_max_wait_ms=1500``. A real Kafka broker answers a fetch as
    soon as records arrive, so the wait only bounds empty polls; the embedded broker holds
    every fetch for the whole wait, which made each hop of the order saga cost up to 1.5 s.
    """

    fetch_max_wait_ms = 500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms  # read when the consumer starts
        return consumer


def tuned_transport(fetch_max_wait_ms: int) -> type[Any]:
    """Faust's aiokafka transport whose consumers wait at most ``fetch_max_wait_ms``."""

    class ConsumerThread(TunedConsumerThread):
        pass

    ConsumerThread.fetch_max_wait_ms = fetch_max_wait_ms

    class TunedConsumer(aiokafka_driver.Consumer):
        def _new_consumer_thread(self) -> TunedConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class TunedTransport(aiokafka_driver.Transport):
        Consumer = TunedConsumer

    return TunedTransport
