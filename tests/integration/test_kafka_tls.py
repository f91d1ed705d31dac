"""CartLoom on a cluster that speaks only mutual TLS: a worker and the CLI, and a wrong CA refused.

The broker is a private Tansu behind stunnel (tests/integration/tls_broker.py): its only
advertised address is stunnel's port, which requires TLS with a client certificate of the
test CA, so every Kafka client of a worker or a CLI command (Faust's consumer and producer,
the order intake, the materialisers, the webhook producer, topic admin, audit, replay,
loadgen) either used the CARTLOOM_KAFKA_* settings or failed. The stores (Redis, DynamoDB)
are the session stack's, in a Redis database and table prefix of this module's own.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from cartloom.ops.dlq import REPLAYED_FROM_HEADER
from cartloom.sinks.dynamodb_tables import ensure_tables
from devstack.stack import StackState
from tests.harness import WorkerProcess, eventually, serving, settings_from_env, start_worker
from tests.integration.tls_broker import TlsBroker, tls_broker
from tests.pki import client_ssl_context, make_pki

pytestmark = pytest.mark.integration

#: A Redis database no other integration test uses (they take 0 and 10-14).
REDIS_DB = 9


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsBroker]:
    async with tls_broker(tmp_path_factory.mktemp("tls-broker")) as started:
        yield started


@pytest.fixture(scope="module")
async def tls_env(stack: StackState, broker: TlsBroker) -> dict[str, str]:
    """The settings of this module's worker and CLI runs: TLS broker, private stores."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **broker.env(stack.env),
        "CARTLOOM_TABLE_PREFIX": f"tls{tag}-",
        "CARTLOOM_REDIS_URL": stack.env["CARTLOOM_REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}",
    }
    await ensure_tables(settings_from_env(env))
    return env


