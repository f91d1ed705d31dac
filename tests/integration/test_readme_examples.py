"""The README's publish-and-read examples, run verbatim against the local stack and a worker.

The blocks marked ``<!-- readme-example: NAME -->`` run exactly as written, with the
environment the README tells the reader to load (``.cartloom/dev.env``: the broker's
address, the worker's port and API token), here the session's stack and worker. Then what
the README promises: both orders reserved, and the ``curl`` line printing the first one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp
import pytest

from tests.harness import WorkerProcess, eventually
from tests.integration.examples import marked_examples, run_example

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_has_the_publish_and_read_examples() -> None:
    assert set(marked_examples(README.read_text(), "readme-example")) == {"python", "kcat", "curl"}


async def test_the_readme_examples_publish_an_order_and_read_it_back(
    worker: WorkerProcess, bootstrap: str, tmp_path: Path
) -> None:
    found = marked_examples(README.read_text(), "readme-example")
    env = {
        **os.environ,
        "CARTLOOM_BROKER_URL": f"kafka://{bootstrap}",
        "CARTLOOM_WEB_PORT": str(worker.port),
        "CARTLOOM_API_TOKEN": worker.api_token or "",
    }
    run_example(found["python"], tmp_path, env)
    run_example(found["kcat"], tmp_path, env)

    async def reserved(order_id: str) -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{worker.url}/orders/{order_id}") as r,
        ):
            return r.status == 200 and (await r.json())["status"] == "reserved"

    for order_id in ("readme-1", "readme-2"):
        await eventually(lambda o=order_id: reserved(o), timeout=60, what=f"{order_id} reserved")

    answer = json.loads(run_example(found["curl"], tmp_path, env))
    assert answer["order_id"] == "readme-1"
    assert answer["status"] == "reserved"
    assert answer["lines"][0]["sku"] == "README-MUG"
