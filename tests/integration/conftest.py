"""Session fixtures: the real servers (broker, redis-server, moto_server) and one worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from devstack.stack import StackState
from tests.harness import WorkerProcess, local_stack, serving, start_ingress, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def stack(stack_dir: Path) -> Iterator[StackState]:
    """The embedded stack on free ports, started once per test session."""
    with local_stack(stack_dir) as state:
        yield state


#: How long the shared worker holds an event whose order has not arrived (default: an hour),
#: short so that a test sees one expire.
EARLY_EVENT_HOLD_SECONDS = 8


@pytest.fixture(scope="session")
async def worker(stack: StackState, stack_dir: Path) -> AsyncIterator[WorkerProcess]:
    """One CartLoom worker shared by the tests that only need the stream running."""
    extra_env = {"CARTLOOM_EARLY_EVENT_HOLD_SECONDS": str(EARLY_EVENT_HOLD_SECONDS)}
    async with serving(start_worker(stack.env, stack_dir, "worker", extra_env)) as process:
        yield process


@pytest.fixture(scope="session")
def bootstrap(stack: StackState) -> str:
    return stack.env["CARTLOOM_BROKER_URL"].split("://", 1)[1]


@pytest.fixture(scope="session")
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka producer: the tests publish as an outside system would."""
    client = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await client.start()
    yield client
    await client.stop()


@pytest.fixture(scope="session")
async def redis(stack: StackState) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.env["CARTLOOM_REDIS_URL"])
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def dynamodb(stack: StackState) -> AsyncIterator[Any]:
    session = get_session()
    async with session.create_client(
        "dynamodb",
        endpoint_url=stack.env["CARTLOOM_DYNAMODB_ENDPOINT"],
        region_name=stack.env["AWS_DEFAULT_REGION"],
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
    ) as client:
        yield client


SHOPIFY_SECRET = "whsec-integration"
SHOPIFY_MAX_BYTES = 65_536
SHOPIFY_RECEIVER_ENV = {
    "CARTLOOM_SHOPIFY_WEBHOOK_SECRET": f"retired-secret,{SHOPIFY_SECRET}",
    "CARTLOOM_SHOPIFY_WEBHOOK_MAX_BYTES": str(SHOPIFY_MAX_BYTES),
}


@pytest.fixture(scope="session")
async def shopify_worker(stack: StackState, stack_dir: Path) -> AsyncIterator[WorkerProcess]:
    """A worker of its own (app id ``cartloom-shopify``) with a webhook secret and 64 KiB limit."""
    extra_env = {"CARTLOOM_APP_ID": "cartloom-shopify", **SHOPIFY_RECEIVER_ENV}
    started = start_worker(stack.env, stack_dir, "shopify-worker", extra_env=extra_env)
    async with serving(started) as process:
        yield process


@pytest.fixture(scope="session")
async def ingress(stack: StackState, stack_dir: Path) -> AsyncIterator[WorkerProcess]:
    """``cartloom shopify ingress``: the receiver alone, with the Shopify worker's settings."""
    started = start_ingress(stack.env, stack_dir, extra_env=SHOPIFY_RECEIVER_ENV)
    async with serving(started) as process:
        yield process
