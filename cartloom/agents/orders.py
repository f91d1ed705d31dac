"""Order intake: ``orders`` topic -> validated order in ``order_by_id`` (status ``received``)."""

from __future__ import annotations

import logging
from typing import Any

import faust

from cartloom import metrics
from cartloom.app import app
from cartloom.clock import utc_now_iso
from cartloom.deadletter import send_to_dead_letter
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.orders import new_order_view, parse_order
from cartloom.domain.payloads import decode_json_object
from cartloom.tables import order_by_id
from cartloom.topics import orders_dlq_topic, orders_topic

log = logging.getLogger(__name__)


@app.agent(orders_topic)
async def accept_orders(stream: faust.StreamT[bytes]) -> None:
    """Store each new order once; send what cannot be processed to ``orders.dlq``."""
    async for event in stream.events():
        try:
            accept_order(event)
        except InvalidInput as exc:
            await send_to_dead_letter(orders_dlq_topic, event, exc.reason, exc.detail)
        except Exception as exc:  # a bug must not drop the event: dead-letter it, keep moving
            log.exception("order at %s offset %s failed", event.message.tp, event.message.offset)
            detail = f"{type(exc).__name__}: {exc}"
            await send_to_dead_letter(
                orders_dlq_topic, event, RejectReason.PROCESSING_ERROR, detail
            )


def accept_order(event: faust.EventT[Any]) -> None:
    """Validate one ``orders`` event and store it unless the order is already known."""
    key = _decode_key(event.key)
    order = parse_order(decode_json_object(event.value), key=key)
    if order_by_id.get(order.order_id) is not None:
        metrics.ORDERS_DUPLICATE.inc()
        return
    order_by_id[order.order_id] = new_order_view(order, utc_now_iso())
    metrics.ORDERS_RECEIVED.inc()


def _decode_key(key: object) -> str:
    if isinstance(key, bytes):
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise InvalidInput(RejectReason.KEY_MISMATCH, "message key is not UTF-8") from None
    if isinstance(key, str):
        return key
    raise InvalidInput(RejectReason.KEY_MISMATCH, "message has no key; the key must be order_id")
