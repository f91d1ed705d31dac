"""The orders agent: the single writer of ``order_by_id`` and of ``inventory.commands``.

It reads everything keyed by order id (``orders``, ``order.events``,
``reservation.results``, ``order.timeouts``) in batches, hands each event to the pure
domain (:mod:`cartloom.domain.orders`, ``.lifecycle``, ``.saga``), writes each changed
order once per batch and sends the ledger commands the domain decided on, keyed by SKU.
What cannot be processed goes to the source topic's ``.dlq`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import faust

from cartloom import metrics
from cartloom.agents.batching import BatchHandler, Outbox, TableBatch, event_key, handle_batch
from cartloom.agents.saga import decision_clock, inputs, nudge_ignored, schedule_order
from cartloom.app import app, settings
from cartloom.clock import utc_now_iso
from cartloom.dlq import dead_letter_topic
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.ledger import Command, command_to_json, parse_result
from cartloom.domain.lifecycle import OrderStep, StepOutcome, apply_order_event, parse_order_event
from cartloom.domain.orders import (
    OrderView,
    PlacedOrder,
    new_order_view,
    parse_order,
    read_accepted_order,
)
from cartloom.domain.payloads import decode_json_object
from cartloom.domain.saga import (
    apply_reservation_result,
    parse_timeout,
    reserve_commands,
    resolve_timeout,
    settle_commands,
)
from cartloom.tables import order_by_id
from cartloom.topics import inventory_commands_topic, order_inputs

log = logging.getLogger(__name__)


@app.agent(order_inputs)
async def process_orders(stream: faust.StreamT[bytes]) -> None:
    """Handle order inputs a batch at a time; nothing is acknowledged without a trace."""
    batch_max, within = settings.order_batch_max, settings.order_batch_within_seconds
    async for events in cast(Any, stream).take_events(batch_max, within):
        orders, outbox = TableBatch(order_by_id, app.producer), Outbox(app.producer)
        handler = OrderHandler(orders, outbox)
        await handle_batch(events, handler, ([orders], outbox), dead_letter_topic, "orders")
        inputs.processed(events)  # the saga's clocks: how far each input partition was read


class OrderHandler(BatchHandler):
    """Dispatches one event by its topic to the domain and records what it decided."""

    def __init__(self, orders: TableBatch, outbox: Outbox) -> None:
        super().__init__()
        self.orders, self.outbox = orders, outbox
        self.now = utc_now_iso()  # one clock reading per batch

    def handle(self, event: faust.EventT[Any]) -> None:
        """Apply one event; raise :class:`InvalidInput` for what belongs in a dead-letter topic."""
        topic, key = event.message.topic, event_key(event)
        payload = decode_json_object(event.value)
        if topic == "orders.accepted" and "orders" in payload:  # the intake validated them
            apply = lambda item: self._order(event, read_accepted_order(item))  # noqa: E731
            self.each_item(event, payload["orders"], "order_id", apply)
        elif topic == "orders.accepted":  # one order, e.g. replayed from orders.accepted.dlq
            self._order(event, parse_order(payload, key=key))
        elif topic == "order.events":
            lifecycle_event = parse_order_event(payload, key=key)
            self._step(
                "event", event, apply_order_event(self._known(key), lifecycle_event, self.now)
            )
        elif topic == "reservation.results" and "results" in payload:
            apply = lambda item: self._result(event, item, None)  # noqa: E731
            self.each_item(event, payload["results"], "order_id", apply)
        elif topic == "reservation.results":
            self._result(event, payload, key)
        else:
            order_id, kind = parse_timeout(payload, key=key)
            view, partition = self.orders.get(order_id), event.message.partition
            if view is not None:  # decided on the clock of the input that could change it
                clock, ttl = decision_clock(kind, partition), settings.reservation_ttl_seconds
                step = resolve_timeout(view, kind, self.now, clock=clock, ttl_seconds=ttl)
                self._step("timeout", event, step)
                if not step.changed:  # too early (an earlier owner's nudge) or no longer due
                    nudge_ignored(step.view)

    def _order(self, event: faust.EventT[Any], order: PlacedOrder) -> None:
        known: OrderView | None = self.orders.get(order.order_id)
        if known is not None:  # a redelivery or replay: repeat what the order implies
            self.tally.count(metrics.ORDERS_DUPLICATE)
            self.tally.count(metrics.ORDER_INPUTS, "order", "duplicate")
            self._send(settle_commands(known))
            return
        view = new_order_view(order, self.now, deadline_seconds=settings.saga_deadline_seconds)
        self.orders.put(order.order_id, view, event.message.partition)
        schedule_order(view)
        self._send(reserve_commands(view))
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
        for refused in (step.detail,) if step.outcome is StepOutcome.ILLEGAL else step.refused:
            self.tally.count(metrics.ORDER_TRANSITIONS_REFUSED)
            log.warning("order %s: refused %s", step.view["order_id"], refused)
        if step.outcome is StepOutcome.DUPLICATE:
            self._send(settle_commands(step.view))
        if not step.changed:
            return
        before = self.orders.get(step.view["order_id"])
        self.orders.put(step.view["order_id"], step.view, event.message.partition)
        schedule_order(step.view)
        if before is None or before["status"] != step.view["status"]:
            self.tally.count(metrics.ORDER_TRANSITIONS, step.view["status"])
        self._send(step.commands)

    def _send(self, commands: Iterable[Command]) -> None:
        for command in commands:
            body = command_to_json(command)
            self.outbox.add_to_envelope(inventory_commands_topic, command.sku, "commands", body)
