"""Stock per SKU: ``on_hand``, ``reserved``, ``available`` and how stock messages change them.

The inventory view is the value of the ``inventory_by_sku`` table and the document the
sinks materialise. ``on_hand`` is the physical count (what the warehouse or Shopify last
reported, plus adjustments, minus goods CartLoom saw leave); ``reserved`` is the sum of the
units CartLoom's open reservations hold (see :mod:`cartloom.domain.ledger`), so
``available = on_hand - reserved`` counts every reserved unit exactly once. The model and
its ordering rules are written down in ``docs/inventory.md``. Pure: callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from cartloom.domain.fields import (
    ExactlyOne,
    Field,
    Integer,
    MessageContract,
    Record,
    Text,
    Timestamp,
)
from cartloom.domain.orders import ID_MAX_LEN

#: Key of ``level_at`` for a level reported without a location (the SKU's total).
TOTAL = "*"
#: How many adjustment ids a SKU remembers to recognise a replayed adjustment.
RECENT_ADJUSTMENTS = 200

SKU = Field(
    "sku",
    Text(ID_MAX_LEN),
    "The SKU, as order lines name it. The message's Kafka key must be the same text.",
    required=True,
)
ON_HAND = Field(
    "on_hand",
    Integer(minimum=0),
    "An absolute level: the units counted (at location, or in all, without one). "
    "Give exactly one of on_hand and delta.",
)
DELTA = Field(
    "delta",
    Integer(nonzero=True),
    "An adjustment: units that arrived (positive) or were written off (negative). "
    "Give exactly one of on_hand and delta.",
)
LOCATION = Field(
    "location",
    Text(ID_MAX_LEN),
    "The warehouse or store the count or adjustment is for; without one, on_hand is the "
    "SKU's total.",
    nullable=True,
)
UPDATED_AT = Field(
    "updated_at",
    Timestamp(),
    "When the source counted (RFC 3339, with a time zone): a level older than the last one "
    "applied for its location is stale, one with the same time a duplicate.",
)
ADJUSTMENT_ID = Field(
    "adjustment_id",
    Text(ID_MAX_LEN),
    "The adjustment's id at the source: an adjustment whose id was applied recently is a "
    "duplicate (so re-sending one is safe). Only adjustments (delta) use it.",
    nullable=True,
)
LEVEL_OR_ADJUSTMENT = ExactlyOne(("on_hand", "delta"))

#: The ``inventory`` topic's contract: what :func:`parse_stock_message` accepts.
STOCK_MESSAGE = MessageContract(
    topic="inventory",
    title="CartLoom inventory message",
    description="A SKU's stock from a warehouse, ERP or store: an absolute level (on_hand) "
    "or an adjustment (delta). Reservations are CartLoom's own: send what is physically "
    "there, not what is available.",
    key=SKU,
    record=Record((SKU, ON_HAND, DELTA, LOCATION, UPDATED_AT, ADJUSTMENT_ID)),
    rules=(LEVEL_OR_ADJUSTMENT,),
    examples=(
        {"sku": "MUG-RED", "on_hand": 40, "updated_at": "2026-11-25T09:00:00+00:00"},
        {"sku": "MUG-RED", "on_hand": 12, "location": "berlin-1"},
        {"sku": "MUG-RED", "delta": -2, "location": "berlin-1", "adjustment_id": "rma-77"},
    ),
)


class InventoryView(TypedDict):
    """The stored and materialised form of one SKU's stock."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    version: int
    locations: dict[str, int]
    updated_at: str
    level_at: dict[str, str]
    source_offset: int
    oversold: int
    recent_adjustments: list[str]
    command_offset: NotRequired[int]  # ledger changes counted: commands up to this offset
    # Per origin partition, the offset of the last forwarded message applied (a producer
    # put it on another partition; cartloom/stream/forwarding.py forwarded it here).
    forwarded_offsets: NotRequired[dict[str, int]]


class StockOutcome(StrEnum):
    """What a stock message did; bounded, safe as a metric label."""

    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class StockLevel:
    """An absolute level: the source counted ``on_hand`` units (at ``location``) then."""

    sku: str
    on_hand: int
    location: str | None = None
    updated_at: str | None = None


@dataclass(frozen=True, slots=True)
class StockAdjustment:
    """A relative change: ``delta`` units arrived (positive) or were written off (negative)."""

    sku: str
    delta: int
    location: str | None = None
    updated_at: str | None = None
    adjustment_id: str | None = None


StockUpdate = StockLevel | StockAdjustment


def parse_stock_message(payload: dict[str, Any], *, key: str | None = None) -> StockUpdate:
    """Validate an ``inventory`` message; raise :class:`InvalidInput` naming the problem.

    Exactly one of ``on_hand`` (absolute, >= 0) and ``delta`` (non-zero) must be present;
    ``key``, when given, must equal ``sku`` so the SKU stays on the partition that owns it.
    """
    sku: str = SKU.read(payload)
    STOCK_MESSAGE.check_key(key, sku)
    location: str | None = LOCATION.read(payload)
    updated_at: str | None = UPDATED_AT.read(payload)
    adjustment_id: str | None = ADJUSTMENT_ID.read(payload)
    if LEVEL_OR_ADJUSTMENT.check(payload) == "on_hand":
        return StockLevel(sku, ON_HAND.read(payload), location, updated_at)
    return StockAdjustment(sku, DELTA.read(payload), location, updated_at, adjustment_id)


