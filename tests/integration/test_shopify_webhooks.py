"""Shopify webhooks on real servers: statuses, durable enqueue, normalisation, privacy.

The ``shopify_worker`` fixture is a worker of its own (app id ``cartloom-shopify``, so its
consumer groups and tables are separate from the shared worker's) with a webhook secret
and a small body limit. The
tests deliver signed webhooks over HTTP as Shopify would and read Kafka, DynamoDB and
Redis with their own clients.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from cartloom.shopify.signatures import sign
from devstack.shopify_store import SimulatedStore, WebhookEvent
from devstack.webhook_deliveries import DeliveryPlan, SignedDelivery, post, signed
from tests.harness import WorkerProcess, eventually
from tests.integration.conftest import SHOPIFY_MAX_BYTES, SHOPIFY_SECRET
from tests.integration.shopify_helpers import TopicReader

pytestmark = pytest.mark.integration

SECRET = SHOPIFY_SECRET
MAX_BYTES = SHOPIFY_MAX_BYTES


def url(worker: WorkerProcess) -> str:
    return f"{worker.url}/webhooks/shopify"


def new_store(prefix: str = "") -> tuple[SimulatedStore, str]:
    """A store whose ids, SKUs and domain no other test uses."""
    tag = uuid.uuid4().hex[:8]
    store = SimulatedStore(
        domain=f"shop-{prefix}{tag}.myshopify.com", first_id=int(tag, 16) * 10_000
    )
    return store, tag


async def deliver(worker: WorkerProcess, deliveries: list[SignedDelivery]) -> list[int]:
    async with aiohttp.ClientSession() as http:
        return [await post(http, url(worker), d) for d in deliveries]


@pytest.fixture(params=["worker", "ingress"])
def receiver_server(
    request: pytest.FixtureRequest, shopify_worker: WorkerProcess, ingress: WorkerProcess
) -> WorkerProcess:
    """A worker's receiver, then ``cartloom shopify ingress``: the same contract for both."""
    return shopify_worker if request.param == "worker" else ingress


async def test_statuses_forged_malformed_oversized_duplicate(
    receiver_server: WorkerProcess, bootstrap: str
) -> None:
    server = receiver_server
    store, _ = new_store()
    store.add_product("Status Tee", ["ST-1"])
    good = signed(store.history[0], store.domain, SECRET)

    def resigned(body: bytes, secret: str = SECRET) -> SignedDelivery:
        return SignedDelivery(body, {**good.headers, "X-Shopify-Hmac-Sha256": sign(body, secret)})

    unsigned = SignedDelivery(good.body, {k: v for k, v in good.headers.items() if "Hmac" not in k})
    tampered = SignedDelivery(good.body.replace(b"Status", b"Evil!!"), good.headers)
    huge = orjson.dumps({"id": 1, "title": "x" * MAX_BYTES})
    cases = [
        (resigned(good.body, "not-the-secret"), 401),
        (unsigned, 401),
        (tampered, 401),
        (resigned(b"{not json"), 400),
        (resigned(b'["an array"]'), 400),
        (resigned(b'{"title": "no id"}'), 400),
        (resigned(huge), 413),
        (good, 200),
        (good, 200),  # a retry of the same delivery
        (resigned(good.body, "retired-secret"), 200),  # rotation: both secrets valid
    ]
    statuses = await deliver(server, [delivery for delivery, _ in cases])
    assert statuses == [status for _, status in cases]

    key = f"{store.domain}/product/{store.history[0].payload['id']}".encode()
    async with TopicReader(bootstrap, "shopify.webhooks", {key}) as reader:
        records = await reader.until(lambda r: len(r) >= 3, "accepted deliveries")
        await reader.poll()
    assert len(records) == 3  # each accepted delivery was in Kafka before its 200
    assert all(r.value == good.body for r in records)
    headers = dict(records[0].headers)
    assert headers["x-shopify-topic"] == b"products/create"
    assert headers["x-shopify-webhook-id"] == good.webhook_id.encode()
    assert "x-shopify-hmac-sha256" not in headers


