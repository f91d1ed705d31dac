"""The sink port: what every store adapter implements, and the pure batch rules they share.

A sink takes a batch of :class:`ViewChange` and writes each one unless the store already
holds that key at the same or a newer ``version``; the store itself enforces that
(DynamoDB condition expression, Redis Lua script), so redelivered and reordered changes
are no-ops. ``write`` either takes the whole batch or raises; when part of a batch was
taken it raises :class:`PartialWrite` naming what is left and why each failed, and only
that is retried. A retried change is safe because of the version rule.

Two kinds of failure are told apart, because one bad key must not stop the stream and a
store outage must not empty it into a dead-letter topic: the sink says which errors mean
the store as a whole is failing (:meth:`Sink.store_unavailable`: unreachable, throttling,
overloaded, refusing this client), retried without bound; any other error belongs to the
change, which is retried a bounded number of times and then set aside. A change the store
refuses for good is raised as :class:`ChangeRefused` and set aside at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from cartloom.domain.errors import RejectReason
from cartloom.domain.lifecycle import CLOSED

#: Materialised entities and the attribute that keys them.
KEY_ATTRIBUTE: dict[str, str] = {
    "orders": "order_id",
    "inventory": "sku",
    "products": "product_id",
}

#: Order statuses after which nothing a storefront does depends on the cached copy.
CLOSED_ORDER_STATUSES = frozenset(status.value for status in CLOSED)


@dataclass(frozen=True, slots=True)
class ViewChange:
    """The newest known document of one key.

    ``document`` None is a deletion (a changelog tombstone): it carries no version, so it
    is applied unconditionally; the domain marks removals it must order (a deleted product,
    a redacted customer) with a versioned document instead. ``replaces`` marks a document
    that follows a deletion of the same key in the batch: the key starts over, so the
    store takes it whatever version it held (delete, then write).
    """

    entity: str
    key: str
    version: int
    document: dict[str, Any] | None
    replaces: bool = False


@dataclass(frozen=True, slots=True)
class SetAside:
    """A change no store write will take: it goes to the sinks' dead-letter topic."""

    change: ViewChange
    reason: RejectReason
    detail: str


@dataclass(slots=True)
class WriteOutcome:
    """What a store did with a batch.

    ``rejected`` counts changes the store refused for good (a DynamoDB item over 400 KB);
    ``set_aside`` lists every change that was not taken and will not be retried (refused,
    or still failing after the bounded attempts), for the dead-letter topic. ``cartloom
    audit`` reports their keys until a later change of the key is taken.
    """

    written: int = 0
    stale: int = 0
    deleted: int = 0
    rejected: int = 0
    stale_keys: list[str] = field(default_factory=list)
    set_aside: list[SetAside] = field(default_factory=list)

    def add(self, other: WriteOutcome) -> None:
        """Fold ``other`` into this outcome."""
        self.written += other.written
        self.stale += other.stale
        self.deleted += other.deleted
        self.rejected += other.rejected
        self.stale_keys.extend(other.stale_keys)
        self.set_aside.extend(other.set_aside)


@dataclass(frozen=True, slots=True)
class StoredView:
    """One view as a store holds it: its ``version`` and the document (None if unreadable)."""

    version: int
    document: dict[str, Any] | None


class PartialWrite(Exception):  # noqa: N818 - a condition the materialiser handles, not a bug
    """Part of a batch was taken: ``outcome`` says how, ``remaining`` was not.

    ``errors`` holds, for each change of ``remaining``, the error it failed with (all
    ``cause`` when the store did not say per change).
    """

    def __init__(
        self,
        outcome: WriteOutcome,
        remaining: Sequence[ViewChange],
        cause: BaseException,
        errors: Sequence[BaseException] | None = None,
    ) -> None:
        super().__init__(f"{len(remaining)} change(s) not written: {cause!r}")
        self.outcome = outcome
        self.remaining = list(remaining)
        self.cause = cause
        self.errors = list(errors) if errors is not None else [cause] * len(self.remaining)
        if len(self.errors) != len(self.remaining):
            raise ValueError("PartialWrite needs one error per remaining change")


class ChangeRefused(Exception):  # noqa: N818 - the store's verdict on one change
    """The store refuses this change for good (too large, a value it cannot hold)."""


class Sink(Protocol):
    """A store that materialised views are written to."""

    name: str

    async def start(self) -> None:
        """Open clients; called once before the first ``write``."""

    async def stop(self) -> None:
        """Close clients; called once, after the last ``write``."""

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Write every change whose version is newer than the stored one.

        Raises :class:`PartialWrite` when only some changes were taken (with each failed
        change's error, :class:`ChangeRefused` for one the store refuses for good), or any
        other exception when nothing is known to be taken.
        """
        ...

    def store_unavailable(self, error: BaseException) -> bool:
        """Whether ``error`` means the store as a whole is failing, not one change.

        Such errors (unreachable, timeouts, throttling, overload, credentials or
        permissions) are retried without bound; any other is charged to the change.
        """
        ...


def coalesce(changes: Iterable[ViewChange]) -> list[ViewChange]:
    """Keep only the newest change of each (entity, key), in first-seen order.

    Between two documents the higher version wins and an equal version is a duplicate
    (the first one stays, as in the stores, which refuse an equal version). A deletion
    wins over what came before it; a document after a deletion is kept as a
    ``replaces`` change, so the deletion is not lost: the key starts over at that
    document's version, whatever the store held.
    """
    newest: dict[tuple[str, str], ViewChange] = {}
    for change in changes:
        slot = (change.entity, change.key)
        kept = newest.get(slot)
        if kept is None or change.document is None:
            newest[slot] = change
        elif kept.document is None:
            newest[slot] = replace(change, replaces=True)
        elif change.version > kept.version:
            newest[slot] = replace(change, replaces=kept.replaces)
    return list(newest.values())


def document_version(document: dict[str, Any] | None) -> int:
    """The ``version`` of a stored document (0 for a deletion or a document without one)."""
    if document is None:
        return 0
    version = document.get("version", 0)
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def redis_ttl_seconds(entity: str, document: dict[str, Any], closed_order_ttl: int) -> int:
    """Seconds a Redis view may live (0 = no expiry), per the cache policy in ``docs/sinks.md``.

    Closed orders expire after ``closed_order_ttl``: a reader that misses falls back to
    DynamoDB, so staleness is impossible and only latency is traded. Open orders,
    inventory and products never expire: storefronts check stock and status against them.
    """
    if entity == "orders" and document.get("status") in CLOSED_ORDER_STATUSES:
        return max(closed_order_ttl, 0)
    return 0


#: The DynamoDB attribute the tables' TTL reads (epoch seconds); set only by the sink.
TTL_ATTRIBUTE = "ttl_epoch"


def dynamodb_expiry(entity: str, document: dict[str, Any] | None, closed_ttl: int) -> int | None:
    """When DynamoDB may delete the item (epoch seconds), or None to keep it.

    Only closed orders expire, ``closed_ttl`` seconds after they last changed, and only when
    ``closed_ttl`` > 0 (``CARTLOOM_DYNAMODB_CLOSED_ORDER_TTL_SECONDS``; 0 keeps everything:
    DynamoDB is where readers find an order once Redis has let it go).
    """
    if entity != "orders" or document is None or closed_ttl <= 0:
        return None
    if document.get("status") not in CLOSED_ORDER_STATUSES:
        return None
    changed = document.get("updated_at")
    if not isinstance(changed, str):
        return None
    try:
        return int(datetime.fromisoformat(changed).timestamp()) + closed_ttl
    except ValueError:
        return None