def empty_inventory(sku: str, now: str) -> InventoryView:
    """A SKU CartLoom has heard nothing about: no stock, nothing reserved, version 0."""
    return InventoryView(
        sku=sku,
        on_hand=0,
        reserved=0,
        available=0,
        version=0,
        locations={},
        updated_at=now,
        level_at={},
        source_offset=-1,
        oversold=0,
        recent_adjustments=[],
    )


def with_counts(view: InventoryView, *, on_hand: int, reserved: int, now: str) -> InventoryView:
    """A copy of ``view`` with new counts, ``available`` recomputed and the version bumped."""
    changed = view.copy()
    changed["on_hand"] = on_hand
    changed["reserved"] = reserved
    changed["available"] = on_hand - reserved
    changed["version"] = view["version"] + 1
    changed["updated_at"] = now
    return changed


def apply_stock(
    view: InventoryView,
    update: StockUpdate,
    *,
    offset: int | None,
    now: str,
    forwarded_from: tuple[int, int] | None = None,
) -> tuple[InventoryView, StockOutcome]:
    """Apply one ``inventory`` message to ``view``; reservations are left as they are.

    ``offset`` is the message's offset in the ``inventory`` topic: one partition owns the
    SKU, so a message at or below the last applied offset is a redelivery (DUPLICATE), and
    so is an adjustment whose ``adjustment_id`` was applied recently (a replay). A message
    forwarded from another partition (``forwarded_from``: its origin partition and offset)
    is a DUPLICATE at or below the last origin offset applied from that partition: a crash
    between forwarding and committing forwards it again, in the same order. An
    absolute level older than the last level applied for its location is STALE; one with
    the same ``updated_at`` (or, without one, the same count) is a DUPLICATE. All leave
    ``view`` unchanged, so replaying levels changes nothing. ``on_hand`` never drops below
    0; ``available`` may go negative when the source counts fewer units than CartLoom
    holds reservations for (see ``docs/inventory.md``).
    """
    if offset is not None and offset <= view["source_offset"]:
        return view, StockOutcome.DUPLICATE
    if forwarded_from is not None:
        partition, origin_offset = forwarded_from
        if origin_offset <= view.get("forwarded_offsets", {}).get(str(partition), -1):
            return view, StockOutcome.DUPLICATE
    changed, outcome = _apply(view, update, offset, now)
    if outcome is StockOutcome.APPLIED and forwarded_from is not None:
        partition, origin_offset = forwarded_from
        changed["forwarded_offsets"] = {
            **view.get("forwarded_offsets", {}),
            str(partition): origin_offset,
        }
    return changed, outcome


def _apply(
    view: InventoryView, update: StockUpdate, offset: int | None, now: str
) -> tuple[InventoryView, StockOutcome]:
    if isinstance(update, StockLevel):
        return _apply_level(view, update, offset, now)
    recent = view.get("recent_adjustments", [])
    if update.adjustment_id is not None and update.adjustment_id in recent:
        return view, StockOutcome.DUPLICATE
    locations = dict(view["locations"])
    if update.location is not None:
        locations[update.location] = max(0, locations.get(update.location, 0) + update.delta)
    on_hand = max(0, view["on_hand"] + update.delta)
    changed = with_counts(view, on_hand=on_hand, reserved=view["reserved"], now=now)
    changed["locations"] = locations
    changed["source_offset"] = view["source_offset"] if offset is None else offset
    if update.adjustment_id is not None:
        changed["recent_adjustments"] = [*recent, update.adjustment_id][-RECENT_ADJUSTMENTS:]
    return changed, StockOutcome.APPLIED


def _apply_level(
    view: InventoryView, level: StockLevel, offset: int | None, now: str
) -> tuple[InventoryView, StockOutcome]:
    where = level.location or TOTAL
    last = view["level_at"].get(where)
    if level.updated_at is not None and last is not None:
        if _time(level.updated_at) < _time(last):
            return view, StockOutcome.STALE
        if _time(level.updated_at) == _time(last):  # the same count again (a replay)
            return view, StockOutcome.DUPLICATE
    current = view["on_hand"] if level.location is None else view["locations"].get(level.location)
    if level.updated_at is None and current == level.on_hand:
        return view, StockOutcome.DUPLICATE  # an absolute level that changes nothing
    level_at = dict(view["level_at"])
    if level.updated_at is not None:
        level_at[where] = level.updated_at
    if level.location is None:
        locations: dict[str, int] = {}
        on_hand = level.on_hand
    else:
        locations = {**view["locations"], level.location: level.on_hand}
        on_hand = sum(locations.values())
    changed = with_counts(view, on_hand=on_hand, reserved=view["reserved"], now=now)
    changed["locations"] = locations
    changed["level_at"] = level_at
    changed["source_offset"] = view["source_offset"] if offset is None else offset
    return changed, StockOutcome.APPLIED


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
