"""Live queries across two workers: every key read through both, always the active owner's value.

The two workers run in their own consumer group (app id ``cartloom-lq``), so they split
the partitions between them and each holds the other's partitions as standby copies: a
reader that answered from a standby (docs/facts.md) would show up as a wrong ``Served-By`` or
a stale value here.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.core.topology import load_topology
from cartloom.domain.schemas import INPUT_CONTRACTS
from cartloom.web.openapi import openapi_document
from cartloom.web.queries import FORWARDED_HEADER, PARTITION_HEADER, SERVED_BY_HEADER
from cartloom.web.routing import key_partition
from cartloom.web.schema_files import CHECKOUT_DIR, file_name
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, first_answers, start_worker, wait_ready
from tests.integration.openapi_check import ApiDocument

pytestmark = pytest.mark.integration

TOKEN = "lq-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LQ_ENV = {
    "CARTLOOM_APP_ID": "cartloom-lq",
    "CARTLOOM_SINKS_ENABLED": "false",
    "CARTLOOM_API_TOKEN": TOKEN,
    "CARTLOOM_QUERY_WAIT_MAX_SECONDS": "2",
    "CARTLOOM_WEB_HEADER_TIMEOUT_SECONDS": "3",
    "CARTLOOM_WEB_MAX_CONNECTIONS": "30",
}
ORDER_PARTITIONS = load_topology(None).table_partitions("order_by_id")


async def readyz(worker: WorkerProcess) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/readyz") as resp:
            body: dict[str, Any] = await resp.json()
            return body if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


@pytest.fixture(scope="module")
async def pair(stack: StackState, stack_dir: Path) -> AsyncIterator[list[WorkerProcess]]:
    """Two workers of one group, both ready and each holding some active partitions."""
    env = {**LQ_ENV, "CARTLOOM_PROMETHEUS_TARGETS_DIR": str(stack_dir / "lq-targets")}
    first = start_worker(stack.env, stack_dir, "lq-1", extra_env=env)
    workers = [first]
    try:
        await wait_ready(first)
        second = start_worker(stack.env, stack_dir, "lq-2", extra_env=env)
        workers.append(second)
        await wait_ready(second)

        async def split() -> bool:
            reports = [await readyz(w) for w in workers]
            return all(r is not None and r["active_partitions"] > 0 for r in reports)

        await eventually(split, timeout=120, what="both workers own active partitions")
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def order(order_id: str, sku: str, quantity: int = 1) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "source": "pos",
            "created_at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": sku, "quantity": quantity}],
        }
    )


def paid(order_id: str) -> bytes:
    return orjson.dumps(
        {"order_id": order_id, "event": "paid", "at": datetime.now(UTC).isoformat()}
    )


async def query(
    worker: WorkerProcess, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{worker.url}{path}", headers=AUTH if headers is None else headers) as resp,
    ):
        return resp.status, await resp.json(), dict(resp.headers)


async def stable_read(worker: WorkerProcess, path: str) -> tuple[int, Any, dict[str, str]]:
    """A read that retries only the documented 503 + Retry-After (ownership moving)."""

    async def attempt() -> tuple[int, Any, dict[str, str]] | None:
        answer = await query(worker, path)
        return None if answer[0] == 503 else answer

    return await eventually(attempt, timeout=60, what=f"non-503 answer to {path}")


async def read_both(pair: list[WorkerProcess], path: str) -> tuple[Any, str]:
    """Read ``path`` through both workers; both must return the same owner's same value."""
    answers = [await stable_read(worker, path) for worker in pair]
    for status, _, _ in answers:
        assert status == 200, answers
    assert answers[0][1] == answers[1][1], f"{path}: the two workers disagree: {answers}"
    served_by = {headers[SERVED_BY_HEADER] for _, _, headers in answers}
    assert len(served_by) == 1, f"{path} answered by two different workers: {served_by}"
    return answers[0][1], served_by.pop()