async def test_unknown_topic_is_accepted_and_dead_lettered(
    shopify_worker: WorkerProcess, bootstrap: str
) -> None:
    store, tag = new_store()
    event = WebhookEvent("carts/create", {"id": int(tag, 16)}, f"ev-{tag}", "2026-11-25T10:00:00Z")
    [status] = await deliver(shopify_worker, [signed(event, store.domain, SECRET)])
    assert status == 200
    key = f"{store.domain}/carts/create/{int(tag, 16)}".encode()
    async with TopicReader(bootstrap, "shopify.webhooks.dlq", {key}) as reader:
        copies = await reader.until(bool, "dead letter")
    # Two apps of this session (`cartloom`, `cartloom-shopify`) read the same topics, and
    # delivery is at-least-once: there may be several copies, never different ones.
    assert len({(c.value, tuple(c.headers)) for c in copies}) == 1
    dead = copies[0]
    headers = dict(dead.headers)
    assert headers["cartloom-reason"] == b"unknown_topic"
    assert headers["x-shopify-topic"] == b"carts/create"


def history(store: SimulatedStore, sku: str) -> list[int]:
    """A small store history touching every order, refund, product and inventory topic."""
    store.add_product(f"{sku} Tee", [f"{sku}-S", f"{sku}-M"], stock=5)
    first = store.place_order([(f"{sku}-S", 2), (f"{sku}-M", 1)])
    store.pay(first)
    store.fulfill(first)
    second = store.place_order([(f"{sku}-M", 1)])
    store.pay(second)
    store.refund(second)
    third = store.place_order([(f"{sku}-S", 1)])
    store.cancel(third)
    store.set_available(f"{sku}-M", 40)
    return [first, second, third]


EXPECTED_EVENTS = [
    {"paid", "fulfilled"},
    {"paid", "partially_refunded", "refunded"},
    {"cancelled"},
]


def events_by_order(reader: TopicReader, orders: list[int]) -> list[set[str]]:
    seen: dict[bytes, set[str]] = {}
    for key, value in reader.values():
        seen.setdefault(key, set()).add(value["event"])
    return [seen.get(f"shopify-{order}".encode(), set()) for order in orders]


def last_levels(reader: TopicReader) -> dict[bytes, int]:
    """The newest absolute level per SKU, as an inventory consumer would keep it."""
    newest: dict[bytes, tuple[str, int]] = {}
    for key, value in reader.values():
        if key not in newest or value["updated_at"] >= newest[key][0]:
            newest[key] = (value["updated_at"], value["on_hand"])
    return {key: level for key, (_, level) in newest.items()}


async def run_history(
    worker: WorkerProcess, bootstrap: str, plan: DeliveryPlan, sku: str
) -> tuple[SimulatedStore, list[int], list[set[str]], dict[bytes, int]]:
    store, _ = new_store(sku.lower())
    orders = history(store, sku)
    deliveries = plan.schedule([signed(e, store.domain, SECRET) for e in store.history])
    order_keys = {f"shopify-{order}".encode() for order in orders}
    skus = {f"{sku}-S".encode(), f"{sku}-M".encode()}
    async with (
        TopicReader(bootstrap, "order.events", order_keys) as events,
        TopicReader(bootstrap, "inventory", skus) as inventory,
    ):
        assert set(await deliver(worker, deliveries)) == {200}
        await events.until(
            lambda _: events_by_order(events, orders) == EXPECTED_EVENTS, "order events"
        )
        expected_levels = {f"{sku}-S".encode(): 3, f"{sku}-M".encode(): 40}
        await inventory.until(lambda _: last_levels(inventory) == expected_levels, "levels")
        return store, orders, events_by_order(events, orders), last_levels(inventory)


async def test_every_topic_flows_into_the_streams_and_tables(
    shopify_worker: WorkerProcess, bootstrap: str, redis: Redis, dynamodb: Any
) -> None:
    store, orders, events, levels = await run_history(
        shopify_worker, bootstrap, DeliveryPlan(), "FLOW"
    )
    assert events == EXPECTED_EVENTS
    assert levels == {b"FLOW-S": 3, b"FLOW-M": 40}

    keys = {f"shopify-{order}".encode() for order in orders}
    async with TopicReader(bootstrap, "orders", keys) as reader:
        await reader.until(lambda r: {x.key for x in r} == keys, "orders")
        first = dict(reader.values())[f"shopify-{orders[0]}".encode()]
    assert first["accepted_upstream"] is True
    assert first["source"] == "shopify"
    assert first["lines"] == [{"sku": "FLOW-S", "quantity": 2}, {"sku": "FLOW-M", "quantity": 1}]

    product_id = str(store.history[0].payload["id"])
    item = await eventually(
        lambda: _dynamodb_item(dynamodb, "cartloom-products", "product_id", product_id),
        what="product in DynamoDB",
    )
    assert orjson.loads(item["doc"]["S"])["title"] == "FLOW Tee"
    cached = await eventually(
        lambda: redis.hget(f"cartloom:product:{product_id}", "doc"), what="product in Redis"
    )
    assert [v["sku"] for v in orjson.loads(cached)["variants"]] == ["FLOW-S", "FLOW-M"]


