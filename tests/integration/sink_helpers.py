"""Helpers for the sink and audit tests: a private namespace on real servers, sinks in-process.

Each namespace has its own app id (so its own changelog topics and sink groups), its own
DynamoDB table prefix and its own Redis database, so a test never sees another test's data
and ``cartloom audit`` over "everything" means everything of that test.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from cartloom.core.settings import Settings
from cartloom.core.topology import Topology, load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.sinks.dynamodb import DynamoDBSink
from cartloom.sinks.dynamodb_tables import ensure_tables
from cartloom.sinks.materialiser import Materialiser
from cartloom.sinks.redis import RedisSink
from cartloom.sinks.runner import build_materialiser, changelog_entities
from cartloom.stream.kafka_clients import kafka_connection
from tests.harness import settings_from_env


@dataclass
class Namespace:
    """Settings (and the same as environment variables) of one private sink namespace."""

    settings: Settings
    env: dict[str, str]
    topology: Topology

    @property
    def changelog(self) -> str:
        """The orders table's changelog topic in this namespace."""
        return self.topology.tables["order_by_id"].changelog_topic(self.settings.app_id)


async def make_namespace(stack_env: dict[str, str], redis_db: int, **overrides: str) -> Namespace:
    """Create the changelog topics and DynamoDB tables of a fresh namespace."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **stack_env,
        "CARTLOOM_APP_ID": f"sinktest{tag}",
        "CARTLOOM_TABLE_PREFIX": f"sinktest{tag}-",
        "CARTLOOM_REDIS_URL": stack_env["CARTLOOM_REDIS_URL"].rsplit("/", 1)[0] + f"/{redis_db}",
        "CARTLOOM_SINK_RETRY_MAX_SECONDS": "1",
        "CARTLOOM_SINK_BATCH_MAX": "200",
        **overrides,
    }
    for name, value in env.items():
        if name.startswith("AWS_"):
            os.environ.setdefault(name, value)
    settings = settings_from_env(env)
    topology = load_topology(settings.topics_file)
    app_topics = [
        spec
        for spec in topology.changelog_specs(settings.app_id)
        if spec.name in changelog_entities(settings, topology)
    ]
    await apply_topics(kafka_connection(settings), app_topics)
    await ensure_tables(settings)
    return Namespace(settings, env, topology)


def build_materialisers(ns: Namespace) -> list[Materialiser]:
    """One materialiser per store, configured as the worker configures them."""
    return [
        build_materialiser(ns.settings, ns.topology, sink)
        for sink in (DynamoDBSink(ns.settings), RedisSink(ns.settings))
    ]


@asynccontextmanager
async def running_sinks(ns: Namespace) -> AsyncIterator[list[Materialiser]]:
    """Run both materialisers in this process; stop them (batch in hand) on exit."""
    materialisers = build_materialisers(ns)
    tasks = [asyncio.create_task(m.run()) for m in materialisers]
    try:
        yield materialisers
    finally:
        for materialiser in materialisers:
            materialiser.stop()
        done, _ = await asyncio.wait(tasks, timeout=60)
        for task in done:
            task.result()  # a crash in a materialiser fails the test


def order_document(key: str, version: int, status: str = "received") -> dict[str, Any]:
    """An order view as the orders table holds it; its content differs per version."""
    return {
        "order_id": key,
        "status": status,
        "version": version,
        "lines": [{"sku": f"SKU-{version}", "quantity": version}],
        "note": f"{key} at version {version}",
    }


async def produce_changelog(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[str, dict[str, Any] | None]]
) -> None:
    """Write ``(key, document or None for a tombstone)`` records as Faust's changelog does."""
    sent = [
        await producer.send(topic, None if doc is None else orjson.dumps(doc), key=key.encode())
        for key, doc in records
    ]
    await asyncio.gather(*sent)


def fold(records: Iterable[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """The views the stores must end with: highest version per key, a tombstone deletes."""
    views: dict[str, dict[str, Any]] = {}
    for key, doc in records:
        if doc is None:
            views.pop(key, None)
        elif key not in views or doc["version"] > views[key]["version"]:
            views[key] = doc
    return views


async def cartloom_audit(ns: Namespace, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``cartloom audit --json ARGS`` as a process; return exit code, report, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    env.update(ns.env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cartloom",
        "--env-file",
        "/nonexistent/dev.env",
        "audit",
        "--json",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    report = orjson.loads(out) if out.strip() else {}
    return process.returncode or 0, report, err.decode(errors="replace")


def sink_metric(name: str, **labels: str) -> float:
    """The current value of a CartLoom sink metric in this process (0 if never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