async def test_every_key_reads_the_owners_value_through_both_workers(
    pair: list[WorkerProcess], producer: AIOKafkaProducer
) -> None:
    run = uuid.uuid4().hex[:8]
    sku = f"SKU-LQ-{run}"
    await producer.send_and_wait(
        "inventory", orjson.dumps({"sku": sku, "on_hand": 1000}), key=sku.encode()
    )
    # Stock first, as a shop would have it. The pair's group starts from the beginning of
    # `inventory` and `inventory.commands`, and Faust keeps no order between two topics:
    # a reserve handled before the level would rightly find no stock and reject the order.
    await eventually(
        lambda: _found(pair[0], f"/inventory/{sku}"), timeout=120, what=f"stock of {sku}"
    )
    ids = [f"lq-{run}-{n:03d}" for n in range(24)]
    for order_id in ids:
        sent = await producer.send_and_wait("orders", order(order_id, sku), key=order_id.encode())
        # The router's partition function is the producers' one (murmur2 of the key bytes).
        assert sent.partition == key_partition(order_id.encode(), ORDER_PARTITIONS)

    # First read: every order reserved (the saga ran), same value through both workers.
    versions: dict[str, int] = {}
    owners: dict[str, str] = {}
    for order_id in ids:
        path = f"/orders/{order_id}"
        await eventually(lambda p=path: _status(pair[0], p, "reserved"), timeout=120, what=path)
        body, owners[order_id] = await read_both(pair, path)
        assert (body["order_id"], body["status"]) == (order_id, "reserved")
        partition = key_partition(order_id.encode(), ORDER_PARTITIONS)
        assert (await query(pair[0], path))[2][PARTITION_HEADER] == str(partition)
        versions[order_id] = body["version"]
    # Both workers own part of the keys, so both the local and the forwarded path ran.
    assert set(owners.values()) == {w.url for w in pair}

    stock, _ = await read_both(pair, f"/inventory/{sku}")
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (1000, 24, 976)

    # An update after the first read: a stale copy anywhere would now show the old status.
    for order_id in ids:
        await producer.send_and_wait("order.events", paid(order_id), key=order_id.encode())
    for order_id in ids:
        path = f"/orders/{order_id}?min_version={versions[order_id] + 1}"
        body, served_by = await read_both(pair, path)
        assert body["status"] == "paid"
        assert body["version"] > versions[order_id]
        assert served_by == owners[order_id]


async def _status(worker: WorkerProcess, path: str, status: str) -> bool:
    answer = await query(worker, path)
    return answer[0] == 200 and answer[1]["status"] == status


async def _found(worker: WorkerProcess, path: str) -> tuple[int, Any, dict[str, str]] | None:
    answer = await query(worker, path)
    return answer if answer[0] == 200 else None


async def test_min_version_waits_for_the_write(
    pair: list[WorkerProcess], producer: AIOKafkaProducer
) -> None:
    order_id = f"lq-ryw-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait("orders", order(order_id, "SKU-LQ-RYW"), key=order_id.encode())
    # Read-your-writes: no polling by the client, the owner waits until version 1 exists.
    for worker in pair:
        status, body, _ = await stable_read(worker, f"/orders/{order_id}?min_version=1")
        assert status == 200
        # The answer came after the write: it is this order, at least at version 1 (it may
        # rightly have moved on already, e.g. to its reservation answer's version 2).
        assert body["order_id"] == order_id
        assert body["version"] >= 1


async def test_min_version_not_reached_is_a_bounded_503(pair: list[WorkerProcess]) -> None:
    order_id = f"lq-never-{uuid.uuid4().hex[:8]}"
    for worker in pair:
        started = time.monotonic()
        status, body, headers = await query(worker, f"/orders/{order_id}?min_version=3")
        assert status == 503
        assert body["error"] == "version not reached"
        assert body["version"] is None
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - started < 15  # bounded by CARTLOOM_QUERY_WAIT_MAX_SECONDS=2


async def test_bad_min_version_is_400(pair: list[WorkerProcess]) -> None:
    status, body, _ = await query(pair[0], "/orders/x?min_version=soon")
    assert status == 400
    assert "min_version" in body["error"]


