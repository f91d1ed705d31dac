"""Fuzzing every Kafka input's decoder and validator: a bad message is refused, never a crash.

A worker reads ``orders``, ``order.events`` and ``inventory`` from producers it does not
control, and Shopify's deliveries through ``shopify.webhooks``. Whatever their bytes, the
decoder and validator either return a value or raise :class:`InvalidInput` (the agents
dead-letter it with the reason); any other exception would stop a partition. The messages
are built from the contracts' own field names (so they get past the first checks) with
values of every JSON type, plus plain random bytes. ``FUZZ_CASES`` sets the cases per
test (``make fuzz``: 10,000); ``make test`` runs a short form.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cartloom.domain.errors import InvalidInput
from cartloom.domain.payloads import decode_json_object
from cartloom.domain.schemas import INPUT_CONTRACTS, PARSERS
from cartloom.domain.shopify.normalise import (
    KNOWN_TOPICS,
    Delivery,
    check_fits_topic,
    normalise,
    resource_key,
)
from tests.fuzz_cases import FUZZ_SETTINGS

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "2026-12-04T10:00:00+00:00", "2026-12-04", "EUR", "paid", "0"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def message_of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly the contract's field names, with any JSON values."""
    keys = st.sampled_from(names) | st.text(max_size=12)
    line = st.dictionaries(st.sampled_from(["sku", "quantity", "price"]), JSON, max_size=3)
    values = JSON | st.lists(line, max_size=3)
    return st.dictionaries(keys, values, max_size=len(names) + 2)


def raw_message(names: list[str]) -> st.SearchStrategy[bytes]:
    as_json = message_of(names).map(lambda value: json.dumps(value).encode())
    return as_json | st.binary(max_size=200) | JSON.map(lambda value: json.dumps(value).encode())


def refused_or_read(read: Any, *args: Any, **kwargs: Any) -> None:
    try:
        read(*args, **kwargs)
    except InvalidInput as refused:
        assert refused.reason and str(refused)


@FUZZ_SETTINGS
@given(data=st.data())
def test_every_input_topic_refuses_or_reads_any_message(data: st.DataObject) -> None:
    topic = data.draw(st.sampled_from(sorted(PARSERS)))
    names = [field.name for field in INPUT_CONTRACTS[topic].fields]
    raw = data.draw(raw_message(names))
    key = data.draw(st.none() | st.text(max_size=20))
    try:
        payload = decode_json_object(raw)
    except InvalidInput:
        return
    refused_or_read(PARSERS[topic], payload, key=key)


SHOPIFY_NAMES = [
    "id",
    "order_id",
    "inventory_item_id",
    "location_id",
    "available",
    "line_items",
    "refund_line_items",
    "variants",
    "title",
    "sku",
    "created_at",
    "updated_at",
    "financial_status",
    "fulfillment_status",
    "cancelled_at",
    "customer",
    "shop_id",
    "shop_domain",
    "orders_to_redact",
    "orders_requested",
]


@FUZZ_SETTINGS
@given(
    topic=st.sampled_from(sorted(KNOWN_TOPICS)) | st.text(max_size=20),
    payload=message_of(SHOPIFY_NAMES),
    shop=st.sampled_from(["shop.myshopify.com", "SHOP.myshopify.com", ""]),
    emitted=st.frozensets(st.sampled_from(["created", "paid", "fulfilled", "cancelled"])),
)
def test_a_shopify_delivery_is_normalised_or_refused(
    topic: str, payload: dict[str, Any], shop: str, emitted: frozenset[str]
) -> None:
    refused_or_read(resource_key, topic, shop, payload)
    refused_or_read(check_fits_topic, topic, shop, payload)
    if topic in KNOWN_TOPICS:
        delivery = Delivery(topic, shop, "wh-1", None, None, 0.0, payload)
        refused_or_read(normalise, delivery, emitted)
