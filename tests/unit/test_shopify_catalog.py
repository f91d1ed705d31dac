"""``shopify.catalog``: what a product change must hold, and what the catalog agent does with one.

The pure validator (:func:`read_catalog_change`) against the documents the normaliser
builds from Shopify's product webhooks and against the poison the fault suite publishes;
its declared JSON Schema agrees with it; and ``update_catalog``'s step stores what it
accepts and dead-letters (with origin, reason and count) what it refuses.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

from cartloom.agents import shopify as shopify_agent
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.schemas import json_schema
from cartloom.domain.shopify.catalog import (
    CATALOG_CHANGE,
    SHOPIFY_TEXT_MAX_LEN,
    read_catalog_change,
)
from cartloom.domain.shopify.normalise import Delivery, normalise
from devstack.shopify_store import SimulatedStore

SHOP = "cartloom-sim.myshopify.com"
PRODUCT, DELETION = CATALOG_CHANGE.examples
SCHEMA = Draft202012Validator(json_schema(CATALOG_CHANGE))


def product_webhook(topic: str = "products/create", **changes: Any) -> Delivery:
    store = SimulatedStore()
    payload = {**store.add_product("Mug", ["MUG-1", "MUG-2"]), **changes}
    return Delivery(topic, SHOP, "wh-1", "ev-1", "2026-11-25T10:00:00Z", 1000.0, payload)


def refusal(message: dict[str, Any], key: str | None = None) -> RejectReason | None:
    try:
        read_catalog_change(message, key=key)
    except InvalidInput as exc:
        return exc.reason
    return None


def variant(**changes: Any) -> dict[str, Any]:
    return {**PRODUCT["variants"][0], **changes}


def test_what_the_normaliser_publishes_is_what_the_catalog_stores() -> None:
    delivery = product_webhook()
    [change, *_] = normalise(delivery).outputs
    assert read_catalog_change(change.value, key=change.key) == change.value
    assert [v["sku"] for v in change.value["variants"]] == ["MUG-1", "MUG-2"]
    item_ids = [str(v["inventory_item_id"]) for v in delivery.payload["variants"]]
    assert [v["inventory_item_id"] for v in change.value["variants"]] == item_ids
    at = "2026-11-25T11:00:00Z"
    deletion = Delivery("products/delete", SHOP, "wh-2", "ev-2", at, 0.0, {"id": 7})
    [marker] = normalise(deletion).outputs
    assert marker.value == {
        "product_id": "7",
        "shop": SHOP,
        "deleted": True,
        "updated_at": at,
    }
    assert read_catalog_change(marker.value, key="7") == marker.value


def test_the_examples_are_read_back_as_they_are_and_fit_the_schema() -> None:
    for example in (PRODUCT, DELETION):
        assert read_catalog_change(example, key=example["product_id"]) == example
        assert SCHEMA.is_valid(example)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({**PRODUCT, "product_type": "", "vendor": " "}, id="blank-shopify-text"),
        pytest.param({**PRODUCT, "variants": []}, id="no-variants"),
        pytest.param({**PRODUCT, "variants": [variant(inventory_item_id=None)]}, id="no-item"),
        pytest.param({**PRODUCT, "variants": [variant(price=19.9)]}, id="price-as-number"),
        pytest.param({**PRODUCT, "title": None, "updated_at": None}, id="nulls"),
        pytest.param({**DELETION, "updated_at": None}, id="deletion-at-unknown-time"),
    ],
)
def test_what_shopify_may_send_is_accepted(message: dict[str, Any]) -> None:
    assert refusal(message, key=message["product_id"]) is None
    assert SCHEMA.is_valid(message)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"chaos": "wrong schema", "n": [1, 2, 3]}, id="poison-schema"),
        pytest.param({"chaos": "x" * 1000}, id="poison-oversized"),
        pytest.param({k: v for k, v in PRODUCT.items() if k != "product_id"}, id="no-id"),
        pytest.param({**PRODUCT, "product_id": 8123}, id="id-not-text"),
        pytest.param({k: v for k, v in PRODUCT.items() if k != "shop"}, id="no-shop"),
        pytest.param({k: v for k, v in PRODUCT.items() if k != "deleted"}, id="no-deleted"),
        pytest.param({**PRODUCT, "deleted": "false"}, id="deleted-not-boolean"),
        pytest.param({k: v for k, v in PRODUCT.items() if k != "variants"}, id="no-variants"),
        pytest.param({**PRODUCT, "variants": None}, id="null-variants"),
        pytest.param({**PRODUCT, "variants": {"sku": "MUG-RED"}}, id="variants-not-list"),
        pytest.param({**PRODUCT, "variants": ["MUG-RED"]}, id="variant-not-object"),
        pytest.param({**PRODUCT, "variants": [variant(sku=None)]}, id="variant-no-sku"),
        pytest.param({**PRODUCT, "variants": [variant(sku=" ")]}, id="variant-blank-sku"),
        pytest.param({**PRODUCT, "variants": [variant(variant_id=None)]}, id="variant-no-id"),
        pytest.param(
            {**PRODUCT, "variants": [variant(inventory_item_id=8125)]}, id="item-not-text"
        ),
        pytest.param({**PRODUCT, "title": {"en": "Mug"}}, id="title-not-text"),
        pytest.param({**PRODUCT, "title": "x" * (SHOPIFY_TEXT_MAX_LEN + 1)}, id="title-too-long"),
        pytest.param({**PRODUCT, "updated_at": "2026-11-25T09:00:00"}, id="time-without-zone"),
    ],
)
def test_a_change_that_is_not_a_product_is_refused(message: dict[str, Any]) -> None:
    assert refusal(message) is RejectReason.INVALID_SCHEMA
    assert not SCHEMA.is_valid(message)


def test_a_change_under_another_key_is_refused() -> None:
    assert refusal(PRODUCT, key="9999") is RejectReason.KEY_MISMATCH
    assert refusal(PRODUCT, key="") is RejectReason.KEY_MISMATCH


def test_only_the_declared_fields_are_stored() -> None:
    stuffed = {**PRODUCT, "chaos": "x" * 1000, "variants": [variant(body_html="<p>x</p>")]}
    stored = read_catalog_change(stuffed)
    assert "chaos" not in stored
    assert stored["variants"] == PRODUCT["variants"]
    partial = {k: v for k, v in PRODUCT.items() if k not in {"handle", "vendor"}}
    assert read_catalog_change(partial) == {**PRODUCT, "handle": None, "vendor": None}
    assert read_catalog_change({**DELETION, "variants": PRODUCT["variants"]}) == DELETION


def test_a_webhook_whose_product_would_be_refused_is_refused_whole() -> None:
    with pytest.raises(InvalidInput, match="title"):
        normalise(product_webhook("products/update", title=["not", "text"]))
    with pytest.raises(InvalidInput, match="updated_at"):
        normalise(product_webhook("products/update", updated_at="yesterday"))


# -- the agent's step: stored, or dead-lettered with origin, reason and count -----------


class DeadLetters:
    """Stands in for ``shopify.webhooks.dlq``: records what is sent, acknowledges it."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

    async def send(self, *, key: bytes | None, value: bytes | None, headers: Any) -> Any:
        self.sent.append((key, value, dict(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def catalog_event(key: bytes, value: bytes, offset: int) -> Any:
    message = SimpleNamespace(
        topic="shopify.catalog",
        partition=3,
        offset=offset,
        tp=("shopify.catalog", 3),
        key=key,
        value=value,
        headers=[],
        timestamp=0.0,
    )
    return SimpleNamespace(key=key, value=value, message=message)


def counted(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], DeadLetters]:
    products: dict[str, Any] = {}
    letters = DeadLetters()
    monkeypatch.setattr(shopify_agent, "product_by_id", products)
    monkeypatch.setattr(shopify_agent, "shopify_webhooks_dlq_topic", letters)
    return products, letters


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x00\xff\xfe poison \x80\x81 not json", id="bytes"),
        pytest.param(orjson.dumps({"chaos": "wrong schema", "n": [1, 2, 3]}), id="schema"),
        pytest.param(orjson.dumps({"chaos": "x" * 1_000_000}), id="oversized"),
        pytest.param(orjson.dumps({**PRODUCT, "product_id": "1"}), id="key-mismatch"),
    ],
)
async def test_the_catalog_agent_dead_letters_what_it_refuses(
    agent: tuple[dict[str, Any], DeadLetters], value: bytes
) -> None:
    products, letters = agent
    dead = {"topic": "shopify.catalog", "reason": "invalid_payload"}
    processed = {"topic": "products", "outcome": "dead_letter"}
    before = counted("cartloom_dead_letters_total", dead)
    processed_before = counted("cartloom_shopify_webhooks_processed_total", processed)
    event = catalog_event(b"poison-1", value, offset=41)
    await shopify_agent.guarded(event, "products", shopify_agent.store_product)
    assert products == {}
    [(key, sent, headers)] = letters.sent
    assert (key, sent) == (b"poison-1", value)
    assert headers["cartloom-origin-topic"] == b"shopify.catalog"
    assert headers["cartloom-origin-partition"] == b"3"
    assert headers["cartloom-origin-offset"] == b"41"
    assert headers["cartloom-reason"] == b"invalid_payload"
    assert headers["cartloom-detail"]
    assert counted("cartloom_dead_letters_total", dead) == before + 1
    assert counted("cartloom_shopify_webhooks_processed_total", processed) == processed_before + 1


async def test_the_catalog_agent_stores_a_product_with_the_next_version(
    agent: tuple[dict[str, Any], DeadLetters],
) -> None:
    products, letters = agent
    key = PRODUCT["product_id"].encode()
    await shopify_agent.guarded(
        catalog_event(key, orjson.dumps(PRODUCT), 1), "products", shopify_agent.store_product
    )
    await shopify_agent.guarded(
        catalog_event(key, orjson.dumps(DELETION), 2), "products", shopify_agent.store_product
    )
    assert letters.sent == []
    assert products == {PRODUCT["product_id"]: {**DELETION, "version": 2}}
