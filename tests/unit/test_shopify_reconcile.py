"""Reconciliation rules on GraphQL-shaped nodes, and the co-partitioning the agents rely on."""

from __future__ import annotations

from typing import Any

from cartloom.domain.shopify.reconcile import (
    inventory_corrections,
    known_events,
    order_corrections,
    order_payload,
)
from devstack.shopify_simulator import item_node, order_node
from devstack.shopify_store import SimulatedStore, gid

SHOP = "cartloom-sim.myshopify.com"


def paid_and_fulfilled() -> tuple[SimulatedStore, dict[str, Any]]:
    store = SimulatedStore()
    store.add_product("Tee", ["TEE-S"], stock=5)
    order_id = store.place_order([("TEE-S", 2)])
    store.pay(order_id)
    store.fulfill(order_id)
    return store, order_node(store.orders[order_id])


def test_graphql_order_reads_back_in_webhook_shape() -> None:
    store, node = paid_and_fulfilled()
    payload = order_payload(node)
    order = next(iter(store.orders.values()))
    assert payload["id"] == order["id"]
    assert payload["financial_status"] == "paid"
    assert payload["fulfillment_status"] == "fulfilled"
    assert payload["total_price"] == order["total_price"]
    assert payload["line_items"][0]["sku"] == "TEE-S"


def test_a_missing_order_is_recreated_with_its_lifecycle() -> None:
    _, node = paid_and_fulfilled()
    outputs = order_corrections(SHOP, node, None)
    assert [(o.stream, o.value.get("event")) for o in outputs] == [
        ("orders", None),
        ("order.events", "paid"),
        ("order.events", "fulfilled"),
    ]


def test_an_order_behind_gets_only_what_it_misses_and_one_in_step_gets_nothing() -> None:
    _, node = paid_and_fulfilled()
    behind = {"status": "paid", "history": [{"status": "received"}, {"status": "paid"}]}
    assert [o.value["event"] for o in order_corrections(SHOP, node, behind)] == ["fulfilled"]
    in_step = {"status": "fulfilled", "history": [{"status": "received"}]}
    assert known_events(in_step) >= {"paid", "fulfilled"}
    assert order_corrections(SHOP, node, in_step) == []


def test_stock_that_differs_is_corrected_with_the_units_counted() -> None:
    store = SimulatedStore()
    store.add_product("Mug", ["MUG-1"], stock=7)
    item_id = store.item_for_sku("MUG-1")
    node = item_node(item_id, store.items[item_id], gid("Location", store.location_id))
    location = str(store.location_id)
    outputs, units = inventory_corrections(node, {"on_hand": 4, "locations": {location: 4}})
    assert units == 3
    assert [(o.stream, o.key, o.value["on_hand"], o.value["location"]) for o in outputs] == [
        ("inventory", "MUG-1", 7, location)
    ]
    assert inventory_corrections(node, {"on_hand": 7, "locations": {location: 7}}) == ([], 0)
    missing, units = inventory_corrections(node, None)
    assert len(missing) == 1 and units == 7


def test_privacy_jobs_run_where_the_order_lives() -> None:
    from cartloom.stream.app import topology

    assert topology.topic("shopify.redactions").partitions == topology.topic("orders").partitions
    assert topology.tables["product_by_id"].source == "shopify.catalog"
    assert topology.tables["product_by_id"].entity == "products"
    assert topology.tables["sku_by_inventory_item"].source == "shopify.inventory_items"
    assert topology.tables["shopify_delivery_by_resource"].source == "shopify.webhooks"
