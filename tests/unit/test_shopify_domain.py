"""Pure Shopify normalisation: keys, dedupe, staleness, every topic, SKU mapping, redaction."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cartloom.domain.errors import InvalidInput
from cartloom.domain.shopify.dedupe import Verdict, admit
from cartloom.domain.shopify.normalise import (
    KNOWN_TOPICS,
    Delivery,
    Output,
    normalise,
    resource_key,
)
from cartloom.domain.shopify.state import (
    apply_catalog_change,
    apply_item_message,
    redacted,
)
from devstack.shopify_store import SimulatedStore, WebhookEvent

SHOP = "cartloom-sim.myshopify.com"
WINDOW = 48 * 3600


def delivery(event: WebhookEvent, webhook_id: str | None = None, at: float = 1000.0) -> Delivery:
    return Delivery(
        topic=event.topic,
        shop=SHOP,
        webhook_id=webhook_id or f"wh-{event.event_id}",
        event_id=event.event_id,
        triggered_at=event.triggered_at,
        received_at=at,
        payload=event.payload,
    )


def store_with_order() -> tuple[SimulatedStore, int]:
    store = SimulatedStore()
    store.add_product("Tee", ["TEE-S", "TEE-M"], stock=5)
    order_id = store.place_order([("TEE-S", 2), ("TEE-M", 1)])
    return store, order_id


def last(store: SimulatedStore, topic: str) -> WebhookEvent:
    return [event for event in store.history if event.topic == topic][-1]


def test_the_simulated_store_covers_every_topic_cartloom_normalises() -> None:
    store, order_id = store_with_order()
    store.pay(order_id)
    store.fulfill(order_id)
    store.refund(order_id)
    other = store.place_order([("TEE-S", 1)])
    store.cancel(other)
    store.redact_customer([order_id])
    emitted = {event.topic for event in store.history}
    assert {"orders/create", "orders/paid", "orders/fulfilled", "orders/cancelled"} <= emitted
    assert {"refunds/create", "products/create", "inventory_levels/update"} <= emitted
    assert emitted <= KNOWN_TOPICS


@pytest.mark.parametrize(
    ("topic", "payload", "key"),
    [
        ("orders/create", {"id": 7}, f"{SHOP}/order/7"),
        ("orders/paid", {"id": 7}, f"{SHOP}/order/7"),
        ("refunds/create", {"id": 1, "order_id": 7}, f"{SHOP}/order/7"),
        ("products/update", {"id": 9}, f"{SHOP}/product/9"),
        ("inventory_levels/update", {"inventory_item_id": 3}, f"{SHOP}/inventory_item/3"),
        ("inventory_items/delete", {"id": 3}, f"{SHOP}/inventory_item/3"),
        ("customers/redact", {"customer": {"id": 5}}, f"{SHOP}/customer/5"),
        ("shop/redact", {"shop_id": 1}, f"{SHOP}/shop"),
        ("carts/create", {"id": 4}, f"{SHOP}/carts/create/4"),
    ],
)
def test_resource_key_keeps_one_resource_on_one_partition(
    topic: str, payload: dict[str, Any], key: str
) -> None:
    assert resource_key(topic, SHOP, payload) == key


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("orders/create", {}),
        ("orders/create", {"id": True}),
        ("inventory_levels/update", {"location_id": 1}),
        ("customers/redact", {"customer": "x"}),
    ],
)
def test_resource_key_refuses_a_payload_without_its_id(topic: str, payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        resource_key(topic, SHOP, payload)


def test_order_create_becomes_an_accepted_upstream_order() -> None:
    store, order_id = store_with_order()
    result = normalise(
        delivery(store.history[[e.topic for e in store.history].index("orders/create")])
    )
    assert result.emitted == ["created"]
    [output] = result.outputs
    assert output.stream == "orders"
    assert output.key == f"shopify-{order_id}"
    value = output.value
    assert value["source"] == "shopify"
    assert value["accepted_upstream"] is True
    assert value["lines"] == [{"sku": "TEE-S", "quantity": 2}, {"sku": "TEE-M", "quantity": 1}]
    assert value["currency"] == "EUR"
    assert value["total_price"] == "59.70"
    assert value["customer"]["email"] == "ada@example.com"
    assert value["customer"]["id"] == str(store.orders[order_id]["customer"]["id"])


def test_lifecycle_events_follow_the_snapshot_and_are_emitted_once() -> None:
    store, order_id = store_with_order()
    store.pay(order_id)
    store.fulfill(order_id)
    fulfilled = delivery(last(store, "orders/fulfilled"))
    first = normalise(fulfilled)
    assert [(o.stream, o.value.get("event")) for o in first.outputs] == [
        ("orders", None),
        ("order.events", "paid"),
        ("order.events", "fulfilled"),
    ]
    assert all(isinstance(o.value.get("version", 0), int) for o in first.outputs)
    again = normalise(fulfilled, frozenset(first.emitted))
    assert again.outputs == []


def test_refund_and_cancel_map_to_their_events() -> None:
    store, order_id = store_with_order()
    store.pay(order_id)
    store.refund(order_id)
    refund = normalise(delivery(last(store, "refunds/create"))).outputs[0]
    assert refund == Output(
        "order.events",
        f"shopify-{order_id}",
        {
            "order_id": f"shopify-{order_id}",
            "event": "partially_refunded",
            "at": refund.value["at"],
            "lines": [{"sku": "TEE-S", "quantity": 2}, {"sku": "TEE-M", "quantity": 1}],
        },
    )
    snapshot = normalise(delivery(last(store, "orders/updated")), frozenset({"created", "paid"}))
    assert [o.value["event"] for o in snapshot.outputs] == ["refunded"]
    other = store.place_order([("TEE-S", 1)])
    store.cancel(other)
    cancelled = normalise(delivery(last(store, "orders/cancelled")), frozenset({"created"}))
    assert [o.value["event"] for o in cancelled.outputs] == ["cancelled"]


def test_an_order_without_lines_is_refused() -> None:
    store, _ = store_with_order()
    event = last(store, "orders/create")
    payload = {**event.payload, "line_items": []}
    with pytest.raises(InvalidInput, match="no line"):
        normalise(delivery(WebhookEvent(event.topic, payload, event.event_id, event.triggered_at)))


def test_empty_sku_falls_back_to_the_variant() -> None:
    store, _ = store_with_order()
    event = last(store, "orders/create")
    lines = [{**line, "sku": ""} for line in event.payload["line_items"]]
    changed = WebhookEvent(event.topic, {**event.payload, "line_items": lines}, "e", "t")
    value = normalise(delivery(changed)).outputs[0].value
    assert value["lines"][0]["sku"] == f"shopify-variant-{lines[0]['variant_id']}"


def test_products_become_catalog_changes_and_sku_mappings() -> None:
    store = SimulatedStore()
    product = store.add_product("Mug", ["MUG-1", "MUG-2"])
    outputs = normalise(delivery(store.history[0])).outputs
    catalog, *mappings = outputs
    assert catalog.stream == "catalog"
    assert catalog.key == str(product["id"])
    assert [v["sku"] for v in catalog.value["variants"]] == ["MUG-1", "MUG-2"]
    assert [(m.stream, m.value["sku"]) for m in mappings] == [
        ("inventory_items", "MUG-1"),
        ("inventory_items", "MUG-2"),
    ]
    item = product["variants"][0]["inventory_item_id"]
    assert mappings[0].key == f"{SHOP}/inventory_item/{item}"
    deleted = WebhookEvent("products/delete", {"id": product["id"]}, "e2", "2026-11-25T10:00:00Z")
    [tombstone] = normalise(delivery(deleted)).outputs
    assert tombstone.value["deleted"] is True
    first = apply_catalog_change(None, catalog.value)
    assert apply_catalog_change(first, tombstone.value)["version"] == first["version"] + 1


def test_levels_are_parked_until_the_mapping_arrives_then_released() -> None:
    level = {"kind": "level", "inventory_item_id": "3", "location": "L1", "on_hand": 4}
    level2 = {**level, "location": "L2", "on_hand": 1}
    state, out = apply_item_message(None, {**level, "updated_at": "2026-11-25T10:00:00Z"})
    assert out == []
    state, out = apply_item_message(state, {**level2, "updated_at": "2026-11-25T10:00:00Z"})
    older = {**level, "on_hand": 99, "updated_at": "2026-11-25T09:00:00Z"}
    state, out = apply_item_message(state, older)
    assert out == [] and state["parked"]["L1"]["on_hand"] == 4
    mapping = {"kind": "mapping", "sku": "SKU-3", "updated_at": "2026-11-25T08:00:00Z"}
    state, out = apply_item_message(state, mapping)
    assert sorted((e["sku"], e["location"], e["on_hand"]) for e in out) == [
        ("SKU-3", "L1", 4),
        ("SKU-3", "L2", 1),
    ]
    assert state["parked"] == {}
    state, out = apply_item_message(state, {**level, "on_hand": 2, "updated_at": "x"})
    assert out == [{"sku": "SKU-3", "on_hand": 2, "location": "L1", "updated_at": "x"}]


def test_duplicates_by_webhook_id_or_event_id_are_dropped_within_the_window() -> None:
    store, _ = store_with_order()
    event = last(store, "orders/create")
    verdict, state = admit(None, delivery(event, "wh-1"), WINDOW)
    assert verdict is Verdict.FRESH
    assert admit(state, delivery(event, "wh-1", at=2000.0), WINDOW)[0] is Verdict.DUPLICATE
    # another subscription delivering the same event: new webhook id, same event id
    assert admit(state, delivery(event, "wh-2"), WINDOW)[0] is Verdict.DUPLICATE
    # after the window a retry is no longer remembered (Shopify stops retrying after ~4 h)
    later = admit(state, delivery(event, "wh-1", at=1000.0 + WINDOW + 1), WINDOW)
    assert later[0] is not Verdict.DUPLICATE


def test_a_stale_retry_never_overwrites_newer_state() -> None:
    store, order_id = store_with_order()
    store.pay(order_id)
    created, paid = last(store, "orders/create"), last(store, "orders/paid")
    _, state = admit(None, delivery(paid), WINDOW)
    verdict, state = admit(state, delivery(created), WINDOW)
    assert verdict is Verdict.STALE
    # levels are judged per location, so an older level elsewhere is not stale
    level = {"inventory_item_id": 1, "location_id": 1, "available": 1}
    new = WebhookEvent(
        "inventory_levels/update", {**level, "updated_at": "2026-11-25T10:00:00Z"}, "a", "t"
    )
    old_other = WebhookEvent(
        "inventory_levels/update",
        {**level, "location_id": 2, "updated_at": "2026-11-25T09:00:00Z"},
        "b",
        "t",
    )
    _, state = admit(None, delivery(new), WINDOW)
    assert admit(state, delivery(old_other), WINDOW)[0] is Verdict.FRESH


def replay(events: list[Delivery]) -> dict[str, list[Any]]:
    """Apply deliveries through admit + normalise; collect what each stream received."""
    states: dict[str, Any] = {}
    published: dict[str, list[Any]] = {}
    for item in events:
        key = resource_key(item.topic, item.shop, item.payload)
        verdict, new = admit(states.get(key), item, WINDOW)
        if verdict is Verdict.FRESH:
            emitted = frozenset((states.get(key) or {}).get("emitted", ()))
            result = normalise(item, emitted)
            new["emitted"] = sorted(emitted | set(result.emitted))
            for output in result.outputs:
                published.setdefault(f"{output.stream}:{output.key}", []).append(output.value)
        states[key] = new
    return published


def final_order_events(published: dict[str, list[Any]]) -> dict[str, set[str]]:
    return {
        key: {value["event"] for value in values}
        for key, values in published.items()
        if key.startswith("order.events:")
    }


def test_shuffled_duplicated_history_means_the_same_events_as_the_ordered_one() -> None:
    store, order_id = store_with_order()
    store.pay(order_id)
    store.fulfill(order_id)
    second = store.place_order([("TEE-M", 1)])
    store.pay(second)
    store.cancel(second)
    ordered = [delivery(event) for event in store.history]
    shuffled = ordered + random.Random(7).sample(ordered, k=len(ordered) // 2)
    random.Random(11).shuffle(shuffled)
    assert final_order_events(replay(shuffled)) == final_order_events(replay(ordered))
    orders_once = replay(shuffled)
    assert all(len(v) == 1 for k, v in orders_once.items() if k.startswith("orders:"))


def test_customers_redact_makes_one_job_per_order_and_shop_redact_broadcasts() -> None:
    store, order_id = store_with_order()
    store.redact_customer([order_id])
    [job] = normalise(delivery(last(store, "customers/redact"))).outputs
    assert (job.stream, job.key, job.value["kind"]) == (
        "redactions",
        f"shopify-{order_id}",
        "redact",
    )
    shop = WebhookEvent("shop/redact", {"shop_id": 1, "shop_domain": SHOP}, "e", "t")
    [broadcast] = normalise(delivery(shop)).outputs
    assert broadcast.key == "*"
    assert broadcast.value == {"kind": "redact_shop", "shop": SHOP, "requested_at": "t"}


def test_redacted_view_drops_personal_data_with_a_higher_version() -> None:
    view = {"order_id": "o", "version": 3, "customer": {"email": "a@b"}, "status": "paid"}
    cleaned = redacted(view, "2026-11-25T10:00:00+00:00")
    assert cleaned is not None
    assert cleaned["customer"] is None
    assert cleaned["version"] == 4
    assert cleaned["status"] == "paid"
    assert redacted(cleaned, "later") is None
