"""The tables as the broker holds them, read from outside the workers while a scenario runs.

One plain consumer (no group) tails the changelogs of ``order_by_id``, ``inventory_by_sku``
and ``reservation_by_line`` from their beginning and keeps the newest value per key (the
highest version, as a recovering worker does), which is each table's value. It also tails
the saga's input topics, to learn their ends and, for a failed run, to show what each
topic held about the orders that went wrong (:meth:`Observer.trail`).

Ends come from the fetch responses (``consumer.highwater``), never from ListOffsets: the
embedded broker's ListOffsets answers the last record batch's base offset + 1, which is
short of the end whenever that batch holds more than one record. "Read to the end" means a
fetch round after the question returned nothing and every position reached its highwater.

:class:`GroupLag` reads the consumer groups' committed offsets (Faust's group, the order
intake's and the two sinks') with an admin client, so a scenario can tell when the workers
have processed everything that was written, and the sinks have stored it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cartloom.agents.intake import intake_group_id
from cartloom.domain.changelog_order import changelog_rank
from cartloom.sinks.materialiser import sink_group_id
from tests.harness import eventually

APP_ID = "cartloom"
TABLES = ("order_by_id", "inventory_by_sku", "reservation_by_line")
#: What Faust's group reads (the saga's inputs) and what the intake's group reads.
FAUST_INPUTS = (
    "orders.accepted",
    "order.events",
    "reservation.results",
    "order.timeouts",
    "inventory",
    "inventory.commands",
)
INTAKE_INPUTS = ("orders",)
SINK_TABLES = ("order_by_id", "inventory_by_sku")  # materialised (product_by_id: no writes)
OPEN_STATUSES = frozenset({"received"})


def changelog_topic(table: str, app_id: str = APP_ID) -> str:
    return f"{app_id}-{table}-changelog"


class Observer:
    """Tails the changelogs and the input topics; ``tables[name][key]`` is the newest value."""

    def __init__(
        self, bootstrap: str, app_id: str = APP_ID, raw_topics: Iterable[str] = ()
    ) -> None:
        self._bootstrap = bootstrap
        self._topics = {changelog_topic(t, app_id): t for t in TABLES}
        self.tables: dict[str, dict[str, Any]] = {t: {} for t in TABLES}
        #: every record of ``raw_topics`` (dead-letter topics, say), as read
        self.raw: dict[str, list[Any]] = {t: [] for t in raw_topics}
        self.resolved_at: dict[str, float] = {}  # order id -> first seen out of "received"
        self.records = 0
        self.undecodable = 0
        self.stale = 0  # records older than the version the key held: left out
        #: every record read, any topic: (monotonic time read, topic, partition, offset,
        #: key, value); what :meth:`trail` searches when a scenario fails
        self.log: list[tuple[float, str, int, int, bytes | None, bytes | None]] = []
        self.error: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._partitions: list[TopicPartition] = []
        self._last_empty_round = 0.0

    async def start(self) -> None:
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        await consumer.topics()
        names = [*self._topics, *FAUST_INPUTS, *INTAKE_INPUTS]
        names += [t for t in self.raw if t not in names]
        for name in names:
            parts = consumer.partitions_for_topic(name)
            assert parts, f"topic {name} does not exist on the broker"
            self._partitions.extend(TopicPartition(name, p) for p in sorted(parts))
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        self._task = asyncio.create_task(self._run(), name="chaos-observer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=20_000)
                now = time.monotonic()
                if not any(batch.values()):
                    self._last_empty_round = now
                for tp, records in batch.items():
                    self.log.extend(
                        (now, tp.topic, tp.partition, r.offset, r.key, r.value) for r in records
                    )
                    table = self._topics.get(tp.topic)
                    if table is not None:
                        self._apply(table, records, now)
                    if tp.topic in self.raw:
                        self.raw[tp.topic].extend(records)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported by every later question
            self.error = exc

    def _apply(self, table: str, records: Iterable[Any], now: float) -> None:
        values = self.tables[table]
        for record in records:
            self.records += 1
            if record.key is None:
                continue
            key = record.key.decode(errors="replace")
            if record.value is None:
                values.pop(key, None)
                continue
            try:
                value = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                self.undecodable += 1
                continue
            held = values.get(key)
            if (
                isinstance(value, dict)
                and isinstance(held, dict)
                and (changelog_rank(value) < changelog_rank(held))
            ):
                self.stale += 1  # as a recovering worker does (RawKeyTable)
                continue
            values[key] = value
            if (
                table == "order_by_id"
                and key not in self.resolved_at
                and isinstance(value, dict)
                and value.get("status") not in OPEN_STATUSES
            ):
                self.resolved_at[key] = now

    def _check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the changelog observer failed: {self.error!r}")

    def highwaters(self) -> dict[TopicPartition, int | None]:
        """Each watched partition's end, as the latest fetch reported it."""
        assert self._consumer is not None
        return {tp: self._consumer.highwater(tp) for tp in self._partitions}

    async def at_end(self) -> bool:
        """Whether every watched partition was read up to its latest known end."""
        self._check()
        assert self._consumer is not None
        for tp, highwater in self.highwaters().items():
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    async def read_to_end(self, timeout: float = 60.0) -> None:
        """Return once everything written before this call has been read."""
        asked = time.monotonic()

        async def done() -> bool:
            return self._last_empty_round > asked and await self.at_end()

        await eventually(done, timeout=timeout, interval=0.1, what="changelogs read to the end")

    def trail(self, needle: str, since: float) -> list[dict[str, Any]]:
        """Every record read whose key or value holds ``needle``, in the order read.

        For a failed scenario: what each topic and changelog held about one order, with
        when the observer read it (seconds after ``since``).
        """
        found = needle.encode()
        out = []
        for at, topic, partition, offset, key, value in self.log:
            if (key is None or found not in key) and (value is None or found not in value):
                continue
            text = (value or b"").decode(errors="replace")
            out.append(
                {
                    "read_s": round(at - since, 2),
                    "tp": f"{topic}[{partition}]@{offset}",
                    "key": (key or b"").decode(errors="replace"),
                    "value": text if len(text) <= 1500 else text[:1500] + "...",
                }
            )
        return out

    def status(self, order_id: str) -> str | None:
        view = self.tables["order_by_id"].get(order_id)
        return view.get("status") if isinstance(view, dict) else None

    def unresolved(self, order_ids: Iterable[str]) -> list[str]:
        """The ``order_ids`` not yet seen out of ``received`` (absent ones included)."""
        return [oid for oid in order_ids if oid not in self.resolved_at]


