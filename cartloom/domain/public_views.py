"""The public views of an order, a SKU's stock and a product: what the live queries answer.

Each is an allow-list (:class:`~cartloom.domain.public_shapes.View`) over the table's
value: :data:`ORDER` over ``order_by_id`` (:class:`~cartloom.domain.orders.OrderView`),
:data:`STOCK` over ``inventory_by_sku``
(:class:`~cartloom.domain.inventory.InventoryView`) and :data:`PRODUCT` over
``product_by_id`` (:mod:`cartloom.domain.shopify.catalog`). What they leave out is the
stream processor's bookkeeping, free to change without notice:

- orders: ``deferred`` (events kept until the reservation resolves), ``recent_events``,
  ``last_event_version`` and ``last_event_at`` (what makes replays no-ops), and
  ``deadline_at`` (the saga's own deadline for the reservation answers);
- stock: ``level_at``, ``source_offset``, ``forwarded_offsets``, ``recent_adjustments``
  and ``command_offset`` (ordering and deduplication of stock messages and ledger
  commands).

The declarations also give the answers' JSON Schemas (the OpenAPI document,
:mod:`cartloom.web.openapi`) and ``docs/api.md``'s field tables. Scalars reuse the kinds of
the input contracts (:mod:`cartloom.domain.fields`) where the stored text is the one the
contract checked. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cartloom.domain.fields import (
    TIMESTAMP_MAX_LEN,
    Boolean,
    Choice,
    Integer,
    Text,
    Timestamp,
)
from cartloom.domain.ledger import ReserveOutcome
from cartloom.domain.lifecycle import Status
from cartloom.domain.orders import CURRENCY, ID_MAX_LEN, SOURCE
from cartloom.domain.public_shapes import (
    CountsByName,
    ListOf,
    Opaque,
    PublicField,
    Value,
    View,
)
from cartloom.domain.shopify.catalog import SHOPIFY_TEXT_MAX_LEN

ID = Value.of(Text(ID_MAX_LEN))
COUNT = Value.of(Integer(minimum=0))
#: An instant CartLoom wrote (its clock, milliseconds, an offset): RFC 3339.
INSTANT = Value.of(Timestamp())
#: An instant copied from an input as its sender wrote it: ISO-8601 with a time zone, which
#: the input checked, though not necessarily in RFC 3339's form.
SENT_INSTANT = Value(
    {"type": "string", "maxLength": TIMESTAMP_MAX_LEN},
    "ISO-8601 date-time with a time zone, as the sender wrote it",
)
PRICE = Value({"type": "string"}, 'decimal string as the sender gave it (`"30.00"`)')
SHOPIFY_TEXT = Value.of(Text(SHOPIFY_TEXT_MAX_LEN, blank=True))
STATUSES = tuple(status.value for status in Status)

ORDER_LINE = View(
    "OrderLine",
    "One line of the order as it was placed.",
    (
        PublicField("sku", ID, "The SKU."),
        PublicField("quantity", Value.of(Integer(minimum=1)), "Units ordered."),
    ),
)
TRANSITION = View(
    "Transition",
    "One change of status: what the order became, when and why.",
    (
        PublicField("status", Value.of(Choice(STATUSES)), "The status the order moved to."),
        PublicField("at", INSTANT, "When CartLoom applied the change."),
        PublicField(
            "reason",
            Value({"type": "string"}, "text"),
            "Why, in words (`event paid v3`, `insufficient stock: ...`); null for the "
            "order's arrival.",
            nullable=True,
        ),
    ),
)
RESERVATION = View(
    "Reservation",
    "The stock held for one line, and what happened to its units since.",
    (
        PublicField("line", COUNT, "The line's position in `lines`, from 0."),
        PublicField("sku", ID, "The line's SKU."),
        PublicField("requested", COUNT, "Units the line asks for."),
        PublicField(
            "granted",
            COUNT,
            "Units reserved; null while the SKU's answer is pending.",
            nullable=True,
        ),
        PublicField(
            "outcome",
            Value.of(Choice(("pending", *(outcome.value for outcome in ReserveOutcome)))),
            "`pending` until the SKU answered; then `reserved` (every unit), `partial` "
            "(some: an order Shopify accepted, the rest oversold), `short` (none: not "
            "enough stock) or `refused` (none: the line was released first).",
        ),
        PublicField("fulfilled", COUNT, "Units shipped."),
        PublicField("refunded", COUNT, "Units refunded."),
        PublicField("released", COUNT, "Refunded units that had not shipped: back in stock."),
    ),
)
REJECTION = View(
    "Rejection",
    "Why the order was rejected.",
    (
        PublicField(
            "reason",
            Value.of(Choice(("deadline", "insufficient_stock"))),
            "`insufficient_stock`, or `deadline` when a SKU never answered in time.",
        ),
        PublicField("sku", ID, "The SKU that decided it."),
        PublicField("requested", COUNT, "Units the line asked for."),
        PublicField(
            "available", Value.of(Integer()), "Units available then (null: unknown).", nullable=True
        ),
        PublicField("short_by", COUNT, "Units missing (null: unknown).", nullable=True),
    ),
)
OVERSOLD_LINE = View(
    "OversoldLine",
    "A line of an order Shopify already accepted that CartLoom could not fully reserve.",
    (
        PublicField("line", COUNT, "The line's position in `lines`, from 0."),
        PublicField("sku", ID, "The line's SKU."),
        PublicField("short_by", COUNT, "Units sold beyond the stock."),
    ),
)

#: The public view of an order (``GET /orders/{order_id}``).
ORDER = View(
    "Order",
    "An order as CartLoom holds it now. `version` grows by one with every change.",
    (
        PublicField("order_id", ID, "The order's id."),
        PublicField("source", Value.of(SOURCE.kind), "The channel it came from (pos, web...)."),
        PublicField("created_at", SENT_INSTANT, "When it was placed, as the channel said."),
        PublicField(
            "status",
            Value.of(Choice(STATUSES)),
            "Where the order is in its lifecycle (docs/orders.md draws the machine).",
        ),
        PublicField(
            "version",
            Value.of(Integer(minimum=1)),
            "The order's version: 1 when it arrived, one more per change. "
            "`?min_version=N` waits for it.",
        ),
        PublicField("updated_at", INSTANT, "When CartLoom last changed the order."),
        PublicField("lines", ListOf(ORDER_LINE), "What was ordered."),
        PublicField("history", ListOf(TRANSITION), "The last 20 changes of status, oldest first."),
        PublicField(
            "accepted_upstream",
            Value.of(Boolean()),
            "true when the channel had already accepted the order (Shopify): CartLoom never "
            "rejects it and counts lines short of stock as oversold.",
        ),
        PublicField(
            "reservations",
            ListOf(RESERVATION),
            "Per line, the stock held for it and what became of the units.",
        ),
        PublicField(
            "expires_at",
            INSTANT,
            "When the reservation of an unpaid order lapses (status `reserved`); null once "
            "paid, shipped or closed.",
            nullable=True,
        ),
        PublicField("rejection", REJECTION, "Why it was rejected; null otherwise.", nullable=True),
        PublicField(
            "oversold",
            ListOf(OVERSOLD_LINE),
            "Lines short of stock on an order CartLoom could not reject.",
            absent=(),
        ),
        PublicField(
            "currency", Value.of(CURRENCY.kind), "ISO 4217 code of total_price.", nullable=True
        ),
        PublicField("total_price", PRICE, "The order's total, as given.", nullable=True),
        PublicField(
            "customer",
            Opaque(),
            "Who ordered, as the channel described them (personal data); null when none was "
            "given or a privacy request removed it.",
            nullable=True,
        ),
        PublicField(
            "redacted_at",
            INSTANT,
            "When Shopify's customers/redact removed the customer data; null if it never did.",
            nullable=True,
        ),
    ),
)

#: The public view of a SKU's stock (``GET /inventory/{sku}``).
STOCK = View(
    "Stock",
    "A SKU's stock as CartLoom counts it now: `available = on_hand - reserved`.",
    (
        PublicField("sku", ID, "The SKU."),
        PublicField("on_hand", COUNT, "Units physically there: the last level reported, adjusted."),
        PublicField("reserved", COUNT, "Units CartLoom's open reservations hold."),
        PublicField(
            "available",
            Value.of(Integer()),
            "on_hand - reserved: what new orders can reserve. Negative when the source "
            "counted fewer units than are reserved.",
        ),
        PublicField(
            "locations",
            CountsByName(),
            "Units on hand per location, when levels came per location; empty otherwise.",
        ),
        PublicField(
            "oversold",
            COUNT,
            "Units of orders Shopify accepted that could not be reserved, in total.",
            absent=0,
        ),
        PublicField(
            "version",
            COUNT,
            "The stock's version, one more per change. `?min_version=N` waits for it.",
        ),
        PublicField("updated_at", INSTANT, "When CartLoom last changed the stock."),
    ),
)

VARIANT = View(
    "Variant",
    "One variant of the product.",
    (
        PublicField("variant_id", ID, "The Shopify variant id."),
        PublicField(
            "sku",
            Value.of(Text(SHOPIFY_TEXT_MAX_LEN)),
            "The variant's SKU, as orders and stock name it (`shopify-variant-<variant id>` "
            "when Shopify's is empty).",
        ),
        PublicField("title", SHOPIFY_TEXT, "The variant's title.", nullable=True),
        PublicField("price", PRICE, "The variant's price.", nullable=True),
        PublicField(
            "inventory_item_id",
            ID,
            "The Shopify inventory item whose levels are this SKU's stock.",
            nullable=True,
        ),
    ),
)

#: The public view of a Shopify product (``GET /products/{product_id}``).
PRODUCT = View(
    "Product",
    "A Shopify product as its last webhook described it; a deleted product stays as a "
    "marker (`deleted: true`, no variants).",
    (
        PublicField("product_id", ID, "The Shopify product id, as a string."),
        PublicField(
            "shop",
            Value.of(Text(SHOPIFY_TEXT_MAX_LEN)),
            "The shop's myshopify.com domain, lower case.",
        ),
        PublicField("deleted", Value.of(Boolean()), "true once Shopify deleted the product."),
        PublicField("title", SHOPIFY_TEXT, "The product's title.", nullable=True),
        PublicField("handle", SHOPIFY_TEXT, "Its storefront URL name.", nullable=True),
        PublicField("status", SHOPIFY_TEXT, "active, draft, archived...", nullable=True),
        PublicField("vendor", SHOPIFY_TEXT, "The product's vendor.", nullable=True),
        PublicField("product_type", SHOPIFY_TEXT, "The product's type.", nullable=True),
        PublicField(
            "updated_at",
            SENT_INSTANT,
            "When Shopify changed the product (a deletion: when Shopify sent it).",
            nullable=True,
        ),
        PublicField("variants", ListOf(VARIANT), "The variants (none once deleted).", absent=()),
        PublicField(
            "version",
            Value.of(Integer(minimum=1)),
            "The product's version, one more per change. `?min_version=N` waits for it.",
        ),
    ),
)

#: Resource name -> its public view.
PUBLIC_VIEWS: dict[str, View] = {"order": ORDER, "inventory": STOCK, "product": PRODUCT}


def public_order(value: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of an ``order_by_id`` value."""
    return ORDER.project(value)


def public_stock(value: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of an ``inventory_by_sku`` value."""
    return STOCK.project(value)


def public_product(value: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of a ``product_by_id`` value."""
    return PRODUCT.project(value)
