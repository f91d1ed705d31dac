"""Sinks on real servers: duplicates, reordering, deletions and a restart end with exact views.

The changelog is written directly (as Faust writes it), including what a correct table never
writes but a sink must survive: duplicated records and older versions after newer ones
(replays, a zombie writer). DynamoDB and Redis must end equal to the table, which
``cartloom audit --strict`` verifies, and a second opinion reads the stores directly.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from cartloom.ops.audit import run_audit
from cartloom.sinks.dynamodb import read_items
from cartloom.sinks.redis import read_views, redis_client
from devstack.stack import StackState
from tests.harness import eventually
from tests.integration.sink_helpers import (
    cartloom_audit,
    fold,
    make_namespace,
    order_document,
    produce_changelog,
    running_sinks,
    sink_metric,
)

pytestmark = pytest.mark.integration

Record = tuple[str, dict[str, Any] | None]


def messy_stream(keys: list[str], rng: random.Random, start: int = 1) -> list[Record]:
    """Versions in order per key, interleaved across keys, with duplicates and older replays."""
    pending = {key: list(range(start, start + rng.randint(1, 5))) for key in keys}
    records: list[Record] = []
    while pending:
        key = rng.choice(list(pending))
        version = pending[key].pop(0)
        if not pending[key]:
            del pending[key]
        records.append((key, order_document(key, version)))
        if rng.random() < 0.25:  # a duplicate of what was just written
            records.append((key, order_document(key, version)))
        if version > 1 and rng.random() < 0.25:  # an older version replayed after a newer one
            records.append((key, order_document(key, rng.randint(1, version - 1))))
    return records


async def converged(ns: Any) -> bool:
    report = await run_audit(ns.settings, ns.topology, strict=True)
    return not report.diverged


async def test_duplicates_reordering_deletions_and_restart_end_equal_to_the_table(
    stack: StackState, producer: AIOKafkaProducer, dynamodb: Any
) -> None:
    ns = await make_namespace(stack.env, redis_db=11)
    rng = random.Random(5)
    keys = [f"ord-{i:04d}" for i in range(400)]
    first = messy_stream(keys, rng)
    stale_before = sink_metric("cartloom_sink_writes_total", store="redis", outcome="stale")

    async with running_sinks(ns):
        await produce_changelog(producer, ns.changelog, first)
        await eventually(lambda: converged(ns), timeout=180, what="first half materialised")

    # While the sinks are down: older versions of materialised keys (refused later as stale),
    # newer versions, deletions, and keys deleted then created again.
    second: list[Record] = []
    for key in keys[:100]:
        second.append((key, order_document(key, 1)))
    second += messy_stream(keys[100:200], rng, start=6)
    second += [(key, None) for key in keys[200:240]]
    second += [(key, None) for key in keys[240:250]]
    second += [(key, order_document(key, 1, status="reserved")) for key in keys[240:250]]
    second += [(key, None) for key in keys[200:210]]  # a tombstone twice is still deleted
    await produce_changelog(producer, ns.changelog, second)

    async with running_sinks(ns):
        code, report, err = await cartloom_audit(ns, "--strict", "--settle", "180")
    assert code == 0, ({s: r["differences"][:5] for s, r in report["stores"].items()}, err)
    assert not report["diverged"]
    expected = fold(first + second)
    for store in ("dynamodb", "redis"):
        counts = report["stores"][store]["entities"]["orders"]
        assert counts["table"] == counts["store"] == len(expected) == 360
        assert counts["matching"] == counts["checked"] == 400
        assert report["stores"][store]["differences"] == []
    stale_after = sink_metric("cartloom_sink_writes_total", store="redis", outcome="stale")
    assert stale_after - stale_before >= 100  # the replayed version-1 records were refused

    # A second opinion, independent of the audit: read the stores directly.
    redis = redis_client(ns.settings)
    try:
        in_redis = await read_views(redis, "orders", keys)
    finally:
        await redis.aclose()
    in_dynamodb = await read_items(dynamodb, ns.settings, "orders", keys)
    for views in (in_redis, in_dynamodb):
        assert {key: view.document for key, view in views.items()} == expected
        assert all(view.version == expected[key]["version"] for key, view in views.items())