async def test_shuffled_duplicated_history_ends_like_the_ordered_one(
    shopify_worker: WorkerProcess, bootstrap: str
) -> None:
    """Levels first, duplicates and retries, any order: the same events and final stock."""
    plan = DeliveryPlan(duplicate_share=0.5, shuffle=True, seed=3)
    _, _, events, levels = await run_history(shopify_worker, bootstrap, plan, "SHUF")
    assert events == EXPECTED_EVENTS
    assert levels == {b"SHUF-S": 3, b"SHUF-M": 40}


async def test_customers_redact_removes_personal_data_everywhere(
    shopify_worker: WorkerProcess, redis: Redis, dynamodb: Any, bootstrap: str
) -> None:
    store, _ = new_store("redact")
    store.add_product("Private Tee", ["PRIV-1"])
    order = store.place_order([("PRIV-1", 1)], email="grace@example.com")
    order_id = f"shopify-{order}"
    await deliver(shopify_worker, [signed(e, store.domain, SECRET) for e in store.history])
    held = await eventually(
        lambda: _dynamodb_item(dynamodb, "cartloom-orders", "order_id", order_id),
        what="order in DynamoDB",
    )
    assert "grace@example.com" in held["doc"]["S"]
    before = int(held["version"]["N"])

    store.redact_customer([order])
    [status] = await deliver(shopify_worker, [signed(store.history[-1], store.domain, SECRET)])
    assert status == 200

    async def redacted_in_dynamodb() -> Any:
        # other agents may write newer versions meanwhile (reserved...): wait for the redaction
        item = await _dynamodb_item(dynamodb, "cartloom-orders", "order_id", order_id)
        return item if item and "grace@example.com" not in item["doc"]["S"] else None

    item = await eventually(redacted_in_dynamodb, what="redacted order in DynamoDB")
    assert int(item["version"]["N"]) > before
    assert orjson.loads(item["doc"]["S"])["customer"] is None

    await personal_data_gone(shopify_worker, redis, bootstrap, order_id, "grace@example.com")


async def personal_data_gone(
    worker: WorkerProcess, redis: Redis, bootstrap: str, order_id: str, email: str
) -> None:
    """``email`` is gone from the order's Redis view, its live query and the current record
    of ``order_by_id``'s changelog (the one compaction keeps; it removes the older ones)."""

    async def redacted_in_redis() -> Any:
        doc = await redis.hget(f"cartloom:order:{order_id}", "doc")
        return doc if doc and email.encode() not in doc else None

    await eventually(redacted_in_redis, what=f"redacted order {order_id} in Redis")
    query = f"{worker.url}/orders/{order_id}"
    async with aiohttp.ClientSession() as http, http.get(query) as response:
        view = await response.json()
    assert view["customer"] is None
    assert email not in orjson.dumps(view).decode()

    changelog = "cartloom-shopify-order_by_id-changelog"
    async with TopicReader(bootstrap, changelog, {order_id.encode()}) as reader:

        def redacted_record_there(records: list[Any]) -> bool:
            return any(email.encode() not in r.value for r in records)

        records = await reader.until(redacted_record_there, "the redacted view in the changelog")
        await reader.poll()
    current = max(records, key=lambda r: orjson.loads(r.value)["version"])
    assert email.encode() not in current.value
    assert orjson.loads(current.value)["customer"] is None


async def _dynamodb_item(dynamodb: Any, table: str, key: str, value: str) -> Any:
    response = await dynamodb.get_item(
        TableName=table, Key={key: {"S": value}}, ConsistentRead=True
    )
    return response.get("Item")


