"""The orders agent: the only writer of order_by_id, early_events_by_order, inventory.commands.

It reads everything keyed by order id (``orders.accepted``, ``order.events``,
``reservation.results``, ``order.timeouts``, ``shopify.redactions``) in batches, hands each
event to the pure domain (:mod:`cartloom.domain.orders`, ``.lifecycle``, ``.saga``,
``.early_events``, ``.shopify_state``), writes each changed order once per batch and sends
the ledger commands the domain decided on, keyed by SKU. An event for an order not yet
known is held until the order arrives (:mod:`cartloom.agents.early_events`). An input
judged a duplicate writes the order's current view again, so a store that ran ahead of
its changelog (RocksDB after a kill) gets its changelog record. What cannot be processed
goes to the source topic's ``.dlq`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import faust

from cartloom.agents.early_events import (
    HeldSettlement,
    origin_of,
    schedule_held,
    settle_held_events,
)
from cartloom.agents.saga import decision_clock, inputs, nudge_ignored, schedule_order
from cartloom.core import metrics
from cartloom.core.clock import utc_now_iso
from cartloom.domain.early_events import (
    HELD_NUDGE,
    HeldApplication,
    HeldEventsView,
    HeldEventView,
    HoldOutcome,
    apply_held_events,
    expired_events,
    hold_event,
    over_limit,
    parse_held_nudge,
    without_events,
)
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.ledger import Command, command_to_json, parse_result
from cartloom.domain.lifecycle import (
    OrderEvent,
    OrderStep,
    StepOutcome,
    apply_order_event,
    parse_order_event,
)
from cartloom.domain.orders import (
    OrderView,
    new_order_view,
    parse_order,
    read_accepted_order,
)
from cartloom.domain.payloads import keyed_id, require_str
from cartloom.domain.saga import (
    apply_reservation_result,
    parse_timeout,
    reserve_commands,
    resolve_timeout,
    settle_commands,
)
from cartloom.domain.shopify.state import personal_data, redacted
from cartloom.stream.app import app, settings
from cartloom.stream.batching import (
    BatchHandler,
    MessageHandler,
    Outbox,
    TableBatch,
    handle_batch,
    in_offset_order,
    partition_for,
    stop_without_acknowledging,
)
from cartloom.stream.deadletter import dead_letter_topic
from cartloom.stream.envelopes import LEDGER_COMMANDS
from cartloom.stream.faust_types import TunedConsumer
from cartloom.stream.forwarding import forward_if_elsewhere
from cartloom.stream.tables import early_events_by_order, order_by_id
from cartloom.stream.topics import (
    inventory_commands_topic,
    order_inputs,
    shopify_data_exports_topic,
)

log = logging.getLogger(__name__)


@app.agent(order_inputs)
async def process_orders(stream: faust.StreamT[bytes]) -> None:
    """Handle order inputs a batch at a time; nothing is acknowledged without a trace."""
    batch_max, within = settings.order_batch_max, settings.order_batch_within_seconds
    async for batch in cast(Any, stream).take_events(batch_max, within):
        events = in_offset_order(batch, cast(TunedConsumer, app.consumer), "orders")
        if not events:
            continue
        orders, outbox = TableBatch(order_by_id, app.producer), Outbox(app.producer)
        held = TableBatch(early_events_by_order, app.producer)
        handler = OrderHandler(orders, outbox, held)
        await handle_batch(events, handler, ([orders, held], outbox), dead_letter_topic, "orders")
        try:
            await settle_held_events(handler.settled)  # before the batch is acknowledged
        except Exception as exc:  # a refused write: the batch must not be acknowledged
            stop_without_acknowledging("orders", exc)
        inputs.processed(events)  # the saga's clocks: how far each input partition was read


class OrderHandler(BatchHandler):
    """Dispatches one event by its topic to the domain and records what it decided."""

    def __init__(self, orders: TableBatch, outbox: Outbox, held: TableBatch) -> None:
        super().__init__()
        self.orders, self.outbox, self.held = orders, outbox, held
        self.now = utc_now_iso()  # one clock reading per batch
        #: Held events this batch applied or gave up, by order id: removed from
        #: ``early_events_by_order`` once that is on the broker (settle_held_events).
        self.settled: dict[str, HeldSettlement] = {}

    def handlers(self) -> Mapping[str, MessageHandler]:
        """Everything keyed by order id."""
        return {
            "orders.accepted": self._order,
            "order.events": self._lifecycle_event,
            "reservation.results": self._result,
            "order.timeouts": self._timeout,
            "shopify.redactions": self._privacy,
        }

    def _lifecycle_event(
        self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None
    ) -> None:
        lifecycle_event = parse_order_event(payload, key=key)
        order_id = lifecycle_event.order_id  # the message key: parse_order_event checked it
        if forward_if_elsewhere(event, order_id, self.outbox, self.tally):
            return  # applied on its order's partition (a copy is a duplicate by its fields)
        view: OrderView | None = self.orders.get(order_id)
        if view is None:  # it overtook its order (the intake hop): hold it
            self._hold(event, lifecycle_event)
        else:
            self._step("event", event, apply_order_event(view, lifecycle_event, self.now))

    def _timeout(self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None) -> None:
        if payload.get("kind") == HELD_NUDGE:  # held events fell due
            self._held_nudge(event, parse_held_nudge(payload, key=key))
            return
        order_id, kind = parse_timeout(payload, key=key)
        view, partition = self.orders.get(order_id), event.message.partition
        if view is not None:  # decided on the clock of the input that could change it
            clock, ttl = decision_clock(kind, partition), settings.reservation_ttl_seconds
            step = resolve_timeout(view, kind, self.now, clock=clock, ttl_seconds=ttl)
            self._step("timeout", event, step)
            if not step.changed:  # too early (an earlier owner's nudge) or no longer due
                nudge_ignored(step.view)

    def _order(self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None) -> None:
        # An item of the intake's envelope was validated there; a message on its own (e.g.
        # replayed from orders.accepted.dlq) is validated again.
        order = read_accepted_order(payload) if key is None else parse_order(payload, key=key)
        known: OrderView | None = self.orders.get(order.order_id)
        if known is not None:  # a redelivery or replay: repeat what the order implies
            self.tally.count(metrics.ORDERS_DUPLICATE)
            held = self._pending_held(order.order_id)
            # Held events still there were applied before a crash kept them: duplicates.
            step = (
                OrderStep(known, StepOutcome.DUPLICATE)
                if held is None
                else self._apply_held(event, known, held)
            )
            self._step("order", event, step)  # a duplicate writes the view again
            return
        view = new_order_view(order, self.now, deadline_seconds=settings.saga_deadline_seconds)
        commands = list(reserve_commands(view))
        held = self._pending_held(order.order_id)
        if held is not None:  # events that overtook the order: apply them now, in order
            step = self._apply_held(event, view, held)
            view = step.view
            commands.extend(step.commands)
            self._count_refused(step)
            if view["status"] != "received":
                self.tally.count(metrics.ORDER_TRANSITIONS, view["status"])
        self.orders.put(order.order_id, view, event.message.partition)
        schedule_order(view)
        self._send(commands)
        self.tally.count(metrics.ORDERS_RECEIVED)
        self.tally.count(metrics.ORDER_INPUTS, "order", "applied")

    def _result(self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None) -> None:
        result = parse_result(payload, key=key)
        ttl = settings.reservation_ttl_seconds
        step = apply_reservation_result(
            self._known(result.order_id), result, self.now, ttl_seconds=ttl
        )
        self._step("result", event, step)

    def _known(self, order_id: str) -> OrderView:
        view: OrderView | None = self.orders.get(order_id)
        if view is None:
            raise InvalidInput(RejectReason.UNKNOWN_ORDER, f"no order {order_id!r} (yet)")
        return view

    def _step(self, kind: str, event: faust.EventT[Any], step: OrderStep) -> None:
        self.tally.count(metrics.ORDER_INPUTS, kind, step.outcome.value)
        self._count_refused(step)
        if step.outcome is StepOutcome.DUPLICATE:
            # A redelivery: the store may hold this view without its changelog record
            # (written before a kill), so write it again; repeat the commands it implies.
            self.orders.put(step.view["order_id"], step.view, event.message.partition)
            self._send(settle_commands(step.view))
        if not step.changed:
            return
        before = self.orders.get(step.view["order_id"])
        self.orders.put(step.view["order_id"], step.view, event.message.partition)
        schedule_order(step.view)
        if before is None or before["status"] != step.view["status"]:
            self.tally.count(metrics.ORDER_TRANSITIONS, step.view["status"])
        self._send(step.commands)

    def _count_refused(self, step: OrderStep) -> None:
        for refused in (step.detail,) if step.outcome is StepOutcome.ILLEGAL else step.refused:
            self.tally.count(metrics.ORDER_TRANSITIONS_REFUSED)
            log.warning("order %s: refused %s", step.view["order_id"], refused)

    # -- events that overtook their order (cartloom.domain.early_events) ----------------

    def _pending_held(self, order_id: str) -> HeldEventsView | None:
        """The order's held events, minus those this batch already settled."""
        held: HeldEventsView | None = self.held.get(order_id)
        settlement = self.settled.get(order_id)
        if held is None or settlement is None:
            return held
        return without_events(held, settlement.keys)

    def _hold(self, event: faust.EventT[Any], lifecycle_event: OrderEvent) -> None:
        """Keep an event for an order not known yet; give up the oldest over the limit."""
        order_id = lifecycle_event.order_id
        raw = bytes(event.value).decode()  # JSON, so UTF-8: decode_json_object parsed it
        # Held in full: what this batch gives up leaves the table only after its dead
        # letter is on the broker (settle_held_events). A duplicate is written again too:
        # the store may have run ahead of its changelog.
        step = hold_event(self.held.get(order_id), lifecycle_event, raw, origin_of(event), self.now)
        self.held.put(order_id, step.held, event.message.partition)
        schedule_held(order_id, step.held)
        self.tally.count(metrics.ORDER_INPUTS, "event", step.outcome.value)
        self.tally.count(metrics.EARLY_EVENTS, step.outcome.value)
        limit = settings.early_events_max_per_order
        detail = f"more than {limit} events held for order {order_id!r}, which has not arrived"
        settled = self.settled.get(order_id)
        pending = without_events(step.held, settled.keys) if settled else step.held
        for entry in over_limit(pending, limit) if pending is not None else ():
            self._give_up(event, order_id, entry, RejectReason.HELD_OVER_LIMIT, detail)
        if step.outcome is HoldOutcome.HELD:
            log.info("order %s: holding %s until the order arrives", order_id, lifecycle_event.key)

    def _apply_held(
        self, event: faust.EventT[Any], view: OrderView, held: HeldEventsView
    ) -> OrderStep:
        """``view`` with the held events applied; they are cleared once it is written."""
        applied: HeldApplication = apply_held_events(view, held, self.now)
        taken = sum(outcome is not StepOutcome.DUPLICATE for outcome in applied.outcomes)
        self.tally.count(metrics.EARLY_EVENTS, "applied", amount=taken)
        for entry, error in applied.invalid:
            self.tally.count(metrics.EARLY_EVENTS, "invalid")
            self._give_up(event, view["order_id"], entry, error.reason, error.detail)
        settlement = self.settled.setdefault(view["order_id"], HeldSettlement(event))
        settlement.keys.update(entry["key"] for entry in held["events"])
        return applied.step

    def _held_nudge(self, event: faust.EventT[Any], order_id: str) -> None:
        """The timer found held events due: apply them if the order came, else give them up."""
        held = self._pending_held(order_id)
        if held is None:  # already settled
            self.tally.count(metrics.ORDER_INPUTS, "timeout", "ignored")
            return
        view: OrderView | None = self.orders.get(order_id)
        if view is not None:  # the order came; a crash kept its applied events: duplicates
            self._step("timeout", event, self._apply_held(event, view, held))
            return
        hold_seconds = settings.early_event_hold_seconds
        expired = expired_events(held, self.now, hold_seconds)
        detail = f"order {order_id!r} did not arrive within {hold_seconds:g} s of the event"
        for entry in expired:
            self._give_up(event, order_id, entry, RejectReason.UNKNOWN_ORDER, detail)
        limit = settings.early_events_max_per_order
        remaining = without_events(held, {entry["key"] for entry in expired})
        for entry in over_limit(remaining, limit) if remaining is not None else ():
            over = f"more than {limit} events held for order {order_id!r}"
            self._give_up(event, order_id, entry, RejectReason.HELD_OVER_LIMIT, over)
        settlement = self.settled.get(order_id)
        if settlement is not None and settlement.dead_letters:
            self.tally.count(metrics.ORDER_INPUTS, "timeout", "applied")
        else:  # not due yet (a nudge from a standby copy): hold it again
            self.tally.count(metrics.ORDER_INPUTS, "timeout", "ignored")
            schedule_held(order_id, held)

    def _give_up(
        self,
        event: faust.EventT[Any],
        order_id: str,
        entry: HeldEventView,
        reason: RejectReason,
        detail: str,
    ) -> None:
        """Send a held event to ``order.events.dlq`` and drop it, once the batch is written."""
        settlement = self.settled.setdefault(order_id, HeldSettlement(event))
        if entry["key"] not in settlement.keys:
            settlement.keys.add(entry["key"])
            settlement.dead_letters.append((entry, reason, detail))

    # -- privacy jobs (shopify.redactions), so that order_by_id has one writer ----------

    def _privacy(self, event: faust.EventT[Any], job: dict[str, Any], key: str | None) -> None:
        """``redact`` / ``export`` one order, or ``redact_shop``: this partition's orders."""
        kind = job.get("kind")
        if kind == "redact_shop":
            shop, partition = require_str(job, "shop"), event.message.partition
            for order_id in shop_orders_on_partition(order_by_id.data.items(), shop, partition):
                self._redact(event, order_id, kind)
            return
        if kind not in ("redact", "export"):
            raise InvalidInput(
                RejectReason.INVALID_SCHEMA, "kind must be redact, export or redact_shop"
            )
        order_id = keyed_id(job, "order_id", key)
        view: OrderView | None = self.orders.get(order_id)
        if view is None:
            self.tally.count(metrics.SHOPIFY_PRIVACY_JOBS, kind, "unknown_order")
        elif kind == "redact":
            self._redact(event, order_id, kind)
        else:
            report = {
                **job,
                "data": personal_data(cast(dict[str, Any], view)),
                "exported_at": self.now,
            }
            self.outbox.add(shopify_data_exports_topic, order_id, report)
            self.tally.count(metrics.SHOPIFY_PRIVACY_JOBS, kind, "exported")

    def _redact(self, event: faust.EventT[Any], order_id: str, kind: str) -> None:
        """Replace the view with a copy without personal data, one version higher."""
        view: OrderView | None = self.orders.get(order_id)
        if view is None:
            return
        cleaned = redacted(cast(dict[str, Any], view), self.now)
        if cleaned is None:  # nothing held (already redacted): written again, like a duplicate
            self.orders.put(order_id, view, event.message.partition)
            self.tally.count(metrics.SHOPIFY_PRIVACY_JOBS, kind, "nothing_held")
            return
        self.orders.put(order_id, cleaned, event.message.partition)
        self.tally.count(metrics.SHOPIFY_PRIVACY_JOBS, kind, "redacted")

    def _send(self, commands: Iterable[Command]) -> None:
        for command in commands:
            body = command_to_json(command)
            field = LEDGER_COMMANDS.field
            self.outbox.add_to_envelope(inventory_commands_topic, command.sku, field, body)


def shop_orders_on_partition(
    views: Iterable[tuple[Any, Any]], shop: str, partition: int
) -> list[str]:
    """The Shopify orders of ``shop`` among ``views`` whose key lives on ``partition``.

    Views without a ``shop`` field are Shopify orders of unknown shop: included, so a shop
    redaction errs on the side of removing personal data. The table's data holds standby
    partitions too: only the keys of the partition the job arrived on are this agent's.
    """
    partitions = order_by_id.partitions or 1
    owned = []
    for key, view in list(views):
        if not isinstance(view, dict) or view.get("source") != "shopify":
            continue
        if view.get("shop") not in (None, shop):
            continue
        order_id = key.decode() if isinstance(key, bytes) else str(key)
        if partition_for(order_id, partitions) == partition:
            owned.append(order_id)
    return owned