@pytest.mark.parametrize(
    ("entity", "param", "message"),
    [
        ("orders", "order_id", "order not found"),
        ("inventory", "sku", "sku not found"),
        ("products", "product_id", "product not found"),
    ],
)
async def test_unknown_key_is_404_on_both_workers(
    pair: list[WorkerProcess], entity: str, param: str, message: str
) -> None:
    key = f"lq-missing-{uuid.uuid4().hex}"
    for worker in pair:
        status, body, headers = await stable_read(worker, f"/{entity}/{key}")
        assert status == 404
        assert body == {"error": message, param: key}
        assert headers[SERVED_BY_HEADER] in {w.url for w in pair}


async def test_queries_need_the_bearer_token_but_probes_do_not(pair: list[WorkerProcess]) -> None:
    for worker in pair:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, _, answer_headers = await query(worker, "/orders/any", headers)
            assert status == 401
            assert answer_headers["WWW-Authenticate"].startswith("Bearer")
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(f"{worker.url}{path}") as resp:
                    assert resp.status == 200, path


async def test_refusals_and_forwarded_answers_are_as_the_api_document_says(
    pair: list[WorkerProcess],
) -> None:
    """401 without the token, and 404 through both workers (one of them relays the owner's)."""
    api = ApiDocument(openapi_document())
    key = f"lq-doc-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as http:
        for worker in pair:
            for template, collection in (
                ("/orders/{order_id}", "orders"),
                ("/inventory/{sku}", "inventory"),
                ("/products/{product_id}", "products"),
            ):
                url = f"{worker.url}/{collection}/{key}"
                async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
                    assert (await api.answer(template, resp))[0] == 401
                async with http.get(url, headers=AUTH) as resp:
                    assert (await api.answer(template, resp))[0] in (404, 503)


async def test_faust_built_in_pages_serve_no_table_rows(
    pair: list[WorkerProcess], producer: AIOKafkaProducer
) -> None:
    """Faust's /table/ and /router/ pages gave any caller raw rows and the partition map."""
    order_id = f"lq-faust-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait("orders", order(order_id, "SKU-LQ-FAUST"), key=order_id.encode())
    await eventually(lambda: _found(pair[0], f"/orders/{order_id}"), timeout=90, what="order")
    paths = (
        "/table/",
        f"/table/order_by_id/{order_id}/",
        f"/table/order_by_id/{order_id}",
        "/table/order_by_id/",
        "/router/",
        f"/router/order_by_id/{order_id}/",
        "/graph/",
        "/stats/",
        "/assignment/",
        "/performance/",
    )
    async with aiohttp.ClientSession() as http:
        for worker in pair:
            for path in paths:
                for headers in ({}, AUTH):
                    async with http.get(f"{worker.url}{path}", headers=headers) as resp:
                        body = await resp.read()
                        assert resp.status == 404, (path, resp.status, body[:200])
                        assert order_id.encode() not in body


def documented_worker_surfaces() -> list[tuple[str, str, int]]:
    """(path, method, status without credentials) per row of docs/access.md's worker table."""
    text = (Path(__file__).parents[2] / "docs" / "access.md").read_text()
    section = text.split("## The worker", 1)[1].split("\n## ", 1)[0]
    examples = {
        "{order_id}": "lq-acc-none",
        "{sku}": "SKU-LQ-ACC",
        "{product_id}": "9999",
        "{topic}": "orders",
        "{name}": "order_by_id",
        "{key}": "lq-acc-none",
    }
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        status = int(cells[3].split()[0])
        for path in re.findall(r"`([^`]+)`", cells[0]):
            for name, example in examples.items():
                path = path.replace(name, example)
            rows.append((path, cells[1], status))
    return rows


async def test_every_documented_surface_answers_as_docs_access_says(
    pair: list[WorkerProcess],
) -> None:
    rows = documented_worker_surfaces()
    assert len(rows) >= 15
    async with aiohttp.ClientSession() as http:
        for path, method, status in rows:
            async with http.request(method, f"{pair[0].url}{path}") as resp:
                assert resp.status == status, (method, path, resp.status, await resp.text())
            if status == 401 and method == "GET":  # the token opens it
                async with http.request(method, f"{pair[0].url}{path}", headers=AUTH) as resp:
                    assert resp.status in (200, 404), (path, resp.status)