async def test_shop_redact_removes_the_shops_customer_data(
    shopify_worker: WorkerProcess, dynamodb: Any, redis: Redis, bootstrap: str
) -> None:
    store, _ = new_store("shopredact")
    store.add_product("Shop Tee", ["SHOPR-1"])
    orders = [store.place_order([("SHOPR-1", 1)], email=f"c{n}@example.com") for n in range(3)]
    await deliver(shopify_worker, [signed(e, store.domain, SECRET) for e in store.history])
    for order in orders:
        await eventually(
            lambda order=order: _dynamodb_item(
                dynamodb, "cartloom-orders", "order_id", f"shopify-{order}"
            ),
            what="order in DynamoDB",
        )
    redact = WebhookEvent(
        "shop/redact",
        {"shop_id": 954889, "shop_domain": store.domain},
        f"shop-redact-{store.domain}",
        "2026-11-25T12:00:00Z",
    )
    [status] = await deliver(shopify_worker, [signed(redact, store.domain, SECRET)])
    assert status == 200

    async def all_redacted() -> bool:
        items = [
            await _dynamodb_item(dynamodb, "cartloom-orders", "order_id", f"shopify-{order}")
            for order in orders
        ]
        return all(item and "@example.com" not in item["doc"]["S"] for item in items)

    await eventually(all_redacted, timeout=90, what="every order of the shop redacted")
    for n, order in enumerate(orders):
        await personal_data_gone(
            shopify_worker, redis, bootstrap, f"shopify-{order}", f"c{n}@example.com"
        )


async def test_customers_data_request_exports_what_cartloom_holds(
    shopify_worker: WorkerProcess, bootstrap: str, dynamodb: Any
) -> None:
    store, _ = new_store("export")
    store.add_product("Export Tee", ["EXP-1"])
    order = store.place_order([("EXP-1", 1)], email="ada.export@example.com")
    await deliver(shopify_worker, [signed(e, store.domain, SECRET) for e in store.history])
    await eventually(
        lambda: _dynamodb_item(dynamodb, "cartloom-orders", "order_id", f"shopify-{order}"),
        what="order in DynamoDB",
    )
    customer = store.orders[order]["customer"]
    request = WebhookEvent(
        "customers/data_request",
        {
            "shop_id": 954889,
            "shop_domain": store.domain,
            "orders_requested": [order],
            "customer": {"id": customer["id"], "email": customer["email"], "phone": None},
            "data_request": {"id": 9999},
        },
        f"data-request-{order}",
        "2026-11-25T12:00:00Z",
    )
    [status] = await deliver(shopify_worker, [signed(request, store.domain, SECRET)])
    assert status == 200
    key = f"shopify-{order}".encode()
    async with TopicReader(bootstrap, "shopify.data_exports", {key}) as reader:
        await reader.until(bool, "data export")
        reports = [value for _, value in reader.values()]
    # Two apps of this session read the same topics and each holds the order: each may
    # export it (at-least-once too), always the same data.
    assert all({**c, "exported_at": None} == {**reports[0], "exported_at": None} for c in reports)
    report = reports[0]
    assert report["request_id"] == "9999"
    assert report["data"]["customer"]["email"] == "ada.export@example.com"


async def test_bodies_in_many_segments_and_chunked_bodies_are_read_whole(
    shopify_worker: WorkerProcess,
) -> None:
    store, _ = new_store("big")
    product = store.add_product("Big Tee", ["BIG-1"])
    big = {**product, "body_html": "<p>" + "long description " * 3_500 + "</p>"}
    event = WebhookEvent("products/update", big, "ev-big", "2026-11-25T10:00:00Z")
    large = signed(event, store.domain, SECRET)
    assert 50_000 < len(large.body) < MAX_BYTES  # arrives in many TCP segments
    huge_body = orjson.dumps({"id": 1, "title": "x" * (MAX_BYTES + 10)})
    huge_headers = {**large.headers, "X-Shopify-Hmac-Sha256": sign(huge_body, SECRET)}

    async def chunks(body: bytes) -> Any:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with aiohttp.ClientSession() as http:
        assert await post(http, url(shopify_worker), large) == 200
        statuses = []
        for body, headers in [(large.body, large.headers), (huge_body, huge_headers)]:
            async with http.post(url(shopify_worker), data=chunks(body), headers=headers) as r:
                statuses.append(r.status)
    assert statuses == [200, 413]  # chunked (no Content-Length): read to the end or the limit
