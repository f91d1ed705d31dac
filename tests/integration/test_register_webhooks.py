"""``cartloom shopify register-webhooks`` against the simulated shop over HTTP, run twice.

The simulator refuses a second subscription of a topic to the same address as Shopify
does ("Address for this topic has already been taken"), so a command that only created
subscriptions would fail on its second run.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from cartloom.shopify.registration import SUBSCRIBABLE, topic_enum
from devstack.shopify_simulator import ShopSimulator
from devstack.shopify_store import SimulatedStore
from tests.harness import run_cartloom

pytestmark = pytest.mark.integration

TOKEN = "shpat_registration_test_token"
ADDRESS = "https://cartloom.example/webhooks/shopify"
MOVED = "https://ingress.cartloom.example/webhooks/shopify"


@pytest.fixture
async def shop() -> AsyncIterator[tuple[ShopSimulator, dict[str, str]]]:
    """A simulated shop on a loopback port, and the settings that reach it."""
    simulator = ShopSimulator(SimulatedStore(), access_token=TOKEN, webhook_secret="s")
    async with TestServer(simulator.app(), host="127.0.0.1") as server:
        env = {
            "CARTLOOM_SHOPIFY_API_URL": str(server.make_url("")).rstrip("/"),
            "CARTLOOM_SHOPIFY_ACCESS_TOKEN": TOKEN,
        }
        yield simulator, env


async def register(
    tmp_path: Path, env: dict[str, str], address: str
) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (the simulator keeps serving meanwhile)."""
    args = ("shopify", "register-webhooks", "--address", address)
    return await asyncio.to_thread(run_cartloom, tmp_path, env, *args, timeout=60)


def callback_urls(simulator: ShopSimulator) -> dict[str, str]:
    """Topic (enum) -> address of every subscription; fails on two for one topic."""
    urls: dict[str, str] = {}
    for sub in simulator.subscriptions:
        assert sub["topic"] not in urls, f"two subscriptions for {sub['topic']}"
        urls[sub["topic"]] = sub["endpoint"]["callbackUrl"]
    return urls


async def test_a_second_run_finds_everything_registered(
    tmp_path: Path, shop: tuple[ShopSimulator, dict[str, str]]
) -> None:
    simulator, env = shop
    first = await register(tmp_path, env, ADDRESS)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"created {len(SUBSCRIBABLE)} subscription(s) for {ADDRESS}" in first.stdout
    expected = {topic_enum(topic): ADDRESS for topic in SUBSCRIBABLE}
    assert callback_urls(simulator) == expected

    second = await register(tmp_path, env, ADDRESS)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"already registered: {len(SUBSCRIBABLE)} subscription(s) for {ADDRESS}" in (
        second.stdout
    )
    assert "created" not in second.stdout and "updated" not in second.stdout
    assert second.stderr == ""
    assert callback_urls(simulator) == expected  # nothing added


async def test_a_new_address_moves_the_subscriptions_and_adds_the_missing(
    tmp_path: Path, shop: tuple[ShopSimulator, dict[str, str]]
) -> None:
    simulator, env = shop
    assert (await register(tmp_path, env, ADDRESS)).returncode == 0
    dropped = simulator.subscriptions.pop()  # one topic lost its subscription meanwhile

    moved = await register(tmp_path, env, MOVED)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "created 1 subscription(s)" in moved.stdout
    updated = [line for line in moved.stdout.splitlines() if line.startswith("updated ")]
    assert len(updated) == len(SUBSCRIBABLE) - 1
    assert f"updated orders/create: {ADDRESS} -> {MOVED}" in updated
    assert callback_urls(simulator) == {topic_enum(topic): MOVED for topic in SUBSCRIBABLE}
    assert dropped["topic"] in callback_urls(simulator)


async def test_a_refused_token_is_a_clear_error(
    tmp_path: Path, shop: tuple[ShopSimulator, dict[str, str]]
) -> None:
    simulator, env = shop
    wrong = {**env, "CARTLOOM_SHOPIFY_ACCESS_TOKEN": "shpat_wrong_token_do_not_print"}
    result = await register(tmp_path, wrong, ADDRESS)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.startswith("error: cannot use the Shopify Admin API at http://127.0.0.1:")
    assert "401" in result.stderr and "CARTLOOM_SHOPIFY_ACCESS_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "shpat_wrong_token_do_not_print" not in result.stderr
    assert simulator.subscriptions == []
