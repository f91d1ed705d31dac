"""Fuzzing the live HTTP surfaces: any request gets its documented answer, never a 500.

Hypothesis writes the requests: Shopify's headers with any values (the topic from the
known ones or not, a signature that is right, wrong or missing), bodies of any bytes, of
any JSON, or of a known topic's shape with any values; live queries with any ids and any
``min_version``. Each answer must be one the contract documents (docs/access.md,
docs/shopify.md) with a JSON error for a refusal, and the process must still answer
afterwards with nothing unhandled in its log. ``FUZZ_CASES`` sets the cases per surface
(``make fuzz``: 10,000).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartloom.domain.shopify.normalise import KNOWN_TOPICS
from cartloom.shopify.signatures import sign
from devstack.stack import StackState
from tests.fuzz_cases import FUZZ_SETTINGS
from tests.harness import WorkerProcess, serving, start_worker
from tests.integration.conftest import SHOPIFY_MAX_BYTES, SHOPIFY_SECRET
from tests.unit.test_fuzz_inputs import JSON, SHOPIFY_NAMES, message_of

pytestmark = pytest.mark.integration

#: Header values a client can send (printable Latin-1, no line breaks).
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=60,
)
WEBHOOK_ANSWERS = {200, 400, 401, 408, 413}
QUERY_ANSWERS = {200, 400, 404, 503}
#: Lines a worker or the ingress logs when a request escaped its handler.
UNHANDLED = ("Error handling request", "Traceback", "Unhandled exception")


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def query_worker(
    stack: StackState, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerProcess]:
    """A worker whose ``min_version`` waits are short, so each case answers quickly."""
    env = {
        "CARTLOOM_APP_ID": "cartloom-fuzz",
        "CARTLOOM_SINKS_ENABLED": "false",
        "CARTLOOM_QUERY_WAIT_MAX_SECONDS": "0.05",
    }
    log_dir = tmp_path_factory.mktemp("fuzz-worker")
    async with serving(start_worker(stack.env, log_dir, "fuzz-worker", env)) as process:
        yield process


def body_strategy() -> st.SearchStrategy[bytes]:
    shaped = message_of(SHOPIFY_NAMES).map(lambda value: json.dumps(value).encode())
    any_json = JSON.map(lambda value: json.dumps(value).encode())
    return shaped | any_json | st.binary(max_size=300) | st.just(b"x" * (SHOPIFY_MAX_BYTES + 1))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    body = draw(body_strategy())
    headers: dict[str, str] = {"Content-Type": "application/json"}
    optional = {
        "X-Shopify-Topic": st.sampled_from(sorted(KNOWN_TOPICS)) | HEADER_TEXT,
        "X-Shopify-Shop-Domain": st.just("fuzz.myshopify.com") | HEADER_TEXT,
        "X-Shopify-Webhook-Id": HEADER_TEXT,
        "X-Shopify-Event-Id": HEADER_TEXT,
        "X-Shopify-Triggered-At": HEADER_TEXT,
    }
    for name, values in optional.items():
        if draw(st.integers(0, 9)):  # present nine times in ten
            headers[name] = draw(values)
    signature = draw(st.sampled_from(["right", "wrong", "none"]))
    if signature == "right":
        headers["X-Shopify-Hmac-Sha256"] = sign(body, SHOPIFY_SECRET)
    elif signature == "wrong":
        headers["X-Shopify-Hmac-Sha256"] = draw(HEADER_TEXT)
    return body, headers


async def still_whole(process: WorkerProcess, http: aiohttp.ClientSession) -> None:
    """The process runs, answers its health check and logged nothing unhandled."""
    async with http.get(f"{process.url}/healthz") as resp:
        assert resp.status == 200
    assert process.process.poll() is None
    log = process.log.read_text(errors="replace")
    found = [line for line in log.splitlines() if any(mark in line for mark in UNHANDLED)]
    assert not found, "\n".join(found[:10])


async def answer_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.read()
    decoded = json.loads(body)
    assert isinstance(decoded, dict), body[:200]
    return decoded


@FUZZ_SETTINGS
@given(delivery=deliveries())
async def test_the_webhook_receiver_answers_every_request_as_documented(
    ingress: WorkerProcess, http: aiohttp.ClientSession, delivery: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = delivery
    async with http.post(f"{ingress.url}/webhooks/shopify", data=body, headers=headers) as resp:
        assert resp.status in WEBHOOK_ANSWERS, (resp.status, await resp.text())
        answer = await answer_of(resp)
        assert ("error" in answer) == (resp.status != 200), answer


async def test_the_receiver_is_whole_after_the_fuzzing(
    ingress: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    await still_whole(ingress, http)


IDS = st.text(max_size=40) | st.sampled_from(["", ".", "..", "%00", "a/b", "ü", "1" * 300])
MIN_VERSIONS = (
    st.none()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["1", "0", "-1", "1e3", " 2"])
)


@FUZZ_SETTINGS
@given(
    entity=st.sampled_from(["orders", "inventory", "products"]),
    key=IDS,
    min_version=MIN_VERSIONS,
)
async def test_live_queries_answer_every_id_as_documented(
    query_worker: WorkerProcess,
    http: aiohttp.ClientSession,
    entity: str,
    key: str,
    min_version: int | str | None,
) -> None:
    path = f"/{entity}/{urllib.parse.quote(key, safe='')}"
    if min_version is not None:
        path += "?" + urllib.parse.urlencode({"min_version": str(min_version)})
    async with http.get(f"{query_worker.url}{path}") as resp:
        if key in ("", ".", ".."):  # the URL's dot segments fold away: another route's answer
            assert resp.status < 500, (path, resp.status)
            return
        assert resp.status in QUERY_ANSWERS, (path, resp.status, await resp.text())
        answer = await answer_of(resp)
        assert ("error" in answer) == (resp.status != 200), (path, answer)


async def test_the_query_worker_is_whole_after_the_fuzzing(
    query_worker: WorkerProcess, http: aiohttp.ClientSession
) -> None:
    await still_whole(query_worker, http)
