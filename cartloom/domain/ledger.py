"""The reservation ledger: one entry per (order id, line), applied idempotently to a SKU's stock.

The orders side never asks for ``reserved += n``: it sends commands about a ledger entry
(``reserve``, ``commit``, ``release``) and the inventory side applies them to the entry
and to the SKU's :class:`~cartloom.domain.inventory.InventoryView` together. ``commit``
and ``release`` carry absolute totals, so applying any command twice changes nothing:

- ``reserve``: the first one for an entry takes units (all, some for an order Shopify
  already accepted, or none); later ones only repeat the recorded answer.
- ``commit(total)``: goods left the warehouse; ``on_hand`` and ``reserved`` both drop.
- ``release(total | all)``: units go back to ``available`` (cancel, reject, refund before
  fulfilment, expiry). A release for an entry never reserved leaves a tombstone, so a
  reserve command that arrives late takes nothing.
- ``fence``: changes nothing and is answered (:class:`FencePassed`) once the SKU's
  partition reaches it. Commands for a SKU travel in one partition in order and answers
  for an order in one partition in order, so when the order side reads the answer to a
  fence, every answer to the commands sent before it has been read too: a line still
  pending then was never going to be answered (the saga's deadline, docs/orders.md).

Pure: no Kafka, the caller passes ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.inventory import InventoryView, with_counts
from cartloom.domain.payloads import keyed_id, require_int, require_str


class ReserveOutcome(StrEnum):
    """Answer to a reserve command; bounded, safe as a metric label."""

    RESERVED = "reserved"  # every unit asked for
    PARTIAL = "partial"  # some units; only for orders that cannot be rejected (oversold)
    SHORT = "short"  # none: not enough available, the order will be rejected
    REFUSED = "refused"  # none: the entry was released before the reserve arrived


class ReleaseReason(StrEnum):
    """Why units go back to ``available``."""

    REJECTED = "rejected"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    EXPIRED = "expired"
    DEADLINE = "deadline"


class LedgerEntry(TypedDict):
    """The state of one reservation line. ``held = granted - committed - released``."""

    order_id: str
    line: int
    sku: str
    requested: int
    granted: int
    committed: int
    released: int
    outcome: str
    available_seen: int
    reason: str | None
    at: str
    command_offset: NotRequired[int]  # of the command that last changed it (effective_entry)
    prev: NotRequired[LedgerEntry | None]  # its counted state before that batch


@dataclass(frozen=True, slots=True)
class Reserve:
    """Take ``quantity`` units of ``sku`` for line ``line`` of ``order_id``."""

    order_id: str
    line: int
    sku: str
    quantity: int
    allow_shortfall: bool = False


@dataclass(frozen=True, slots=True)
class Commit:
    """The line's goods that left the warehouse now total ``total`` units."""

    order_id: str
    line: int
    sku: str
    total: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give back the line's units until ``total`` are released (``None``: all still held)."""

    order_id: str
    line: int
    sku: str
    reason: ReleaseReason
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """Answer once every command sent before this one on the SKU's partition was handled."""

    order_id: str
    line: int
    sku: str


#: What changes a ledger entry (:func:`apply_command`).
LedgerCommand = Reserve | Commit | Release
#: What travels on ``inventory.commands``.
Command = Reserve | Commit | Release | Fence


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """What a reserve command got; sent back to the order, keyed by order id."""

    order_id: str
    line: int
    sku: str
    requested: int
    granted: int
    available: int
    outcome: ReserveOutcome

    @property
    def short_by(self) -> int:
        """Units asked for and not granted."""
        return self.requested - self.granted


@dataclass(frozen=True, slots=True)
class FencePassed:
    """The answer to a :class:`Fence`: the stock side handled everything sent before it."""

    order_id: str
    line: int
    sku: str


#: What travels on ``reservation.results``.
Answer = ReserveResult | FencePassed


@dataclass(frozen=True, slots=True)
class LedgerStep:
    """The result of applying one command: new stock and entry, and what to tell the order."""

    stock: InventoryView
    entry: LedgerEntry
    changed: bool
    result: ReserveResult | None = None
    released: int = 0
    committed: int = 0


def entry_key(order_id: str, line: int) -> str:
    """The ledger table key of a line: unique per (order id, line)."""
    return f"{order_id}#{line}"


def effective_entry(entry: LedgerEntry | None, stock: InventoryView) -> LedgerEntry | None:
    """The state of ``entry`` that ``stock`` has counted: what every decision must read.

    A command changes two records, the ledger entry and its SKU's stock, in two changelog
    topics. The entry is written first and carries ``command_offset``, the offset on
    ``inventory.commands`` of the last command that changed it, and ``prev``, its state
    before the batch; the stock written after it carries the highest such offset it
    counts. If the process dies between the two writes, the entry is ahead of the stock
    and counts as ``prev`` until its command, never acknowledged, is applied again. A
    later batch moves the stock's offset only past commands it applied itself, so an
    entry still ahead stays ahead until its own command comes round.
    """
    if entry is None or entry.get("command_offset", -1) <= stock.get("command_offset", -1):
        return entry
    return entry.get("prev")