class GroupLag:
    """How far the workers' consumer groups are behind the ends the observer has seen."""

    def __init__(self, bootstrap: str, observer: Observer, app_id: str = APP_ID) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._observer = observer
        # The sinks' groups too: the audit is fair once they have caught up as well.
        sinks = tuple(changelog_topic(t, app_id) for t in SINK_TABLES)
        self._groups = {
            app_id: FAUST_INPUTS,
            intake_group_id(app_id): INTAKE_INPUTS,
            **{sink_group_id(app_id, store): sinks for store in ("dynamodb", "redis")},
        }

    async def start(self) -> None:
        await self._admin.start()

    async def stop(self) -> None:
        await self._admin.close()

    async def committed(self, group: str, topic: str, partition: int) -> int:
        """The offset ``group`` has committed on ``topic``/``partition`` (0 if none)."""
        tp = TopicPartition(topic, partition)
        found = await self._admin.list_consumer_group_offsets(group, partitions=[tp])
        meta = found.get(tp)
        return meta.offset if meta is not None and meta.offset >= 0 else 0

    async def behind(self) -> dict[str, int]:
        """Per group and topic, records written but not yet committed by the group."""
        lag: dict[str, int] = {}
        for (group, topic, _partition), (done, highwater) in (await self.positions()).items():
            if done < highwater:
                name = topic if group in (APP_ID, intake_group_id(APP_ID)) else group
                lag[name] = lag.get(name, 0) + highwater - done
        return lag

    async def positions(self) -> dict[tuple[str, str, int], tuple[int, int]]:
        """Per group, topic and partition: (committed offset, end seen by the observer)."""
        highwaters = self._observer.highwaters()
        out: dict[tuple[str, str, int], tuple[int, int]] = {}
        for group, topics in self._groups.items():
            # Partitions named: the embedded broker cannot answer "all partitions" (null).
            tps = [tp for tp in highwaters if tp.topic in topics]
            committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
            for tp in tps:
                highwater = highwaters[tp]
                if not highwater:
                    continue
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else 0
                out[(group, tp.topic, tp.partition)] = (done, highwater)
        return out

    async def wait_idle(self, timeout: float, quiet: float = 2.0) -> dict[str, int]:
        """Wait until no group is behind and no changelog grew for ``quiet`` seconds.

        Returns ``{}`` when idle, else the last lag seen when the time ran out (the
        scenario reports it rather than failing here).
        """
        last: dict[str, int] = {}
        since: float | None = None
        marks: dict[TopicPartition, int | None] = {}

        async def idle() -> bool:
            nonlocal last, since, marks
            await self._observer.read_to_end(timeout=30)
            last = await self.behind()
            now_marks = self._observer.highwaters()
            if last or now_marks != marks:
                since, marks = None, now_marks
                return False
            since = since or time.monotonic()
            return time.monotonic() - since >= quiet

        try:
            await eventually(idle, timeout=timeout, interval=0.5, what="workers idle")
        except AssertionError:
            return last or {"(changelogs still growing)": 1}
        return {}
