"""``cartloom audit``: compares the tables (read from their changelogs) with DynamoDB and Redis.

The authority is each materialised table's changelog, read from the beginning to its end:
no worker is needed. It is folded with the sinks' own rule (the highest version of a key
wins, a tombstone deletes), which is the table's value whenever versions only go up.
Every key is then compared with each store: missing, stale, ahead, different content, or
present although deleted. A difference is *in flight* when the store's sink group has not
yet committed past the changelog record that decides the key; ``--settle`` re-checks the
differing keys until they converge or the time is up. The audit diverges (exit 1) when a
difference remains that is not in flight, or any difference at all with ``--strict``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any

import orjson
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, TopicPartition
from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings
from cartloom.core.topology import Topology
from cartloom.sinks import dynamodb as ddb
from cartloom.sinks import redis as rds
from cartloom.sinks.base import StoredView
from cartloom.sinks.comparison import AuditReport, ChangelogState, Judge, StoreReport
from cartloom.sinks.materialiser import sink_group_id
from cartloom.sinks.runner import changelog_entities
from cartloom.stream.kafka_clients import kafka_connection

STORES = ("dynamodb", "redis")


class AuditError(RuntimeError):
    """The audit cannot run: a changelog topic or a store table is missing or unreachable."""


class ChangelogReader:
    """Reads the materialised tables' changelogs from the start, then catches up on demand."""

    def __init__(self, settings: Settings, entities: dict[str, str], state: ChangelogState):
        self._entities = entities  # changelog topic -> entity
        self._state = state
        self._consumer = kafka_connection(settings).consumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self.partitions: list[TopicPartition] = []

    async def start(self) -> None:
        """Connect and assign every partition of every changelog, from its beginning."""
        await self._consumer.start()
        for topic in self._entities:
            if topic not in await self._consumer.topics():
                raise AuditError(f"changelog topic {topic} does not exist on the broker")
            parts = self._consumer.partitions_for_topic(topic) or set()
            self.partitions.extend(TopicPartition(topic, p) for p in sorted(parts))
        self._consumer.assign(self.partitions)
        if self.partitions:
            await self._consumer.seek_to_beginning(*self.partitions)

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def catch_up(self, within: float = 120.0) -> None:
        """Read every changelog up to its end offsets as of now."""
        if not self.partitions:
            return
        ends = await self._consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + within
        while True:
            behind = [tp for tp in self.partitions if await self._consumer.position(tp) < ends[tp]]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"changelogs not read to their end within {within:.0f}s")
            batch = await self._consumer.getmany(*behind, timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                entity = self._entities[tp.topic]
                for record in records:
                    if record.key is None:
                        continue
                    value = None if record.value is None else _loads(record.value)
                    self._state.apply(
                        entity,
                        record.key.decode(errors="replace"),
                        tp.partition,
                        record.offset,
                        value,
                    )


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNUSABLE


_UNUSABLE = object()  # a record the sinks skip too: it changes no expectation


async def committed_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[tuple[str, int], int]:
    """The offsets a sink group has committed (0 where it has committed nothing)."""
    return {(tp.topic, tp.partition): (await consumer.committed(tp)) or 0 for tp in partitions}


def sink_group_consumer(settings: Settings, store: str) -> AIOKafkaConsumer:
    """A consumer in ``store``'s sink group that only reads its committed offsets."""
    return kafka_connection(settings).consumer(
        group_id=sink_group_id(settings.app_id, store), enable_auto_commit=False
    )


StoreReader = Callable[[str, list[str] | None], Awaitable[dict[str, StoredView]]]


async def open_store_readers(settings: Settings, stack: AsyncExitStack) -> dict[str, StoreReader]:
    """Per store, ``read(entity, keys)``: those keys, or every key of the entity if None."""
    client = await stack.enter_async_context(
        get_session().create_client(
            "dynamodb",
            endpoint_url=settings.dynamodb_endpoint,
            config=ddb.dynamodb_client_config(settings),
        )
    )
    redis = rds.redis_client(settings)
    stack.push_async_callback(redis.aclose)
    names = RedisKeys(settings.namespace)

    async def read_dynamodb(entity: str, keys: list[str] | None) -> dict[str, StoredView]:
        try:
            if keys is not None:
                return await ddb.read_items(client, settings, entity, keys)
            return {key: view async for key, view in ddb.scan_items(client, settings, entity)}
        except client.exceptions.ResourceNotFoundException:
            table = settings.dynamodb_table(entity)
            raise AuditError(f"DynamoDB table {table} does not exist") from None

    async def read_redis(entity: str, keys: list[str] | None) -> dict[str, StoredView]:
        if keys is None:
            keys = [key async for key in rds.scan_keys(redis, entity, names)]
        return await rds.read_views(redis, entity, keys, names)

    return {"dynamodb": read_dynamodb, "redis": read_redis}


async def run_audit(
    settings: Settings,
    topology: Topology,
    *,
    stores: Iterable[str] = STORES,
    sample: int = 0,
    settle: float = 0.0,
    strict: bool = False,
    seed: int | None = None,
) -> AuditReport:
    """Audit ``stores`` against the changelogs; ``sample`` > 0 checks that many random keys.

    Each pass reads the sink group's committed offsets, then the store, then the
    changelogs' new records, in that order: a store cannot hold what the changelog does
    not, and a difference on a record the sink had committed before the store was read
    is a real one. Later passes (``settle`` seconds) re-check only the differing keys.
    """
    entities = changelog_entities(settings, topology)
    topic_of = {entity: topic for topic, entity in entities.items()}
    state = ChangelogState(
        closed_order_ttl=settings.redis_closed_order_ttl_seconds,
        dynamodb_closed_order_ttl=settings.dynamodb_closed_order_ttl_seconds,
    )
    report = AuditReport(strict=strict, sample=sample)
    chosen = [store for store in STORES if store in set(stores)]
    async with AsyncExitStack() as stack:
        reader = ChangelogReader(settings, entities, state)
        stack.push_async_callback(reader.stop)
        await reader.start()
        readers = await open_store_readers(settings, stack)
        groups = {}
        for store in chosen:
            groups[store] = sink_group_consumer(settings, store)
            stack.push_async_callback(groups[store].stop)
            await groups[store].start()
            groups[store].assign(reader.partitions)
        await reader.catch_up()
        rng = random.Random(seed)  # noqa: S311 - sampling, not security
        first: dict[str, list[str] | None] = {}
        for entity in entities.values():
            keys = state.keys(entity)
            first[entity] = rng.sample(keys, min(sample, len(keys))) if sample else None
        pending = {store: dict(first) for store in chosen}
        deadline = time.monotonic() + settle
        while True:
            report.rounds += 1
            passes = {}
            for store in chosen:
                committed = await committed_offsets(groups[store], reader.partitions)
                found = {e: await readers[store](e, keys) for e, keys in pending[store].items()}
                passes[store] = (committed, found)
            await reader.catch_up()
            for store in chosen:
                committed, found = passes[store]
                judge = Judge(report.stores.setdefault(store, StoreReport(store)), state)
                pending[store] = judge.run(pending[store], found, committed, topic_of)
            if not any(pending.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    report.changelog_records = state.records
    report.changelog_keys = len(state.expected)
    report.changelog_regressions = state.regressions
    return report


def render(report: AuditReport, console: Console, show: int) -> None:
    """Print the report for a person: counts per store and entity, then differences."""
    console.print(
        f"changelogs: {report.changelog_records} records, {report.changelog_keys} keys, "
        f"{report.changelog_regressions} version regressions; {report.rounds} pass(es)"
    )
    counts = Table("store", "entity", "table", "store items", "checked", "matching", "expired")
    for name, store in report.stores.items():
        for entity, c in store.counts.items():
            in_store = "-" if c.store is None else str(c.store)
            counts.add_row(
                name,
                entity,
                str(c.table),
                in_store,
                str(c.checked),
                str(c.matching),
                str(c.expired),
            )
    console.print(counts)
    for name, store in report.stores.items():
        in_flight = sum(1 for d in store.differences if d.in_flight)
        verdict = "[red]DIVERGED[/red]" if store.diverged(report.strict) else "[green]ok[/green]"
        console.print(
            f"[bold]{name}[/bold]: {verdict} ({len(store.differences)} differences, "
            f"{in_flight} in flight)"
        )
        for d in store.differences[:show]:
            flight = " (in flight)" if d.in_flight else ""
            table = "absent" if d.table_version is None else f"v{d.table_version}"
            held = "absent" if d.store_version is None else f"v{d.store_version}"
            console.print(
                f"  {d.kind:<9} {d.entity}/{d.key}: table {table}, store {held}{flight}",
                markup=False,
            )
        if len(store.differences) > show:
            console.print(f"  ... and {len(store.differences) - show} more")


def audit_command(
    stores: list[str], sample: int, settle: float, strict: bool, as_json: bool, show: int
) -> int:
    """Run ``cartloom audit``; return the exit code (0 agree, 1 diverged, 2 cannot audit)."""
    from cartloom.core.settings import load_settings
    from cartloom.core.topology import load_topology

    console = Console()
    errors = Console(stderr=True, soft_wrap=True)  # errors on stderr, as every command's
    unknown = sorted(set(stores) - set(STORES))
    if unknown or sample < 0 or settle < 0:
        errors.print(
            f"unknown store(s) {unknown}; choose from {STORES}"
            if unknown
            else "--sample and --settle must not be negative",
            style="red",
        )
        return 2
    settings = load_settings()
    topology = load_topology(settings.topics_file, settings.topic_prefix)
    audit = run_audit(
        settings, topology, stores=stores or STORES, sample=sample, settle=settle, strict=strict
    )
    try:
        report = asyncio.run(audit)
    except (AuditError, RedisError, BotoCoreError, ClientError, TimeoutError) as exc:
        errors.print(f"cannot audit: {exc}", style="red", markup=False)
        return 2
    if as_json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(report, console, show)
    return 1 if report.diverged else 0
