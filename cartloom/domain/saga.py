"""The reservation saga on the order's side: send reserves, gather answers, resolve every order.

An order's lines are reserved on their SKUs' partitions (:mod:`cartloom.domain.ledger`);
the answers come back keyed by order id and are gathered here. A channel order is
all-or-nothing: the first line that comes back short rejects it and releases every other
line. An order Shopify already accepted cannot be rejected: it takes what there is and
records the shortfall as oversold. No order waits forever: past ``deadline_at`` a
channel order is rejected (and every line released), an accepted one is marked reserved
with its unconfirmed lines. An unpaid reservation past ``expires_at`` is released.
Lifecycle events that arrived while the reservation was in flight are applied once it
resolves. Pure: callers pass ``now`` and the durations.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.instants import instant_after, is_before
from cartloom.domain.ledger import (
    Command,
    Commit,
    Release,
    ReleaseReason,
    Reserve,
    ReserveOutcome,
    ReserveResult,
)
from cartloom.domain.lifecycle import (
    OrderStep,
    Status,
    StepOutcome,
    Trigger,
    apply_order_event,
    next_status,
    parse_order_event,
    record_transition,
    release_all,
    touched,
)
from cartloom.domain.orders import OrderView, OversoldView, RejectionView
from cartloom.domain.payloads import require_str


class Timeout(StrEnum):
    """A timer's nudge to an order, sent on ``order.timeouts``."""

    DEADLINE = "deadline"
    EXPIRE = "expire"


def reserve_commands(view: OrderView) -> tuple[Command, ...]:
    """One reserve command per line of a new order (shortfall allowed if Shopify accepted it)."""
    return tuple(
        Reserve(
            order_id=view["order_id"],
            line=line["line"],
            sku=line["sku"],
            quantity=line["requested"],
            allow_shortfall=view["accepted_upstream"],
        )
        for line in view["reservations"]
    )


def settle_commands(view: OrderView) -> tuple[Command, ...]:
    """Every ledger command the order's current state implies, for a redelivered input.

    If a worker stopped after writing the order but before its commands reached Kafka,
    the redelivered input finds the order already changed; sending these again (the
    ledger ignores what it has applied) makes sure the commands are not lost.
    """
    if view["status"] == Status.RECEIVED:
        pending = {ln["line"] for ln in view["reservations"] if ln["outcome"] == "pending"}
        return tuple(c for c in reserve_commands(view) if c.line in pending)
    order_id, commands = view["order_id"], list[Command]()
    for ln in view["reservations"]:
        if ln["fulfilled"] and ln["granted"]:
            commands.append(Commit(order_id, ln["line"], ln["sku"], ln["fulfilled"]))
        if ln["released"] and ln["granted"] != 0:
            reason = ReleaseReason.REFUNDED
            commands.append(Release(order_id, ln["line"], ln["sku"], reason, ln["released"]))
    closing = _CLOSING.get(Status(view["status"]))
    if closing is not None:
        if view["rejection"] is not None and view["rejection"]["reason"] == "deadline":
            closing = ReleaseReason.DEADLINE
        commands.extend(release_all(view, closing))
    return tuple(commands)


_CLOSING = {
    Status.REJECTED: ReleaseReason.REJECTED,
    Status.CANCELLED: ReleaseReason.CANCELLED,
    Status.EXPIRED: ReleaseReason.EXPIRED,
    Status.REFUNDED: ReleaseReason.REFUNDED,
}


def apply_reservation_result(
    view: OrderView, result: ReserveResult, now: str, *, ttl_seconds: float
) -> OrderStep:
    """Record one line's answer and resolve the order when it can be resolved.

    A repeated answer changes nothing. A late answer (the order already resolved) is
    recorded on its line but moves nothing: whatever it took was released by the
    release command that followed the reserve on the SKU's partition.
    """
    lines = view["reservations"]
    if result.line >= len(lines) or lines[result.line]["sku"] != result.sku:
        raise InvalidInput(
            RejectReason.INVALID_SCHEMA, f"order has no line {result.line} for {result.sku}"
        )
    if lines[result.line]["outcome"] != "pending":
        return OrderStep(view, StepOutcome.DUPLICATE)
    changed = touched(view, now)
    line = changed["reservations"][result.line]
    line["granted"], line["outcome"] = result.granted, result.outcome.value
    if result.granted < result.requested and view["accepted_upstream"]:
        changed["oversold"] = [*view["oversold"], _oversold(result)]
    if view["status"] != Status.RECEIVED:
        return OrderStep(changed, StepOutcome.APPLIED, detail="late answer recorded")
    if not view["accepted_upstream"] and result.granted < result.requested:
        return _reject(changed, now, _shortage(result), ReleaseReason.REJECTED)
    if any(ln["outcome"] == "pending" for ln in changed["reservations"]):
        return OrderStep(changed, StepOutcome.APPLIED)
    return _confirm(changed, now, ttl_seconds, reason=_confirm_reason(changed))