async def cartloom(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``cartloom ARGS`` with ``env`` only; return the exit code and all its output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cartloom",
        "--env-file",
        "/nonexistent/dev.env",
        *args,
        env={**base, "COLUMNS": "200", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="module")
async def topics(tls_env: dict[str, str]) -> str:
    """``cartloom topics apply`` through TLS: the fresh broker gets every declared topic."""
    code, out = await cartloom(tls_env, "topics", "apply")
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
async def tls_worker(
    topics: str, tls_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    started = start_worker(tls_env, tmp_path_factory.mktemp("tls-worker"), "tls-worker")
    async with serving(started) as process:
        yield process


@pytest.fixture(scope="module")
async def tls_producer(broker: TlsBroker) -> AsyncIterator[AIOKafkaProducer]:
    """An outside producer, as a channel would publish: TLS with its client certificate."""
    client = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SSL",
        ssl_context=client_ssl_context(broker.files),
        acks="all",
    )
    await client.start()
    yield client
    await client.stop()


@pytest.fixture(scope="module")
async def tls_redis(tls_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(tls_env["CARTLOOM_REDIS_URL"])
    yield client
    await client.aclose()


def order(order_id: str, lines: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "source": "pos",
            "created_at": datetime.now(UTC).isoformat(),
            "lines": lines,
            "currency": "EUR",
            "total_price": "30.00",
        }
    )


async def view(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}{path}") as response:
        return response.status, await response.json()


async def test_topics_apply_and_check_through_tls(topics: str, tls_env: dict[str, str]) -> None:
    assert "created:" in topics and "orders.accepted" in topics
    code, out = await cartloom(tls_env, "topics", "check")
    assert code == 0, out
    assert "topics match topics.yaml" in out


async def test_a_worker_processes_an_order_through_tls(
    tls_worker: WorkerProcess, tls_producer: AIOKafkaProducer, tls_redis: Redis
) -> None:
    tag = uuid.uuid4().hex[:8]
    lines = [{"sku": f"TLS-A-{tag}", "quantity": 2}, {"sku": f"TLS-B-{tag}", "quantity": 1}]
    for line in lines:
        stock = orjson.dumps({"sku": line["sku"], "on_hand": 5})
        await tls_producer.send_and_wait("inventory", stock, key=line["sku"].encode())
    order_id = f"tls-{tag}"
    await tls_producer.send_and_wait("orders", order(order_id, lines), key=order_id.encode())

    async def reserved() -> Any:
        status, body = await view(tls_worker, f"/orders/{order_id}")
        return body if status == 200 and body["status"] == "reserved" else None

    # Intake (plain consumer and producer), the Faust agents, the saga's round trip.
    body = await eventually(reserved, timeout=90, what="order reserved through TLS")
    assert body["lines"] == lines
    status, stock = await view(tls_worker, f"/inventory/{lines[0]['sku']}")
    assert status == 200, stock
    # The materialisers read the changelog through TLS too.
    cached = await eventually(
        lambda: tls_redis.hget(f"cartloom:order:{order_id}", "doc"), what="order in Redis"
    )
    assert orjson.loads(cached)["order_id"] == order_id


async def test_loadgen_through_tls(tls_worker: WorkerProcess, tls_env: dict[str, str]) -> None:
    prefix = f"tlsload{uuid.uuid4().hex[:6]}"
    code, out = await cartloom(tls_env, "loadgen", "--orders", "20", "--prefix", prefix)
    assert code == 0, out

    async def arrived() -> bool:
        statuses = [(await view(tls_worker, f"/orders/{prefix}-{n:07d}"))[0] for n in (0, 10, 19)]
        return statuses == [200, 200, 200]

    await eventually(arrived, timeout=90, what="loadgen's orders in the worker")


async def replayed_keys(broker: TlsBroker, topic: str) -> set[bytes]:
    """Keys of the records of ``topic`` that a replay sent (read through TLS from the start)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        security_protocol="SSL",
        ssl_context=client_ssl_context(broker.files),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so the partitions are known
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        keys: set[bytes] = set()
        for _ in range(120):
            behind = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            for records in (await consumer.getmany(*behind, timeout_ms=500)).values():
                keys |= {
                    r.key
                    for r in records
                    if r.key and any(name == REPLAYED_FROM_HEADER for name, _ in r.headers)
                }
        return keys
    finally:
        await consumer.stop()


async def test_dlq_replay_through_tls(
    topics: str, tls_env: dict[str, str], tls_producer: AIOKafkaProducer, broker: TlsBroker
) -> None:
    tag = uuid.uuid4().hex[:6]
    keys = {f"tls-dead-{tag}-{n}".encode() for n in range(3)}
    for key in keys:
        headers = [("cartloom-reason", b"invalid_json")]
        await tls_producer.send_and_wait("order.events.dlq", b"{not json", key=key, headers=headers)
    code, out = await cartloom(tls_env, "dlq", "replay", "order.events")
    assert code == 0, out
    # A worker may dead-letter a replayed record again while the replay runs: at least ours.
    replayed = int(out.split("replayed ", 1)[1].split(" ", 1)[0])
    assert replayed >= len(keys), out
    assert keys <= await replayed_keys(broker, "order.events")


async def test_audit_through_tls(
    tls_worker: WorkerProcess, tls_env: dict[str, str], tls_redis: Redis
) -> None:
    # After the orders above were materialised: the stores agree with the changelogs.
    await eventually(lambda: tls_redis.dbsize(), what="something materialised")
    code, out = await cartloom(tls_env, "audit", "--json", "--settle", "30", timeout=180)
    assert code == 0, out
    report = orjson.loads(out[out.index("{") :])
    assert report["changelog"]["records"] > 0
    assert set(report["stores"]) == {"dynamodb", "redis"}
    assert not report["diverged"]


@pytest.mark.parametrize(
    ("case", "command", "names"),
    [
        ("wrong CA", "topics apply", ["certificate verify failed", "CARTLOOM_KAFKA_SSL_CAFILE"]),
        # A worker reaches the brokers before Faust starts, even when it creates no topics.
        (
            "wrong CA",
            "worker --no-create-topics",
            ["certificate verify failed", "CARTLOOM_KAFKA_SSL_CAFILE"],
        ),
        (
            "no client certificate",
            "topics apply",
            ["requires a client certificate", "CARTLOOM_KAFKA_SSL_CERTFILE"],
        ),
        ("plaintext", "topics apply", ["CARTLOOM_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL"]),
    ],
)
async def test_a_client_the_broker_refuses_gets_a_clear_error(
    tls_env: dict[str, str], tmp_path: Path, case: str, command: str, names: list[str]
) -> None:
    env = dict(tls_env)
    if case == "wrong CA":
        env["CARTLOOM_KAFKA_SSL_CAFILE"] = str(make_pki(tmp_path, "other").ca)
    elif case == "no client certificate":
        env["CARTLOOM_KAFKA_SSL_CERTFILE"] = ""
        env["CARTLOOM_KAFKA_SSL_KEYFILE"] = ""
    else:
        env["CARTLOOM_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
        for name in ("CAFILE", "CERTFILE", "KEYFILE"):
            env[f"CARTLOOM_KAFKA_SSL_{name}"] = ""
    env["CARTLOOM_DATA_DIR"] = str(tmp_path / "data")
    code, out = await cartloom(env, *command.split(), timeout=60)
    said = " ".join(out.split())
    assert code == 3, out  # EXIT_UNAVAILABLE (docs/cli.md)
    assert "Traceback" not in out
    assert said.startswith("error: cannot connect to Kafka at 127.0.0.1:"), said
    for name in names:
        assert name in said
