"""A batch's writes are awaited in order, and a failed one stops the worker unacknowledged.

Faust's ``take_events`` acknowledges a batch whose body raised, and its flush before a
commit ignores failed deliveries, so a write the broker refused must end the process
before the batch's input can be acknowledged; and no answer may leave before the state it
announces is written. The producer here is a stand-in that records what was handed to it
and fails the deliveries a test chooses (the real path runs in tests/integration).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from cartloom.stream import batching
from cartloom.stream.batching import BatchHandler, Outbox, TableBatch, handle_batch


class RefusedError(Exception):
    """What the broker answered for a refused write."""


class RecordBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= 3:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class Producer:
    """Hands out delivery futures; those for ``failing`` topics fail once awaited."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.log: list[tuple[str, Any]] = []  # (topic, what), in the order handed over
        self.offsets: dict[tuple[str, int], int] = {}

    def _ensure_producer(self) -> Producer:
        return self

    def create_batch(self) -> RecordBatch:
        return RecordBatch()

    def _delivery(self, topic: str, partition: int, count: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic in self.failing:
            future.set_exception(RefusedError(f"{topic} refused"))
        else:
            base = self.offsets.get((topic, partition), 0)
            self.offsets[(topic, partition)] = base + count
            tp = SimpleNamespace(topic=topic, partition=partition)
            future.set_result(SimpleNamespace(topic_partition=tp, offset=base))
        return future

    async def send_batch(self, batch: RecordBatch, topic: str, partition: int) -> Any:
        self.log.append((topic, [key for key, _ in batch.records]))
        return self._delivery(topic, partition, batch.record_count())

    async def send(self, topic: str, key: bytes, value: bytes, **_: Any) -> Any:
        self.log.append((topic, key))
        return self._delivery(topic, 0, 1)


class Store(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[Any, int] = {}

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[(tp.topic, tp.partition)] = offset


def table(name: str) -> Any:
    topic = SimpleNamespace(get_topic_name=lambda: name)
    return SimpleNamespace(data=Store(), changelog_topic=topic)


class Writer(BatchHandler):
    """Writes one ledger entry, its stock, and an answer per event."""

    def __init__(self, ledger: TableBatch, stock: TableBatch, outbox: Outbox) -> None:
        super().__init__()
        self.ledger, self.stock, self.outbox = ledger, stock, outbox

    def handlers(self) -> dict[str, Any]:
        return {}  # handle is replaced: every event is written, whatever its topic

    def handle(self, event: Any) -> None:
        key = event.key.decode()
        self.ledger.put(f"{key}#0", {"n": 1}, 0)
        self.stock.put(key, {"n": 1}, 0)
        self.outbox.add_to_envelope(topic("reservation.results"), key, "results", {"k": key})


def topic(name: str) -> Any:
    return SimpleNamespace(get_topic_name=lambda: name, partitions=8)


class Event(SimpleNamespace):
    """An event (weakly referable, as Faust's are)."""


def event(key: str) -> Any:
    return Event(key=key.encode(), value=b"{}", message=SimpleNamespace(topic="t"))


class ExitedError(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        raise ExitedError(code)

    monkeypatch.setattr(batching.os, "_exit", exit_now)
    return codes


async def run(producer: Producer) -> None:
    ledger, stock = TableBatch(table("ledger"), producer), TableBatch(table("stock"), producer)
    outbox = Outbox(producer)
    handler = Writer(ledger, stock, outbox)
    events = [event(f"sku-{n}") for n in range(5)]
    await handle_batch(events, handler, ([ledger, stock], outbox), lambda t: topic(t), "test")


async def test_writes_go_out_in_order_each_after_the_one_before_is_acknowledged(
    exits: list[int],
) -> None:
    producer = Producer(failing=set())
    await run(producer)

    topics = [t for t, _ in producer.log]
    assert topics == sorted(topics, key=["ledger", "stock", "reservation.results"].index)
    assert set(topics) == {"ledger", "stock", "reservation.results"}
    # The last record of a partition travels alone (the embedded broker's end offsets).
    assert [len(keys) for t, keys in producer.log if t == "ledger"] == [3, 1, 1]
    assert exits == []


async def test_a_refused_changelog_write_stops_the_worker_before_any_answer_leaves(
    exits: list[int],
) -> None:
    producer = Producer(failing={"ledger"})
    with pytest.raises(ExitedError):
        await run(producer)

    assert exits == [batching.EXIT_UNDELIVERED]
    assert "reservation.results" not in [t for t, _ in producer.log]
    assert "stock" not in [t for t, _ in producer.log]


async def test_a_refused_answer_stops_the_worker_too(exits: list[int]) -> None:
    producer = Producer(failing={"reservation.results"})
    with pytest.raises(ExitedError):
        await run(producer)
    assert exits == [batching.EXIT_UNDELIVERED]
