"""The OpenAPI document a worker serves, held to that worker's real answers.

The session worker serves ``GET /openapi.json``; it must be the document the code
generates. Then every path the document lists is called, and each answer (the public
views of an order, a rejected order, a SKU's stock, a product and its deletion marker, and
the refusals: 400, 404, 503, the webhook's 401 and 413) is checked against the document:
the status is documented for the operation, the content type too, the body validates
against the response's schema (closed for the views: a field the document does not list,
such as the saga's bookkeeping, fails it) and required headers are there. The queries'
401 is checked by tests/integration/test_live_queries.py, whose workers have a token.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.domain.public_views import ORDER, PRODUCT, STOCK
from cartloom.web.openapi import DOCUMENT_PATH, openapi_document
from tests.harness import WorkerProcess, eventually
from tests.integration.openapi_check import ApiDocument

pytestmark = pytest.mark.integration

ORDER_BOOKKEEPING = (
    "deferred",
    "recent_events",
    "last_event_version",
    "last_event_at",
    "deadline_at",
)
STOCK_BOOKKEEPING = ("level_at", "source_offset", "recent_adjustments", "command_offset")


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def api(worker: WorkerProcess, http: aiohttp.ClientSession) -> ApiDocument:
    """The document as the worker serves it: the generated one, checked against itself."""
    async with http.get(f"{worker.url}{DOCUMENT_PATH}") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        served = await resp.json()
    assert served == openapi_document()
    document = ApiDocument(served)
    document.check(DOCUMENT_PATH, "get", 200, "application/json", {}, orjson.dumps(served))
    return document


async def get(
    api: ApiDocument,
    http: aiohttp.ClientSession,
    worker: WorkerProcess,
    template: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """``GET path`` checked against ``template``'s documented answers."""
    async with http.get(f"{worker.url}{path}", headers=worker.auth | (headers or {})) as resp:
        return await api.answer(template, resp)


def now() -> str:
    return datetime.now(UTC).isoformat()


async def test_the_public_views_a_worker_answers_match_the_document(
    worker: WorkerProcess, api: ApiDocument, http: aiohttp.ClientSession, producer: AIOKafkaProducer
) -> None:
    run = uuid.uuid4().hex[:8]
    sku, bare_sku = f"SKU-OA-{run}", f"SKU-OA-NONE-{run}"
    level = {"sku": sku, "on_hand": 5, "location": "berlin-1", "updated_at": now()}
    await producer.send_and_wait("inventory", orjson.dumps(level), key=sku.encode())

    async def stocked() -> Any:
        status, body = await get(api, http, worker, "/inventory/{sku}", f"/inventory/{sku}")
        return body if status == 200 else None

    await eventually(stocked, timeout=90, what=f"stock of {sku}")

    order_id, rejected_id = f"oa-{run}", f"oa-rejected-{run}"
    for key, line_sku in ((order_id, sku), (rejected_id, bare_sku)):
        order = {
            "order_id": key,
            "source": "web",
            "created_at": now(),
            "lines": [{"sku": line_sku, "quantity": 2}],
            "currency": "EUR",
            "total_price": "12.50",
            "customer": {"id": 1, "email": "oa@example.com"},
        }
        await producer.send_and_wait("orders", orjson.dumps(order), key=key.encode())

    async def status_of(key: str, wanted: str) -> Any:
        status, body = await get(api, http, worker, "/orders/{order_id}", f"/orders/{key}")
        return body if status == 200 and body["status"] == wanted else None

    reserved = await eventually(
        lambda: status_of(order_id, "reserved"), timeout=90, what="reserved"
    )
    assert list(reserved) == list(ORDER.names)
    assert not set(ORDER_BOOKKEEPING) & set(reserved)
    assert reserved["reservations"][0]["granted"] == 2
    assert reserved["expires_at"] is not None

    event = {"order_id": order_id, "event": "paid", "at": now()}
    await producer.send_and_wait("order.events", orjson.dumps(event), key=order_id.encode())
    path = f"/orders/{order_id}?min_version={reserved['version'] + 1}"
    status, paid = await get(api, http, worker, "/orders/{order_id}", path)
    assert (status, paid["status"]) == (200, "paid")

    rejected = await eventually(
        lambda: status_of(rejected_id, "rejected"), timeout=90, what="rejected"
    )
    assert rejected["rejection"]["reason"] == "insufficient_stock"

    status, stock = await get(api, http, worker, "/inventory/{sku}", f"/inventory/{sku}")
    assert status == 200
    assert list(stock) == list(STOCK.names)
    assert not set(STOCK_BOOKKEEPING) & set(stock)
    assert (stock["on_hand"], stock["reserved"], stock["locations"]) == (5, 2, {"berlin-1": 5})

    product_id = str(uuid.uuid4().int % 10**12)
    shop = "oa.myshopify.com"
    change = {
        "product_id": product_id,
        "shop": shop,
        "deleted": False,
        "title": "Tee",
        "handle": "tee",
        "status": "active",
        "vendor": "CartLoom",
        "product_type": "",
        "updated_at": now(),
        "variants": [
            {"variant_id": "1", "sku": sku, "title": "M", "price": "9.90", "inventory_item_id": "2"}
        ],
    }
    deletion = {"product_id": product_id, "shop": shop, "deleted": True, "updated_at": now()}
    for version, value in ((1, change), (2, deletion)):
        await producer.send_and_wait(
            "shopify.catalog", orjson.dumps(value), key=product_id.encode()
        )

        async def stored(version: int = version) -> Any:
            status, body = await get(
                api, http, worker, "/products/{product_id}", f"/products/{product_id}"
            )
            return body if status == 200 and body["version"] == version else None

        product = await eventually(stored, timeout=90, what=f"product version {version}")
        assert list(product) == list(PRODUCT.names)
        assert product["deleted"] is (version == 2)


