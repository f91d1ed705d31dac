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
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiobotocore.session import get_session
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from cartloom.settings import Settings
from cartloom.sinks import dynamodb as ddb
from cartloom.sinks import redis as rds
from cartloom.sinks.base import StoredView, document_version, expires_at, redis_ttl_seconds
from cartloom.sinks.materialiser import sink_group_id
from cartloom.topology import Topology

STORES = ("dynamodb", "redis")


def digest(document: dict[str, Any] | None) -> bytes | None:
    """A compact fingerprint of a document's content (key order does not matter)."""
    if document is None:
        return None
    return hashlib.blake2b(
        orjson.dumps(document, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


@dataclass(frozen=True, slots=True)
class Expected:
    """What the stores must hold for one key, and which changelog record decided it."""

    version: int
    fingerprint: bytes | None  # None: the key is deleted
    partition: int
    offset: int
    may_expire_in_redis: bool = False
    expires_at: int | None = None

    @property
    def deleted(self) -> bool:
        """True when the table no longer holds the key."""
        return self.fingerprint is None


@dataclass(slots=True)
class ChangelogState:
    """The changelogs folded into the newest :class:`Expected` per (entity, key)."""

    closed_order_ttl: int
    expected: dict[tuple[str, str], Expected] = field(default_factory=dict)
    records: int = 0
    regressions: int = 0

    def apply(self, entity: str, key: str, partition: int, offset: int, document: Any) -> None:
        """Fold one changelog record in, with the sinks' rule (see :func:`coalesce`)."""
        self.records += 1
        slot = (entity, key)
        if document is None:
            self.expected[slot] = Expected(0, None, partition, offset)
            return
        if not isinstance(document, dict):
            return
        version = document_version(document)
        current = self.expected.get(slot)
        if current is not None and not current.deleted and current.version >= version:
            self.regressions += int(current.version > version)
            return
        ttl = redis_ttl_seconds(entity, document, self.closed_order_ttl)
        self.expected[slot] = Expected(
            version, digest(document), partition, offset, ttl > 0, expires_at(document)
        )

    def keys(self, entity: str) -> list[str]:
        """Every key of ``entity`` the changelog mentions (live or deleted)."""
        return [key for (ent, key) in self.expected if ent == entity]

    def live(self, entity: str) -> int:
        """How many keys of ``entity`` the table holds."""
        return sum(
            1 for (ent, _), exp in self.expected.items() if ent == entity and not exp.deleted
        )


@dataclass(frozen=True, slots=True)
class Difference:
    """One key on which a store disagrees with the table."""

    store: str
    entity: str
    key: str
    kind: str  # missing, stale, ahead, content, undeleted
    table_version: int | None
    store_version: int | None
    in_flight: bool = False


def compare(
    store: str, expected: Expected | None, stored: StoredView | None, now: float
) -> str | None:
    """The kind of difference between the table's ``expected`` and a store's view, or None.

    A closed order missing from Redis, and an item past its ``expires_at`` missing from
    DynamoDB, are allowed: that is the TTL policy, and return ``"expired"``.
    """
    if expected is None or expected.deleted:
        return None if stored is None else "undeleted"
    if stored is None:
        if store == "redis" and expected.may_expire_in_redis:
            return "expired"
        if store == "dynamodb" and expected.expires_at is not None and expected.expires_at <= now:
            return "expired"
        return "missing"
    if stored.version < expected.version:
        return "stale"
    if stored.version > expected.version:
        return "ahead"
    if digest(stored.document) != expected.fingerprint:
        return "content"
    return None


@dataclass(slots=True)
class EntityCounts:
    """Per entity and store: keys in the table and the store, checked, matching, expired."""

    table: int = 0
    store: int | None = None
    checked: int = 0
    matching: int = 0
    expired: int = 0


@dataclass(slots=True)
class StoreReport:
    """One store's audit result."""

    store: str
    counts: dict[str, EntityCounts] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    present: dict[str, set[str]] = field(default_factory=dict)  # keys seen in a full pass

    def diverged(self, strict: bool) -> bool:
        """Whether a difference remains that is not in flight (any at all when ``strict``)."""
        return any(strict or not d.in_flight for d in self.differences)


@dataclass(slots=True)
class AuditReport:
    """The whole audit, as printed and as ``--json``."""

    strict: bool
    sample: int
    changelog_records: int = 0
    changelog_keys: int = 0
    changelog_regressions: int = 0
    rounds: int = 0
    stores: dict[str, StoreReport] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        """Whether any store diverged."""
        return any(report.diverged(self.strict) for report in self.stores.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "diverged": self.diverged,
            "strict": self.strict,
            "sample": self.sample,
            "rounds": self.rounds,
            "changelog": {
                "records": self.changelog_records,
                "keys": self.changelog_keys,
                "regressions": self.changelog_regressions,
            },
            "stores": {
                name: {
                    "diverged": report.diverged(self.strict),
                    "entities": {e: vars_of(c) for e, c in report.counts.items()},
                    "differences": [vars_of(d) for d in report.differences],
                }
                for name, report in self.stores.items()
            },
        }


def vars_of(value: Any) -> dict[str, Any]:
    """The fields of a slotted dataclass as a dict."""
    return {name: getattr(value, name) for name in value.__slots__}


class ChangelogReader:
    """Reads the materialised tables' changelogs from the start, then catches up on demand."""

    def __init__(self, settings: Settings, entities: dict[str, str], state: ChangelogState):
        self._entities = entities  # changelog topic -> entity
        self._state = state
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        self.partitions: list[TopicPartition] = []

    async def start(self) -> None:
        """Connect and assign every partition of every changelog, from its beginning."""
        await self._consumer.start()
        for topic in self._entities:
            parts = self._consumer.partitions_for_topic(topic)
            if parts is None:
                await self._consumer._client.force_metadata_update()
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
) -> dict[TopicPartition, int]:
    """The offsets a sink group has committed (0 where it has committed nothing)."""
    return {tp: (await consumer.committed(tp)) or 0 for tp in partitions}


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

    async def read_dynamodb(entity: str, keys: list[str] | None) -> dict[str, StoredView]:
        if keys is not None:
            return await ddb.read_items(client, settings, entity, keys)
        return {key: view async for key, view in ddb.scan_items(client, settings, entity)}

    async def read_redis(entity: str, keys: list[str] | None) -> dict[str, StoredView]:
        if keys is None:
            keys = [key async for key in rds.scan_keys(redis, entity)]
        return await rds.read_views(redis, entity, keys)

    return {"dynamodb": read_dynamodb, "redis": read_redis}


def changelog_entities(settings: Settings, topology: Topology) -> dict[str, str]:
    """Changelog topic -> entity, for every materialised table."""
    return {
        spec.changelog_topic(settings.app_id): spec.entity
        for spec in topology.tables.values()
        if spec.entity
    }


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
    state = ChangelogState(closed_order_ttl=settings.redis_closed_order_ttl_seconds)
    report = AuditReport(strict=strict, sample=sample)
    chosen = [store for store in STORES if store in set(stores)]
    async with AsyncExitStack() as stack:
        reader = ChangelogReader(settings, entities, state)
        stack.push_async_callback(reader.stop)
        await reader.start()
        readers = await open_store_readers(settings, stack)
        groups = {}
        for store in chosen:
            groups[store] = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap_servers,
                group_id=sink_group_id(settings.app_id, store),
                enable_auto_commit=False,
            )
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
                judge = _Judge(report.stores.setdefault(store, StoreReport(store)), state)
                pending[store] = judge.run(pending[store], found, committed, topic_of)
            if not any(pending.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    report.changelog_records = state.records
    report.changelog_keys = len(state.expected)
    report.changelog_regressions = state.regressions
    return report


@dataclass(slots=True)
class _Judge:
    """Compares one pass of a store with the changelog state and updates its report."""

    report: StoreReport
    state: ChangelogState

    def run(
        self,
        asked: dict[str, list[str] | None],
        found: dict[str, dict[str, StoredView]],
        committed: dict[TopicPartition, int],
        topic_of: dict[str, str],
    ) -> dict[str, list[str] | None]:
        """Judge every asked key; return the keys that still differ (to check again)."""
        now = time.time()
        first_pass = not self.report.counts
        differences: list[Difference] = []
        again: dict[str, list[str]] = {}
        for entity, keys in asked.items():
            stored = found[entity]
            counts = self.report.counts.setdefault(entity, EntityCounts())
            if keys is None:  # a full pass: every key either side knows
                keys = list(dict.fromkeys([*self.state.keys(entity), *stored]))
                self.report.present[entity] = set(stored)
            elif entity in self.report.present:  # a re-check after a full pass
                present = self.report.present[entity]
                present.difference_update(keys)
                present.update(stored)
            if entity in self.report.present:
                counts.store = len(self.report.present[entity])
            counts.table = self.state.live(entity)
            if first_pass:
                counts.checked = len(keys)
            for key in keys:
                expected = self.state.expected.get((entity, key))
                view = stored.get(key)
                kind = compare(self.report.store, expected, view, now)
                if kind == "expired":
                    counts.expired += 1
                if kind is None or kind == "expired":
                    continue
                decided_at = (
                    None
                    if expected is None
                    else committed.get(TopicPartition(topic_of[entity], expected.partition), 0)
                )
                differences.append(
                    Difference(
                        store=self.report.store,
                        entity=entity,
                        key=key,
                        kind=kind,
                        table_version=None
                        if expected is None or expected.deleted
                        else expected.version,
                        store_version=None if view is None else view.version,
                        in_flight=expected is not None
                        and decided_at is not None
                        and expected.offset >= decided_at,
                    )
                )
                again.setdefault(entity, []).append(key)
        self.report.differences = differences
        for entity, counts in self.report.counts.items():
            counts.matching = counts.checked - sum(1 for d in differences if d.entity == entity)
        return dict(again.items())


def render(report: AuditReport, console: Console, show: int) -> None:
    """Print the report for a person: counts per store and entity, then differences."""
    console.print(
        f"changelogs: {report.changelog_records} records, {report.changelog_keys} keys, "
        f"{report.changelog_regressions} version regressions; {report.rounds} pass(es)"
    )
    for name, store in report.stores.items():
        verdict = "DIVERGED" if store.diverged(report.strict) else "ok"
        console.print(f"[bold]{name}[/bold]: {verdict}")
        for entity, c in store.counts.items():
            in_store = "-" if c.store is None else str(c.store)
            console.print(
                f"  {entity:<10} table {c.table:>8}  store {in_store:>8}  checked {c.checked:>8}"
                f"  matching {c.matching:>8}  expired {c.expired:>6}"
            )
        for d in store.differences[:show]:
            flight = " (in flight)" if d.in_flight else ""
            console.print(
                f"  {d.kind:<9} {d.entity}/{d.key}: table v{d.table_version}, "
                f"store v{d.store_version}{flight}"
            )
        if len(store.differences) > show:
            console.print(f"  ... and {len(store.differences) - show} more")


def audit_command(
    stores: list[str], sample: int, settle: float, strict: bool, as_json: bool, show: int
) -> int:
    """Run ``cartloom audit``; return the exit code (0 agree, 1 diverged, 2 bad usage)."""
    from cartloom.settings import load_settings
    from cartloom.topology import load_topology

    console = Console()
    unknown = sorted(set(stores) - set(STORES))
    if unknown or sample < 0 or settle < 0:
        console.print(
            f"unknown store(s) {unknown}; choose from {STORES}"
            if unknown
            else "--sample and --settle must not be negative",
            style="red",
        )
        return 2
    settings = load_settings()
    topology = load_topology(settings.topics_file)
    report = asyncio.run(
        run_audit(
            settings, topology, stores=stores or STORES, sample=sample, settle=settle, strict=strict
        )
    )
    if as_json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(report, console, show)
    return 1 if report.diverged else 0
