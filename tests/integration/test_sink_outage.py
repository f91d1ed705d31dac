"""Store outages: Redis and moto_server stop mid-stream and start again on the same port.

A private redis-server (with its append-only file, as a durable Redis runs) and a private
moto_server (with moto's request recorder, replayed after the restart so the endpoint comes
back with its data, as DynamoDB would) are started for this test only; the session's
servers are left alone. While the stores are down the sinks retry with bounded back-off,
count the failures, commit nothing and set nothing aside to sinks.dlq (an outage is not a
bad key); once the stores are back, every change lands and ``cartloom audit --strict``
finds no lost and no regressed item.
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from cartloom.sinks.materialiser import sink_group_id
from devstack.processes import ServerProcess, free_port, spawn, stop, wait_until
from devstack.stack import StackState, moto_argv, redis_argv
from tests.harness import eventually
from tests.integration.sink_helpers import (
    Namespace,
    cartloom_audit,
    make_namespace,
    order_document,
    produce_changelog,
    running_sinks,
    sink_metric,
)

pytestmark = pytest.mark.integration

Record = tuple[str, dict[str, Any] | None]


class PrivateStores:
    """redis-server and moto_server of this test, restartable on the same ports."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.redis_port = free_port()
        self.moto_port = free_port()
        self.recording = directory / "moto-recording.jsonl"
        self.servers: dict[str, ServerProcess] = {}

    def redis_argv(self) -> list[str]:
        binary = redis_argv(self.redis_port)[0]
        return [
            *(binary, "--port", str(self.redis_port), "--bind", "127.0.0.1"),
            *("--dir", str(self.dir), "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "always"),
        ]

    async def start_redis(self) -> None:
        server = spawn("redis", self.redis_argv(), self.dir / "logs", self.redis_port)
        self.servers["redis"] = server

        async def ready() -> bool:
            client = Redis(host="127.0.0.1", port=self.redis_port, socket_connect_timeout=1)
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        await wait_until(server, ready)

    async def start_moto(self, monkeypatch: pytest.MonkeyPatch, *, replay: bool) -> None:
        monkeypatch.setenv("MOTO_ENABLE_RECORDING", "true")
        monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(self.recording))
        server = spawn("moto", moto_argv(self.moto_port), self.dir / "logs", self.moto_port)
        self.servers["moto"] = server
        if replay:
            self.replay_blocking()
        await wait_until(server, lambda: self._moto("GET", "/moto-api/"))

    def replay_blocking(self) -> None:
        """Give the restarted endpoint back everything it had taken, as DynamoDB would have.

        Called without awaiting on purpose: the in-process sinks cannot run meanwhile.
        moto's conditional writes are not atomic across its request threads (DynamoDB's
        are), so a sink write racing the replay of an older write of the same item could
        let the older one win, a failure of the scaffolding, not of the sink.
        """
        base = f"http://127.0.0.1:{self.moto_port}/moto-api"
        deadline = time.monotonic() + 60
        while True:  # moto starting: the port opens within seconds
            try:
                with urllib.request.urlopen(f"{base}/", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # blocking on purpose, see above
        request = urllib.request.Request(f"{base}/recorder/replay-recording", method="POST")
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status < 300

    async def _moto(self, method: str, path: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=120)
        url = f"http://127.0.0.1:{self.moto_port}{path}"
        async with aiohttp.ClientSession(timeout=timeout) as http, http.request(method, url) as r:
            return r.status < 300

    def stop(self, name: str) -> None:
        stop(self.servers[name])

    def env(self, stack_env: dict[str, str]) -> dict[str, str]:
        return {
            **stack_env,
            "CARTLOOM_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CARTLOOM_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{self.moto_port}",
        }


@pytest.fixture
def private_stores(tmp_path: Path) -> Iterator[PrivateStores]:
    stores = PrivateStores(tmp_path)
    yield stores
    for server in stores.servers.values():
        stop(server)


def versions(keys: list[str], rng: random.Random, start: int, count: int) -> list[Record]:
    """``count`` versions per key from ``start``, interleaved, with duplicates and replays."""
    records: list[Record] = []
    for version in range(start, start + count):
        for key in rng.sample(keys, len(keys)):
            records.append((key, order_document(key, version)))
            if rng.random() < 0.2:
                records.append((key, order_document(key, version)))
            if version > 1 and rng.random() < 0.2:
                records.append((key, order_document(key, rng.randint(1, version - 1))))
    return records


def dead_letters(store: str) -> float:
    """Changes ``store``'s sink set aside to sinks.dlq in this process, for any reason."""
    return sum(
        sink_metric("cartloom_sink_dead_letters_total", store=store, reason=reason)
        for reason in ("refused", "retries_exhausted", "invalid_json", "key_mismatch")
    )


async def committed(ns: Namespace, store: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ns.settings.bootstrap_servers,
        group_id=sink_group_id(ns.settings.app_id, store),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(ns.changelog, p)
            for p in sorted(consumer.partitions_for_topic(ns.changelog) or ())
        ]
        consumer.assign(partitions)
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in partitions}
    finally:
        await consumer.stop()


async def test_stopping_redis_and_moto_mid_stream_loses_nothing_and_regresses_nothing(
    stack: StackState,
    producer: AIOKafkaProducer,
    private_stores: PrivateStores,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await private_stores.start_redis()
    await private_stores.start_moto(monkeypatch, replay=False)
    ns = await make_namespace(private_stores.env(stack.env), redis_db=0)
    rng = random.Random(11)
    keys = [f"out-{i:03d}" for i in range(200)]
    before = versions(keys, rng, start=1, count=3) + [(key, None) for key in keys[:20]]
    during = versions(keys[20:], rng, start=4, count=3)
    failures = {
        s: sink_metric("cartloom_sink_failures_total", store=s) for s in ("redis", "dynamodb")
    }
    set_aside = {s: dead_letters(s) for s in ("redis", "dynamodb")}

    async with running_sinks(ns):
        await produce_changelog(producer, ns.changelog, before)

        async def settled() -> bool:
            redis, dynamodb = await committed(ns, "redis"), await committed(ns, "dynamodb")
            return sum(redis.values()) == sum(dynamodb.values()) == len(before)

        await eventually(settled, timeout=180, what="first part written and committed")

        private_stores.stop("redis")
        private_stores.stop("moto")
        await produce_changelog(producer, ns.changelog, during)

        async def retrying() -> bool:
            return all(
                sink_metric("cartloom_sink_failures_total", store=s) > failures[s] + 1
                for s in failures
            )

        await eventually(retrying, timeout=120, what="both sinks retrying")
        # Nothing written, nothing committed: the offsets still stop where the outage began.
        for store in ("redis", "dynamodb"):
            assert sum((await committed(ns, store)).values()) == len(before)

        await private_stores.start_redis()
        await private_stores.start_moto(monkeypatch, replay=True)
        code, report, err = await cartloom_audit(ns, "--strict", "--settle", "240")

    assert code == 0, ({s: r["differences"][:5] for s, r in report["stores"].items()}, err)
    for store in ("redis", "dynamodb"):
        counts = report["stores"][store]["entities"]["orders"]
        assert counts["table"] == counts["store"] == counts["matching"] - 20 == 180
        assert sum((await committed(ns, store)).values()) == len(before) + len(during)
        assert dead_letters(store) == set_aside[store], "an outage sets nothing aside"
