"""The sink port: what every store adapter implements, and the pure batch rules they share.

A sink takes a batch of :class:`ViewChange` and writes each one unless the store already
holds that key at the same or a newer ``version``; the store itself enforces that
(DynamoDB condition expression, Redis Lua script), so redelivered and reordered changes
are no-ops. ``write`` either takes the whole batch or raises; a raised batch is retried
whole, which the version rule makes safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Materialised entities and the attribute that keys them.
KEY_ATTRIBUTE: dict[str, str] = {
    "orders": "order_id",
    "inventory": "sku",
    "products": "product_id",
}


@dataclass(frozen=True, slots=True)
class ViewChange:
    """The newest known document of one key.

    ``document`` None is a deletion (a changelog tombstone): it carries no version, so it
    is applied unconditionally; the domain marks removals it must order (a deleted product,
    a redacted customer) with a versioned document instead.
    """

    entity: str
    key: str
    version: int
    document: dict[str, Any] | None


@dataclass(slots=True)
class WriteOutcome:
    """What a store did with a batch."""

    written: int = 0
    stale: int = 0
    deleted: int = 0
    stale_keys: list[str] = field(default_factory=list)

    def add(self, other: WriteOutcome) -> None:
        """Fold ``other`` into this outcome."""
        self.written += other.written
        self.stale += other.stale
        self.deleted += other.deleted
        self.stale_keys.extend(other.stale_keys)


class Sink(Protocol):
    """A store that materialised views are written to."""

    name: str

    async def start(self) -> None:
        """Open clients; called once before the first ``write``."""

    async def stop(self) -> None:
        """Close clients; called once, after the last ``write``."""

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Write every change whose version is newer than the stored one; raise on failure."""
        ...


def coalesce(changes: Iterable[ViewChange]) -> list[ViewChange]:
    """Keep only the newest change of each (entity, key), in first-seen order.

    Between two documents the higher version wins; a deletion on either side is ordered by
    its position in the log, so the later one wins.
    """
    newest: dict[tuple[str, str], ViewChange] = {}
    for change in changes:
        slot = (change.entity, change.key)
        kept = newest.get(slot)
        if (
            kept is None
            or change.document is None
            or kept.document is None
            or change.version >= kept.version
        ):
            newest[slot] = change
    return list(newest.values())


def document_version(document: dict[str, Any] | None) -> int:
    """The ``version`` of a stored document (0 for a deletion or a document without one)."""
    if document is None:
        return 0
    version = document.get("version", 0)
    return version if isinstance(version, int) and not isinstance(version, bool) else 0