async def test_silent_and_surplus_connections_do_not_hold_a_worker(
    pair: list[WorkerProcess],
) -> None:
    """Faust's web server, as CartLoom runs it: a silent connection is closed at the head
    deadline, one over the cap is answered 503 at once, queries are answered meanwhile."""
    worker = pair[0]
    silent = [await asyncio.open_connection("127.0.0.1", worker.port) for _ in range(35)]

    firsts = await first_answers(silent)
    answered = [first for first in firsts if first is not None]
    assert len(answered) >= 5  # 35 opened, at most 30 kept
    assert all(first.startswith(b"HTTP/1.1 503") for first in answered), answered
    admitted = [conn for conn, first in zip(silent, firsts, strict=True) if first is None]
    kept, released = admitted[:3], admitted[3:]
    try:
        for _, writer in released:  # room again: the worker answers queries
            writer.close()

        async def answered_by_the_app() -> bool:
            status, body, _ = await query(worker, "/orders/lq-guard-none")
            return status == 404 and "error" in body

        await eventually(answered_by_the_app, timeout=30, what="a query answered")
        for reader, _ in kept:  # closed by the worker at the head deadline, unanswered
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
    finally:
        for _, writer in silent:
            writer.close()
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/metrics") as scrape:
        text = await scrape.text()
    (counted,) = [
        line
        for line in text.splitlines()
        if line.startswith('cartloom_http_connections_refused_total{server="worker"}')
    ]
    assert float(counted.rsplit(" ", 1)[1]) >= len(answered)


async def test_a_forwarded_request_is_never_forwarded_again(
    pair: list[WorkerProcess], producer: AIOKafkaProducer
) -> None:
    order_id = f"lq-hop-{uuid.uuid4().hex[:8]}"
    await producer.send_and_wait("orders", order(order_id, "SKU-LQ-HOP"), key=order_id.encode())
    _, _, headers = await eventually(
        lambda: _found(pair[0], f"/orders/{order_id}"), timeout=90, what="order readable"
    )
    owner = headers[SERVED_BY_HEADER]
    other = next(w for w in pair if w.url != owner)
    # A request that already took its one hop, arriving at a worker that is not the owner
    # (as after an ownership move), is refused with 503 rather than bounced on.
    status, body, answer_headers = await query(
        other, f"/orders/{order_id}", {**AUTH, FORWARDED_HEADER: owner}
    )
    assert status == 503
    assert answer_headers["Retry-After"] == "1"
    assert "not the recovered owner" in body["error"]


async def test_each_worker_registers_itself_for_prometheus(
    pair: list[WorkerProcess], stack_dir: Path
) -> None:
    files = sorted((stack_dir / "lq-targets").glob("*.json"))
    assert [f.name for f in files] == sorted(f"cartloom-lq-127.0.0.1-{w.port}.json" for w in pair)
    documents = [json.loads(f.read_text()) for f in files]
    assert sorted(d[0]["targets"][0] for d in documents) == sorted(
        f"127.0.0.1:{w.port}" for w in pair
    )


async def test_the_input_schemas_are_public_on_every_worker(pair: list[WorkerProcess]) -> None:
    """GET /schemas/{topic}.json answers without the token the live queries need."""
    committed = {topic: (CHECKOUT_DIR / file_name(topic)).read_bytes() for topic in INPUT_CONTRACTS}
    async with aiohttp.ClientSession() as http:
        for worker in pair:
            async with http.get(f"{worker.url}/schemas") as resp:
                assert resp.status == 200
                index = await resp.json()
            assert index == {"schemas": {t: f"/schemas/{t}.json" for t in committed}}
            for topic, text in committed.items():
                async with http.get(f"{worker.url}/schemas/{topic}.json") as resp:
                    assert resp.status == 200, topic
                    assert resp.content_type == "application/schema+json"
                    assert await resp.read() == text
            async with http.get(f"{worker.url}/schemas/orders.dlq.json") as resp:
                assert resp.status == 404
                assert (await resp.json())["topic"] == "orders.dlq"