def resolve_timeout(view: OrderView, kind: Timeout, now: str, *, ttl_seconds: float) -> OrderStep:
    """Handle a timer's nudge; nothing happens unless the deadline or expiry has passed."""
    if kind is Timeout.DEADLINE:
        deadline = view["deadline_at"]
        if view["status"] != Status.RECEIVED or deadline is None or is_before(now, deadline):
            return OrderStep(view, StepOutcome.IGNORED)
        pending = [ln for ln in view["reservations"] if ln["outcome"] == "pending"]
        reason = f"reservation deadline passed with {len(pending)} line(s) unanswered"
        changed = touched(view, now)
        if view["accepted_upstream"]:
            return _confirm(changed, now, ttl_seconds, reason=reason)
        first = pending[0] if pending else view["reservations"][0]
        rejection = RejectionView(
            reason="deadline",
            sku=first["sku"],
            requested=first["requested"],
            available=None,
            short_by=None,
        )
        return _reject(changed, now, (rejection, reason), ReleaseReason.DEADLINE)
    expires = view["expires_at"]
    if view["status"] != Status.RESERVED or expires is None or is_before(now, expires):
        return OrderStep(view, StepOutcome.IGNORED)
    changed = touched(view, now)
    record_transition(changed, Status.EXPIRED, now, "unpaid reservation expired")
    changed["expires_at"] = None
    commands = release_all(changed, ReleaseReason.EXPIRED)
    return OrderStep(changed, StepOutcome.APPLIED, tuple(commands))


def due_at(view: OrderView) -> str | None:
    """When the order will next need a nudge (:func:`due_timeout` turns non-``None``), if ever."""
    if view["status"] == Status.RECEIVED:
        return view["deadline_at"]
    if view["status"] == Status.RESERVED:
        return view["expires_at"]
    return None


def due_timeout(view: OrderView, now: str) -> Timeout | None:
    """The nudge an order needs at ``now``, if any (the timer scans with this)."""
    if view["status"] == Status.RECEIVED and view["deadline_at"] is not None:
        return None if is_before(now, view["deadline_at"]) else Timeout.DEADLINE
    if view["status"] == Status.RESERVED and view["expires_at"] is not None:
        return None if is_before(now, view["expires_at"]) else Timeout.EXPIRE
    return None


def parse_timeout(payload: dict[str, Any], *, key: str | None = None) -> tuple[str, Timeout]:
    """Validate an ``order.timeouts`` message: (order id, kind)."""
    order_id = require_str(payload, "order_id", max_len=128)
    if key is not None and key != order_id:
        raise InvalidInput(
            RejectReason.KEY_MISMATCH, f"message key {key!r} differs from order_id {order_id!r}"
        )
    try:
        return order_id, Timeout(str(payload.get("kind")))
    except ValueError:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "kind must be deadline or expire") from None


def _confirm(changed: OrderView, now: str, ttl_seconds: float, *, reason: str | None) -> OrderStep:
    assert next_status(Status.RECEIVED, Trigger.RESERVATION_CONFIRMED) is Status.RESERVED
    record_transition(changed, Status.RESERVED, now, reason)
    changed["deadline_at"] = None
    if not changed["accepted_upstream"] and ttl_seconds > 0:
        changed["expires_at"] = instant_after(now, ttl_seconds)
    return _replay_deferred(OrderStep(changed, StepOutcome.APPLIED), now)


def _reject(
    changed: OrderView,
    now: str,
    why: tuple[RejectionView, str],
    release_reason: ReleaseReason,
) -> OrderStep:
    assert next_status(Status.RECEIVED, Trigger.RESERVATION_FAILED) is Status.REJECTED
    rejection, reason = why
    record_transition(changed, Status.REJECTED, now, reason)
    changed["rejection"] = rejection
    changed["deadline_at"] = None
    commands = release_all(changed, release_reason)
    return _replay_deferred(OrderStep(changed, StepOutcome.APPLIED, tuple(commands)), now)


def _replay_deferred(step: OrderStep, now: str) -> OrderStep:
    """Apply the events kept while the reservation was in flight, oldest first."""
    view = step.view
    deferred, view["deferred"] = view["deferred"], []
    commands, refused = list(step.commands), list(step.refused)
    for item in sorted(deferred, key=lambda e: (e.get("version") or 0, e["at"])):
        result = apply_order_event(view, parse_order_event(item), now)
        if result.outcome is StepOutcome.ILLEGAL:
            refused.append(f"{view['order_id']}: {result.detail}")
        if result.changed:
            view = result.view
            view["version"] = step.view["version"]  # one change for the whole resolution
            commands.extend(result.commands)
    return OrderStep(view, StepOutcome.APPLIED, tuple(commands), step.detail, tuple(refused))


def _shortage(result: ReserveResult) -> tuple[RejectionView, str]:
    """How short the line was: units asked for beyond what was available."""
    available = max(0, result.available)
    short_by = max(1, result.requested - available)
    rejection = RejectionView(
        reason="insufficient_stock",
        sku=result.sku,
        requested=result.requested,
        available=available,
        short_by=short_by,
    )
    reason = (
        f"insufficient stock: {result.sku} short by {short_by} "
        f"(requested {result.requested}, available {available})"
    )
    if result.outcome is ReserveOutcome.REFUSED:
        rejection["reason"] = "released_before_reserved"
        reason = f"reservation of {result.sku} was released before it was made"
    return rejection, reason


def _oversold(result: ReserveResult) -> OversoldView:
    return OversoldView(line=result.line, sku=result.sku, short_by=result.short_by)


def _confirm_reason(view: OrderView) -> str | None:
    short = sum(item["short_by"] for item in view["oversold"])
    return f"accepted upstream; oversold by {short} unit(s)" if short else None