async def test_every_path_of_the_document_answers_as_documented(
    worker: WorkerProcess, api: ApiDocument, http: aiohttp.ClientSession
) -> None:
    missing = f"oa-missing-{uuid.uuid4().hex}"
    for template, collection in (
        ("/orders/{order_id}", "orders"),
        ("/inventory/{sku}", "inventory"),
        ("/products/{product_id}", "products"),
    ):
        assert (await get(api, http, worker, template, f"/{collection}/{missing}"))[0] == 404
        answer = await get(api, http, worker, template, f"/{collection}/x?min_version=soon")
        assert answer[0] == 400
    # Version 3 of an order that never comes: a bounded wait, then 503 (Retry-After).
    status, body = await get(
        api, http, worker, "/orders/{order_id}", f"/orders/{missing}?min_version=3"
    )
    assert (status, body["error"], body["version"]) == (503, "version not reached", None)

    # The session worker has no webhook secret: an unsigned delivery is 401, a large one 413.
    webhook = f"{worker.url}/webhooks/shopify"
    headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create"}
    async with http.post(webhook, data=b"{}", headers=headers) as resp:
        assert (await api.answer("/webhooks/shopify", resp))[0] == 401
    async with http.post(webhook, data=io.BytesIO(b"x" * (1_048_576 + 1)), headers=headers) as resp:
        assert (await api.answer("/webhooks/shopify", resp))[0] == 413

    async def ready() -> bool:
        return (await get(api, http, worker, "/readyz", "/readyz"))[0] == 200

    await eventually(ready, what="/readyz 200")
    assert await get(api, http, worker, "/healthz", "/healthz") == (200, {"status": "ok"})
    status, metrics = await get(api, http, worker, "/metrics", "/metrics")
    assert status == 200 and "cartloom_live_queries_total" in metrics
    status, index = await get(api, http, worker, "/schemas", "/schemas")
    assert status == 200
    for topic in index["schemas"]:
        template = "/schemas/{topic}.json"
        assert (await get(api, http, worker, template, f"/schemas/{topic}.json"))[0] == 200
    assert (await get(api, http, worker, template, "/schemas/orders.dlq.json"))[0] == 404

    called = {(path, method) for path, method, _ in api.checked}
    documented = {
        (path, method)
        for path, operations in api.document["paths"].items()
        for method in operations
    }
    assert documented <= called, f"never called: {sorted(documented - called)}"
