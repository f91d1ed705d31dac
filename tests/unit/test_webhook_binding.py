"""A signed body is bound to its topic and shop: re-posted under another, it is refused.

Shopify signs only the body. The bodies here are the simulator's, shaped as Shopify's
webhooks are; each must pass under its own topic and fail under every topic whose body
has another shape.
"""

from __future__ import annotations

from typing import Any

import pytest

from cartloom.domain.errors import InvalidInput
from cartloom.domain.shopify.normalise import (
    KNOWN_TOPICS,
    LEVEL_TOPICS,
    ORDER_TOPICS,
    check_fits_topic,
)
from devstack.shopify_store import SimulatedStore

SHOP = "cartloom-sim.myshopify.com"

#: Topics whose bodies have one shape: the body alone cannot tell them apart.
SAME_SHAPE = [
    ORDER_TOPICS,
    frozenset({"inventory_levels/update", "inventory_levels/connect"}),
    frozenset({"products/create", "products/update"}),
    frozenset({"inventory_items/create", "inventory_items/update"}),
    # Deletes carry the id alone; Shopify's ids are unique across resources, so a product's
    # id posted as an inventory item's deletion names no item.
    frozenset({"products/delete", "inventory_items/delete"}),
]


def bodies() -> dict[str, dict[str, Any]]:
    """One real-shaped body per topic the simulator emits, plus the few it does not."""
    store = SimulatedStore(domain=SHOP)
    store.add_product("Tee", ["TEE-S"], stock=5)
    store.set_available("TEE-S", 4)
    order = store.place_order([("TEE-S", 1)])
    store.pay(order)
    store.fulfill(order)
    store.refund(order)
    store.cancel(order)
    store.redact_customer([order])
    found = {event.topic: dict(event.payload) for event in store.history}
    product = found["products/create"]
    item = found["inventory_items/create"]
    level = found["inventory_levels/update"]
    found.setdefault("products/update", dict(product))
    found.setdefault("products/delete", {"id": product["id"]})
    found.setdefault("inventory_items/update", dict(item))
    found.setdefault(
        "inventory_items/delete",
        {"id": item["id"], "country_code_of_origin": None, "admin_graphql_api_id": "gid://x"},
    )
    found.setdefault(
        "inventory_levels/disconnect",
        {"inventory_item_id": level["inventory_item_id"], "location_id": level["location_id"]},
    )
    for topic in ORDER_TOPICS:
        found.setdefault(topic, dict(found["orders/create"]))
    redact = found["customers/redact"]
    found["customers/data_request"] = {
        "shop_id": redact["shop_id"],
        "shop_domain": SHOP,
        "customer": redact["customer"],
        "orders_requested": redact["orders_to_redact"],
        "data_request": {"id": 9999},
    }
    found["shop/redact"] = {"shop_id": redact["shop_id"], "shop_domain": SHOP}
    return found


BODIES = bodies()
TOPICS = sorted(KNOWN_TOPICS)


def same_shape(first: str, second: str) -> bool:
    return first == second or any(first in group and second in group for group in SAME_SHAPE)


def test_every_known_topic_has_a_body_here() -> None:
    assert set(BODIES) >= KNOWN_TOPICS


@pytest.mark.parametrize("topic", TOPICS)
def test_a_body_passes_under_its_own_topic(topic: str) -> None:
    check_fits_topic(topic, SHOP, BODIES[topic])


@pytest.mark.parametrize("signed_as", TOPICS)
@pytest.mark.parametrize("posted_as", TOPICS)
def test_a_body_re_posted_under_a_topic_of_another_shape_is_refused(
    signed_as: str, posted_as: str
) -> None:
    if same_shape(signed_as, posted_as):
        check_fits_topic(posted_as, SHOP, BODIES[signed_as])
        return
    with pytest.raises(InvalidInput) as refused:
        check_fits_topic(posted_as, SHOP, BODIES[signed_as])
    assert posted_as in refused.value.detail


@pytest.mark.parametrize("topic", ["customers/redact", "customers/data_request", "shop/redact"])
def test_a_privacy_body_re_posted_for_another_shop_is_refused(topic: str) -> None:
    with pytest.raises(InvalidInput, match="the body names shop"):
        check_fits_topic(topic, "another-shop.myshopify.com", BODIES[topic])


def test_the_shop_in_a_privacy_body_is_compared_without_case() -> None:
    check_fits_topic("shop/redact", SHOP, {"shop_id": 1, "shop_domain": SHOP.upper()})


def test_level_topics_are_the_ones_documented_as_alike() -> None:
    assert {"inventory_levels/update", "inventory_levels/connect"} < LEVEL_TOPICS
