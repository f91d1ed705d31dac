"""What the stores must hold, and how they differ: the pure core of ``cartloom audit``.

The changelogs are folded with the sinks' own rule (the highest version of a key wins,
a tombstone deletes, a document after a tombstone starts the key over), then every key
is compared with what a store holds. No Kafka, DynamoDB or Redis client is used here.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from cartloom.sinks.base import StoredView, document_version, dynamodb_expiry, redis_ttl_seconds


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
    dynamodb_closed_order_ttl: int = 0
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
            version,
            digest(document),
            partition,
            offset,
            ttl > 0,
            dynamodb_expiry(entity, document, self.dynamodb_closed_order_ttl),
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

    A closed order missing from Redis, and an item past its DynamoDB TTL missing from
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


@dataclass(slots=True)
class Judge:
    """Compares one pass of a store with the changelog state and updates its report."""

    report: StoreReport
    state: ChangelogState

    def run(
        self,
        asked: dict[str, list[str] | None],
        found: dict[str, dict[str, StoredView]],
        committed: dict[tuple[str, int], int],
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
                    else committed.get((topic_of[entity], expected.partition), 0)
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
