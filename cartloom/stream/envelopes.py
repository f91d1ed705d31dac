"""Envelopes: many items in one Kafka message, capped by encoded bytes so each one fits.

The intake (and the saga's internal topics) carry items in envelopes ``{"orders": [...]}``,
one Kafka message for hundreds of items. A cap by count alone does not bound the size:
an order's ``customer`` object has no size limit, so 500 orders of 2 KB are over Kafka's
default message limit, the broker refuses the message and the sender retries it forever.
This module is the one home of the byte limit; every writer of envelopes packs with
:func:`pack` (or checks with :func:`fits_alone`) against :data:`ENVELOPE_MAX_BYTES`.

Pure: no Kafka client, so the rule is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

#: Kafka's default largest record batch a topic takes (``max.message.bytes``: 1 MiB + 12).
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588

#: Most items an envelope holds (one Faust event handles them all; bounds a batch's work).
ENVELOPE_MAX = 500

#: Most bytes an envelope's value may take. Well below Kafka's default limit: the rest
#: (about 240 KB) is room for the key, headers, record and batch overhead, and for an order
#: that travels alone to grow by its per-line bookkeeping once it is a view in a table.
ENVELOPE_MAX_BYTES = 800_000


@dataclass(frozen=True)
class Envelope:
    """How a topic's envelopes look: ``{field: [item, ...]}``, each item keyed by ``item_key``."""

    field: str
    item_key: str  # the item's id: it decides the item's partition


#: The topics whose messages may be envelopes, by declared name: the one table that the
#: senders pack with and the agents unwrap by
#: (:meth:`cartloom.stream.batching.BatchHandler.handle`). A message on these topics
#: without the field is one item on its own (e.g. replayed from a dead-letter topic),
#: keyed by its id.
ACCEPTED_ORDERS = Envelope("orders", "order_id")
LEDGER_COMMANDS = Envelope("commands", "sku")
RESERVATION_RESULTS = Envelope("results", "order_id")
ENVELOPES: dict[str, Envelope] = {
    "orders.accepted": ACCEPTED_ORDERS,
    "inventory.commands": LEDGER_COMMANDS,
    "reservation.results": RESERVATION_RESULTS,
}


class ItemTooLarge(ValueError):  # noqa: N818 - a verdict on an item, like InvalidInput
    """One item is bigger than an envelope may be on its own; it belongs in a dead letter."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encodes to {size:,} bytes; an envelope holds at most {limit:,}")
        self.size = size
        self.limit = limit


def _frame(field: str) -> tuple[bytes, bytes]:
    return b'{"' + field.encode() + b'":[', b"]}"


@cache  # asked once per order by the intake, with the same few arguments
def overhead_free(limit: int, field: str = "orders") -> int:
    """The largest single item an envelope of ``limit`` bytes can hold."""
    head, tail = _frame(field)
    return limit - len(head) - len(tail)


def fits_alone(item: bytes, field: str, limit: int = ENVELOPE_MAX_BYTES) -> bool:
    """Whether the encoded ``item`` fits an envelope of ``field`` on its own."""
    return len(item) <= overhead_free(limit, field)


def pack(
    field: str,
    items: Sequence[bytes],
    *,
    limit: int = ENVELOPE_MAX_BYTES,
    max_items: int | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Envelopes ``{field: [...]}`` holding ``items`` (each already JSON) in order.

    Yields ``(index of the envelope's first item, envelope bytes)``; each envelope is at
    most ``limit`` bytes and, when ``max_items`` is given, holds at most that many items.
    Raises :class:`ItemTooLarge` for an item that does not fit alone: callers check
    :func:`fits_alone` first and dead-letter such an item instead.
    """
    head, tail = _frame(field)
    room = limit - len(head) - len(tail)
    start, size = 0, 0
    for index, item in enumerate(items):
        if len(item) > room:
            raise ItemTooLarge(len(item), limit)
        grown = size + len(item) + (1 if index > start else 0)  # the comma before it
        full = max_items is not None and index - start >= max_items
        if index > start and (grown > room or full):
            yield start, head + b",".join(items[start:index]) + tail
            start, grown = index, len(item)
        size = grown
    if start < len(items):
        yield start, head + b",".join(items[start:]) + tail
