"""The reservation saga on the order's side: send reserves, gather answers, resolve every order.

An order's lines are reserved on their SKUs' partitions (:mod:`cartloom.domain.ledger`);
the answers come back keyed by order id and are gathered here. A channel order is
all-or-nothing: the first line that comes back short rejects it and releases every other
line. An order Shopify already accepted cannot be rejected: it takes what there is and
records the shortfall as oversold.

Deadlines and expiries are decided on the clock of the input that could change the
outcome (``clock``: how far that input has been read, in event time), never on the wall
clock alone. Past ``deadline_at`` an accepted order is marked reserved and the reserve of
each unanswered line is sent again; a channel order sends its unanswered lines' reserves
again, each followed by a fence, and is rejected only if a fence's answer arrives while
its line is still unanswered: the stock side then handled the reserve and gave no answer.
An order whose answers are only late (a partition behind, a stock worker stopped) is
therefore never rejected for it. An unpaid reservation past ``expires_at`` is released.
Lifecycle events that arrived while the reservation was in flight are applied once it
resolves. Pure: callers pass ``now``, ``clock`` and the durations.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.instants import instant_after, is_before
from cartloom.domain.ledger import (
    Answer,
    Command,
    Commit,
    Fence,
    FencePassed,
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
from cartloom.domain.payloads import keyed_id


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
    ledger ignores what it has applied) makes sure the commands are not lost. A
    channel order past its deadline repeats its fences too; an accepted order confirmed
    at its deadline repeats the reserves of its unanswered lines.
    """
    if view["status"] == Status.RECEIVED:
        if view["deadline_at"] is None and not view["accepted_upstream"]:
            return _fenced(view)
        return _pending_reserves(view)
    order_id, commands = view["order_id"], list[Command]()
    if Status(view["status"]) not in _CLOSING:
        commands.extend(_pending_reserves(view))
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
    view: OrderView, result: Answer, now: str, *, ttl_seconds: float
) -> OrderStep:
    """Record one line's answer and resolve the order when it can be resolved.

    A repeated answer changes nothing. A late answer (the order already resolved) is
    recorded on its line but moves nothing: whatever it took was released by the
    release command that followed the reserve on the SKU's partition. A fence's answer
    rejects a channel order whose line it fenced is still unanswered (see the module).
    """
    lines = view["reservations"]
    if result.line >= len(lines) or lines[result.line]["sku"] != result.sku:
        raise InvalidInput(
            RejectReason.INVALID_SCHEMA, f"order has no line {result.line} for {result.sku}"
        )
    if isinstance(result, FencePassed):
        return _fence_passed(view, result, now)
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


def resolve_timeout(
    view: OrderView, kind: Timeout, now: str, *, clock: str | None, ttl_seconds: float
) -> OrderStep:
    """Handle a timer's nudge; nothing happens unless ``clock`` has passed the deadline or expiry.

    ``clock`` is how far the input that could change the outcome has been read, in event
    time (answers for the deadline, lifecycle events for the expiry); None when unknown.
    ``now`` only stamps the change.
    """
    if kind is Timeout.DEADLINE:
        return _deadline_passed(view, now, clock, ttl_seconds)
    expires = view["expires_at"]
    if view["status"] != Status.RESERVED or expires is None or not _reached(clock, expires):
        return OrderStep(view, StepOutcome.IGNORED)
    changed = touched(view, now)
    record_transition(changed, Status.EXPIRED, now, "unpaid reservation expired")
    changed["expires_at"] = None
    commands = release_all(changed, ReleaseReason.EXPIRED)
    return OrderStep(changed, StepOutcome.APPLIED, tuple(commands))


def next_timeout(view: OrderView) -> tuple[Timeout, str] | None:
    """The nudge the order will need next and the instant it falls due, if ever."""
    if view["status"] == Status.RECEIVED and view["deadline_at"] is not None:
        return Timeout.DEADLINE, view["deadline_at"]
    if view["status"] == Status.RESERVED and view["expires_at"] is not None:
        return Timeout.EXPIRE, view["expires_at"]
    return None


def timeout_json(order_id: str, kind: Timeout, at: str) -> dict[str, Any]:
    """An ``order.timeouts`` nudge, as :func:`parse_timeout` reads it (``at``: when sent)."""
    return {"order_id": order_id, "kind": kind.value, "at": at}


def parse_timeout(payload: dict[str, Any], *, key: str | None = None) -> tuple[str, Timeout]:
    """Validate an ``order.timeouts`` message: (order id, kind)."""
    order_id = keyed_id(payload, "order_id", key)
    try:
        return order_id, Timeout(str(payload.get("kind")))
    except ValueError:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "kind must be deadline or expire") from None


def _reached(clock: str | None, instant: str) -> bool:
    return clock is not None and not is_before(clock, instant)


def _deadline_passed(view: OrderView, now: str, clock: str | None, ttl_seconds: float) -> OrderStep:
    if view["status"] != Status.RECEIVED:
        return OrderStep(view, StepOutcome.IGNORED)
    deadline = view["deadline_at"]
    if deadline is None:  # handled before: repeat its commands (settle_commands)
        return OrderStep(view, StepOutcome.DUPLICATE)
    if not _reached(clock, deadline):
        return OrderStep(view, StepOutcome.IGNORED)
    changed = touched(view, now)
    if view["accepted_upstream"]:
        pending = sum(1 for ln in view["reservations"] if ln["outcome"] == "pending")
        reason = f"reservation deadline passed with {pending} line(s) unanswered"
        step = _confirm(changed, now, ttl_seconds, reason=reason)
        commands = (*_pending_reserves(view), *step.commands)
        return OrderStep(step.view, step.outcome, commands, step.detail, step.refused)
    changed["deadline_at"] = None  # from now on a fence's answer decides
    return OrderStep(changed, StepOutcome.APPLIED, _fenced(view), "fenced unanswered lines")


def _pending_reserves(view: OrderView) -> tuple[Command, ...]:
    """The reserve of every line not answered yet (the ledger ignores one it has applied)."""
    pending = {ln["line"] for ln in view["reservations"] if ln["outcome"] == "pending"}
    return tuple(c for c in reserve_commands(view) if c.line in pending)


def _fenced(view: OrderView) -> tuple[Command, ...]:
    """Each unanswered line's reserve again, then a fence behind it on the SKU's partition."""
    commands = list[Command]()
    for reserve in _pending_reserves(view):
        commands.extend((reserve, Fence(reserve.order_id, reserve.line, reserve.sku)))
    return tuple(commands)


def _fence_passed(view: OrderView, fence: FencePassed, now: str) -> OrderStep:
    """Every answer sent before the fence was read: a line still pending gets none."""
    line = view["reservations"][fence.line]
    if (
        view["status"] != Status.RECEIVED
        or view["accepted_upstream"]
        or line["outcome"] != "pending"
    ):
        return OrderStep(view, StepOutcome.IGNORED)
    rejection = RejectionView(
        reason="deadline",
        sku=line["sku"],
        requested=line["requested"],
        available=None,
        short_by=None,
    )
    reason = f"reservation deadline passed and {line['sku']} never answered line {line['line']}"
    return _reject(touched(view, now), now, (rejection, reason), ReleaseReason.DEADLINE)


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