def sealed_entry(entry: LedgerEntry, before: LedgerEntry | None, offset: int) -> LedgerEntry:
    """``entry`` as changed by the command at ``offset``; ``before`` is its counted state.

    ``before`` is the entry's effective state when the batch began (None: it had none).
    """
    sealed = entry.copy()
    sealed["command_offset"] = offset
    if before is None:
        sealed["prev"] = None
    else:
        counted = before.copy()
        counted.pop("prev", None)  # one step back is all a rollback needs
        sealed["prev"] = counted
    return sealed


def counting_through(stock: InventoryView, offset: int, *, changed: bool) -> InventoryView:
    """``stock`` counting the ledger changes of commands up to ``offset``.

    ``changed`` says whether the step already gave ``stock`` a new version; if only the
    offset moves, the version moves too (the sinks write a document only for a new one).
    """
    if stock.get("command_offset", -1) >= offset:
        return stock
    counted = stock.copy()
    counted["command_offset"] = offset
    if not changed:
        counted["version"] = stock["version"] + 1
    return counted


def held(entry: LedgerEntry) -> int:
    """Units the entry still holds out of ``available``."""
    return entry["granted"] - entry["committed"] - entry["released"]


def apply_command(
    stock: InventoryView, entry: LedgerEntry | None, command: LedgerCommand, now: str
) -> LedgerStep:
    """Apply ``command`` to the SKU's ``stock`` and the line's ``entry`` (None: no entry yet).

    Guarantees: ``reserved`` is the sum of ``held`` over the SKU's entries and never goes
    negative; a reserve without shortfall never makes ``available`` negative; applying the
    same command again returns ``changed=False`` and the same result.
    """
    if isinstance(command, Reserve):
        return _reserve(stock, entry, command, now)
    if entry is None:
        entry = _tombstone(command, stock, now)
        return LedgerStep(stock, entry, changed=True)
    if isinstance(command, Commit):
        return _commit(stock, entry, command, now)
    return _release(stock, entry, command, now)


def pass_fence(fence: Fence) -> FencePassed:
    """The answer to ``fence``; it reads and changes nothing, so nothing can make it fail."""
    return FencePassed(fence.order_id, fence.line, fence.sku)


def reserve_result(entry: LedgerEntry) -> ReserveResult:
    """The answer recorded for a line, repeated to every duplicate reserve."""
    return ReserveResult(
        order_id=entry["order_id"],
        line=entry["line"],
        sku=entry["sku"],
        requested=entry["requested"],
        granted=entry["granted"],
        available=entry["available_seen"],
        outcome=ReserveOutcome(entry["outcome"]),
    )


def _reserve(
    stock: InventoryView, entry: LedgerEntry | None, command: Reserve, now: str
) -> LedgerStep:
    if entry is not None:
        if entry["requested"] == 0:  # a tombstone: released before the reserve arrived
            refused = _refused(entry, command, stock)
            return LedgerStep(stock, refused, changed=True, result=reserve_result(refused))
        return LedgerStep(stock, entry, changed=False, result=reserve_result(entry))
    available = max(0, stock["available"])
    if available >= command.quantity:
        granted, outcome = command.quantity, ReserveOutcome.RESERVED
    elif command.allow_shortfall:
        granted, outcome = available, ReserveOutcome.PARTIAL
    else:
        granted, outcome = 0, ReserveOutcome.SHORT
    new_entry = LedgerEntry(
        order_id=command.order_id,
        line=command.line,
        sku=command.sku,
        requested=command.quantity,
        granted=granted,
        committed=0,
        released=0,
        outcome=outcome.value,
        available_seen=stock["available"],
        reason=None,
        at=now,
    )
    new_stock = stock
    oversold = command.quantity - granted if outcome is ReserveOutcome.PARTIAL else 0
    if granted or oversold:
        reserved = stock["reserved"] + granted
        new_stock = with_counts(stock, on_hand=stock["on_hand"], reserved=reserved, now=now)
        new_stock["oversold"] = stock["oversold"] + oversold
    return LedgerStep(new_stock, new_entry, changed=True, result=reserve_result(new_entry))


def _refused(entry: LedgerEntry, command: Reserve, stock: InventoryView) -> LedgerEntry:
    return LedgerEntry(
        **{
            **entry,
            "requested": command.quantity,
            "outcome": ReserveOutcome.REFUSED.value,
            "available_seen": stock["available"],
        }
    )


