"""``cartloom audit`` on real servers: it finds every kind of divergence, and only real ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from cartloom.core.settings import Settings
from cartloom.core.topology import load_topology
from cartloom.ops.audit import run_audit
from cartloom.sinks.redis import redis_client
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually
from tests.integration.sink_helpers import (
    Namespace,
    cartloom_audit,
    make_namespace,
    order_document,
    produce_changelog,
    running_sinks,
)

pytestmark = pytest.mark.integration


async def materialised(stack: StackState, producer: AIOKafkaProducer, db: int) -> Namespace:
    """A namespace whose 50 orders (one deleted) are in both stores, sinks stopped."""
    ns = await make_namespace(stack.env, redis_db=db)
    records: list[tuple[str, dict[str, Any] | None]] = []
    for i in range(50):
        records += [(f"a-{i}", order_document(f"a-{i}", v)) for v in (1, 2)]
    records.append(("a-49", None))
    async with running_sinks(ns):
        await produce_changelog(producer, ns.changelog, records)

        async def clean() -> bool:
            report = await run_audit(ns.settings, ns.topology, strict=True)
            return not report.diverged

        await eventually(clean, timeout=180, what="views materialised")
    return ns


def kinds(report: dict[str, Any], store: str) -> dict[str, str]:
    return {d["key"]: d["kind"] for d in report["stores"][store]["differences"]}


async def test_audit_reports_each_divergence_and_exits_1(
    stack: StackState, producer: AIOKafkaProducer, dynamodb: Any
) -> None:
    ns = await materialised(stack, producer, db=12)
    code, report, err = await cartloom_audit(ns, "--settle", "0")
    assert code == 0, (report, err)
    assert report["stores"]["redis"]["entities"]["orders"] == {
        "table": 49,
        "store": 49,
        "checked": 50,
        "matching": 50,
        "expired": 0,
    }

    redis = redis_client(ns.settings)
    try:
        await redis.hset("cartloom:order:a-1", mapping={"version": 1})  # regressed
        await redis.delete("cartloom:order:a-2")  # lost
        await redis.hset("cartloom:order:a-49", mapping={"version": 2, "doc": b"{}"})  # resurrected
        doc = orjson.dumps({**order_document("a-3", 2), "status": "paid"})
        await redis.hset("cartloom:order:a-3", mapping={"doc": doc})  # same version, other content
    finally:
        await redis.aclose()
    table = ns.settings.dynamodb_table("orders")
    await dynamodb.delete_item(TableName=table, Key={"order_id": {"S": "a-4"}})
    await dynamodb.put_item(
        TableName=table,
        Item={"order_id": {"S": "ghost"}, "version": {"N": "7"}, "doc": {"S": "{}"}},
    )

    code, report, _ = await cartloom_audit(ns, "--settle", "0")
    assert code == 1
    assert report["diverged"]
    assert kinds(report, "redis") == {
        "a-1": "stale",
        "a-2": "missing",
        "a-49": "undeleted",
        "a-3": "content",
    }
    assert kinds(report, "dynamodb") == {"a-4": "missing", "ghost": "undeleted"}
    differences = report["stores"]["redis"]["differences"]
    assert not any(d["in_flight"] for d in differences)  # the sink had committed past them
    assert report["stores"]["redis"]["entities"]["orders"]["matching"] == 46

    code, report, _ = await cartloom_audit(ns, "--store", "dynamodb", "--settle", "0")
    assert code == 1
    assert list(report["stores"]) == ["dynamodb"]

    # The sink repairs nothing by itself (its offsets are committed), but a re-publish does:
    # the newer version is written over the regressed and lost copies.
    fixes = [(key, order_document(key, 3)) for key in ("a-1", "a-2", "a-3", "a-4")]
    fixes.append(("a-49", None))
    async with running_sinks(ns):
        await produce_changelog(producer, ns.changelog, fixes)
        code, report, _ = await cartloom_audit(
            ns, "--store", "redis", "--strict", "--settle", "120"
        )
    assert code == 0, report


async def test_changes_not_yet_written_are_in_flight_not_divergence(
    stack: StackState, producer: AIOKafkaProducer
) -> None:
    ns = await materialised(stack, producer, db=13)
    # The sinks are stopped: these changes wait in the changelog, past the committed offsets.
    waiting = [("a-5", order_document("a-5", 3)), ("new", order_document("new", 1))]
    await produce_changelog(producer, ns.changelog, waiting)
    code, report, err = await cartloom_audit(ns, "--settle", "0")
    assert code == 0, (report, err)
    for store in ("dynamodb", "redis"):
        differences = report["stores"][store]["differences"]
        assert {(d["key"], d["kind"], d["in_flight"]) for d in differences} == {
            ("a-5", "stale", True),
            ("new", "missing", True),
        }
    code, _, _ = await cartloom_audit(ns, "--settle", "0", "--strict")
    assert code == 1

    code, report, _ = await cartloom_audit(ns, "--sample", "10", "--settle", "0", "--strict")
    assert report["sample"] == 10
    assert report["stores"]["redis"]["entities"]["orders"]["checked"] == 10
    assert report["stores"]["redis"]["entities"]["orders"]["store"] is None

    async with running_sinks(ns):
        code, report, _ = await cartloom_audit(ns, "--strict", "--settle", "120")
    assert code == 0, report


async def test_the_real_worker_keeps_both_stores_equal_to_its_tables(
    stack: StackState, worker: WorkerProcess, producer: AIOKafkaProducer, dynamodb: Any
) -> None:
    """Orders (each sent twice, the copy altered) through the worker; audit the shared stack."""
    tag = uuid.uuid4().hex[:8]
    ids = [f"aud-{tag}-{i}" for i in range(100)]
    for order_id in ids:
        body = {
            "order_id": order_id,
            "source": "pos",
            "created_at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": "SKU-AUDIT", "quantity": 1}],
        }
        await producer.send("orders", orjson.dumps(body), key=order_id.encode())
        body["lines"] = [{"sku": "SKU-AUDIT", "quantity": 5}]  # a redelivery that must not win
        await producer.send("orders", orjson.dumps(body), key=order_id.encode())
    await producer.flush()

    async def last_one_landed() -> bool:
        response = await dynamodb.get_item(
            TableName="cartloom-orders", Key={"order_id": {"S": ids[-1]}}, ConsistentRead=True
        )
        return "Item" in response

    await eventually(last_one_landed, timeout=180, what="orders materialised")
    shared = Namespace(Settings(), dict(stack.env), load_topology())
    code, report, err = await cartloom_audit(shared, "--strict", "--settle", "180")
    assert code == 0, ({s: r["differences"][:5] for s, r in report["stores"].items()}, err)
    for store in ("dynamodb", "redis"):
        orders = report["stores"][store]["entities"]["orders"]
        assert orders["table"] == orders["store"] >= len(ids)
