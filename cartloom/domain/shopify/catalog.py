"""The ``shopify.catalog`` message: one product's view, checked before it is stored.

``normalise_webhooks`` turns each product webhook into one document keyed by product id
(:func:`cartloom.domain.shopify.normalise.normalise_product`): the product's view, or a deletion
marker. ``update_catalog`` stores it in ``product_by_id``, which the sinks materialise as
products for storefronts (status, variants with their SKUs and inventory items).

:data:`CATALOG_CHANGE` declares what such a document holds, with the field kinds of the
other inputs (:mod:`cartloom.domain.fields`); :func:`read_catalog_change` checks one and
returns the document to store, made of the declared fields only, so a message of another
shape, or with content nobody declared, never becomes a product. The normaliser builds
its output with the same function, so a webhook whose product would be refused here is
dead-lettered whole, before any of its SKU mappings is published. The topic is internal
(written only by ``normalise_webhooks``): its contract is not among the published
schemas, which cover the topics producers outside CartLoom write. Pure.
"""

from __future__ import annotations

from typing import Any

from cartloom.domain.fields import (
    Amount,
    Boolean,
    Field,
    Items,
    MessageContract,
    Record,
    RequiredUnless,
    Text,
    Timestamp,
)
from cartloom.domain.orders import ID_MAX_LEN

#: Bound of the text copied from Shopify (titles, handles, SKUs...). Shopify caps each at
#: 255 characters; the bound is generous so that no real product is refused, and keeps a
#: runaway value out of the table and the stores.
SHOPIFY_TEXT_MAX_LEN = 1024

PRODUCT_ID = Field(
    "product_id",
    Text(ID_MAX_LEN),
    "The Shopify product id as a string: the message's Kafka key and product_by_id's key.",
    required=True,
)
SHOP = Field(
    "shop",
    Text(SHOPIFY_TEXT_MAX_LEN),
    "The shop's myshopify.com domain, lower case.",
    required=True,
)
DELETED = Field(
    "deleted",
    Boolean(),
    "True for products/delete: the view stays as a marker, so a late update of the "
    "product cannot bring it back.",
    required=True,
)
UPDATED_AT = Field(
    "updated_at",
    Timestamp(),
    "When Shopify changed the product (for a deletion: when Shopify sent the webhook).",
    nullable=True,
)


def _shopify_text(name: str, description: str) -> Field:
    return Field(name, Text(SHOPIFY_TEXT_MAX_LEN, blank=True), description, nullable=True)


VARIANT = Record(
    (
        Field("variant_id", Text(ID_MAX_LEN), "The Shopify variant id.", required=True),
        Field(
            "sku",
            Text(SHOPIFY_TEXT_MAX_LEN),
            "The variant's SKU, as orders and inventory name it (shopify-variant-<variant "
            "id> when Shopify's is empty).",
            required=True,
        ),
        _shopify_text("title", "The variant's title."),
        Field("price", Amount(), "The variant's price.", nullable=True),
        Field(
            "inventory_item_id",
            Text(ID_MAX_LEN),
            "The variant's inventory item: Shopify's stock levels name this id.",
            nullable=True,
        ),
    )
)
VARIANTS = Field(
    "variants",
    Items(VARIANT),
    "The product's variants (a deletion has none).",
)
#: The fields of a product's view, in the order the stored document lists them.
PRODUCT_FIELDS = (
    PRODUCT_ID,
    SHOP,
    DELETED,
    _shopify_text("title", "The product's title."),
    _shopify_text("handle", "The product's handle (its storefront URL name)."),
    _shopify_text("status", "active, draft, archived... as Shopify says."),
    _shopify_text("vendor", "The product's vendor."),
    _shopify_text("product_type", "The product's type (empty when none was chosen)."),
    UPDATED_AT,
    VARIANTS,
)
#: The fields a deletion marker keeps.
DELETION_FIELDS = (PRODUCT_ID, SHOP, DELETED, UPDATED_AT)
VARIANTS_UNLESS_DELETED = RequiredUnless("variants", "deleted")

#: The ``shopify.catalog`` topic's contract: what :func:`read_catalog_change` accepts.
CATALOG_CHANGE = MessageContract(
    topic="shopify.catalog",
    title="CartLoom product change",
    description="A Shopify product's view, normalised from a products/create or "
    "products/update webhook, or the marker of a products/delete.",
    key=PRODUCT_ID,
    record=Record(PRODUCT_FIELDS),
    rules=(VARIANTS_UNLESS_DELETED,),
    examples=(
        {
            "product_id": "8123",
            "shop": "cartloom-sim.myshopify.com",
            "deleted": False,
            "title": "Mug",
            "handle": "mug",
            "status": "active",
            "vendor": "CartLoom",
            "product_type": "",
            "updated_at": "2026-11-25T09:00:00+00:00",
            "variants": [
                {
                    "variant_id": "8124",
                    "sku": "MUG-RED",
                    "title": "Red",
                    "price": "19.90",
                    "inventory_item_id": "8125",
                }
            ],
        },
        {
            "product_id": "8123",
            "shop": "cartloom-sim.myshopify.com",
            "deleted": True,
            "updated_at": "2026-11-26T10:00:00Z",
        },
    ),
)


def read_catalog_change(payload: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """The document to store for a ``shopify.catalog`` message; raise :class:`InvalidInput`.

    Every declared field present is checked; the document keeps the fields of a product's
    view (a deletion: those of its marker), absent ones as ``null``. ``key`` is the Kafka
    message key; when given it must equal ``product_id``.
    """
    product_id: str = PRODUCT_ID.read(payload)
    CATALOG_CHANGE.check_key(key, product_id)
    names = [each.name for each in PRODUCT_FIELDS]
    values = dict(zip(names, CATALOG_CHANGE.record.read(payload), strict=True))
    VARIANTS_UNLESS_DELETED.check(payload, values["deleted"])
    if values["deleted"]:
        return {each.name: values[each.name] for each in DELETION_FIELDS}
    variant_names = [each.name for each in VARIANT.fields]
    values["variants"] = [dict(zip(variant_names, v, strict=True)) for v in values["variants"]]
    return values