def _commit(stock: InventoryView, entry: LedgerEntry, command: Commit, now: str) -> LedgerStep:
    target = min(command.total, entry["granted"] - entry["released"])
    delta = target - entry["committed"]
    if delta <= 0:
        return LedgerStep(stock, entry, changed=False)
    new_entry = LedgerEntry(**{**entry, "committed": target, "at": now})
    new_stock = with_counts(
        stock,
        on_hand=max(0, stock["on_hand"] - delta),
        reserved=stock["reserved"] - delta,
        now=now,
    )
    return LedgerStep(new_stock, new_entry, changed=True, committed=delta)


def _release(stock: InventoryView, entry: LedgerEntry, command: Release, now: str) -> LedgerStep:
    ceiling = entry["granted"] - entry["committed"]
    target = ceiling if command.total is None else min(command.total, ceiling)
    delta = target - entry["released"]
    if delta <= 0:
        return LedgerStep(stock, entry, changed=False)
    new_entry = LedgerEntry(
        **{**entry, "released": target, "reason": command.reason.value, "at": now}
    )
    new_stock = with_counts(
        stock, on_hand=stock["on_hand"], reserved=stock["reserved"] - delta, now=now
    )
    return LedgerStep(new_stock, new_entry, changed=True, released=delta)


def _tombstone(command: Commit | Release, stock: InventoryView, now: str) -> LedgerEntry:
    reason = command.reason.value if isinstance(command, Release) else "committed_unreserved"
    return LedgerEntry(
        order_id=command.order_id,
        line=command.line,
        sku=command.sku,
        requested=0,
        granted=0,
        committed=0,
        released=0,
        outcome=ReserveOutcome.REFUSED.value,
        available_seen=stock["available"],
        reason=reason,
        at=now,
    )


# --- wire format of the internal topics (inventory.commands, reservation.results) ---------


def command_to_json(command: Command) -> dict[str, Any]:
    """The JSON object sent on ``inventory.commands`` (keyed by SKU)."""
    body: dict[str, Any] = {
        "order_id": command.order_id,
        "line": command.line,
        "sku": command.sku,
    }
    if isinstance(command, Reserve):
        body.update(
            type="reserve", quantity=command.quantity, allow_shortfall=command.allow_shortfall
        )
    elif isinstance(command, Commit):
        body.update(type="commit", total=command.total)
    elif isinstance(command, Release):
        body.update(type="release", reason=command.reason.value, total=command.total)
    else:
        body.update(type="fence")
    return body


def parse_command(payload: dict[str, Any], *, key: str | None = None) -> Command:
    """Validate an ``inventory.commands`` message; raise :class:`InvalidInput` if unusable."""
    order_id = require_str(payload, "order_id", max_len=128)
    line = require_int(payload, "line", minimum=0)
    sku = keyed_id(payload, "sku", key)
    kind = payload.get("type")
    if kind == "reserve":
        quantity = require_int(payload, "quantity", minimum=1)
        return Reserve(order_id, line, sku, quantity, payload.get("allow_shortfall") is True)
    if kind == "commit":
        return Commit(order_id, line, sku, require_int(payload, "total", minimum=0))
    if kind == "release":
        try:
            reason = ReleaseReason(str(payload.get("reason")))
        except ValueError:
            raise InvalidInput(RejectReason.INVALID_SCHEMA, "unknown release reason") from None
        total = None if payload.get("total") is None else require_int(payload, "total", minimum=0)
        return Release(order_id, line, sku, reason, total)
    if kind == "fence":
        return Fence(order_id, line, sku)
    raise InvalidInput(RejectReason.INVALID_SCHEMA, f"unknown command type {kind!r}")


def result_to_json(result: Answer) -> dict[str, Any]:
    """The JSON object sent on ``reservation.results`` (keyed by order id)."""
    if isinstance(result, FencePassed):
        return {
            "type": "fence",
            "order_id": result.order_id,
            "line": result.line,
            "sku": result.sku,
        }
    return {
        "order_id": result.order_id,
        "line": result.line,
        "sku": result.sku,
        "requested": result.requested,
        "granted": result.granted,
        "available": result.available,
        "outcome": result.outcome.value,
    }


def parse_result(payload: dict[str, Any], *, key: str | None = None) -> Answer:
    """Validate a ``reservation.results`` message: a reserve's answer or a fence's."""
    order_id = keyed_id(payload, "order_id", key)
    if payload.get("type") == "fence":
        line, sku = (
            require_int(payload, "line", minimum=0),
            require_str(payload, "sku", max_len=128),
        )
        return FencePassed(order_id, line, sku)
    try:
        outcome = ReserveOutcome(str(payload.get("outcome")))
    except ValueError:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "unknown reserve outcome") from None
    available = payload.get("available")
    if not isinstance(available, int) or isinstance(available, bool):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "available must be an integer")
    return ReserveResult(
        order_id=order_id,
        line=require_int(payload, "line", minimum=0),
        sku=require_str(payload, "sku", max_len=128),
        requested=require_int(payload, "requested", minimum=0),
        granted=require_int(payload, "granted", minimum=0),
        available=available,
        outcome=outcome,
    )
