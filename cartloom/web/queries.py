"""Live queries on any worker: answer from the active owner of the key, forwarding if needed.

``register_live_query(app, "/orders/{order_id}", order_by_id, ...)`` adds ``GET`` on that
path. The worker that receives the request finds the key's active owner
(:func:`cartloom.web.routing.locate`): if it is itself (and recovered) it answers from its
table, otherwise it forwards the request once to the owner and relays the answer. A
forwarded request is never forwarded again: an owner that lost the partition meanwhile
answers 503 with ``Retry-After``, so two workers with different maps cannot bounce it.

``?min_version=N`` waits (at most ``CARTLOOM_QUERY_WAIT_MAX_SECONDS``) until the owner's
value reaches version ``N`` (read-your-writes); 503 with the current version if it does not.
With ``CARTLOOM_API_TOKEN`` set, ``Authorization: Bearer <token>`` is required (401 else).
The owner answers the resource's public view (:mod:`cartloom.domain.public_views`), never
the table's value: the saga's bookkeeping stays inside. Responses carry
``X-CartLoom-Served-By`` (the owner's URL) and ``X-CartLoom-Partition``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from faust.web import Request, Response, View

from cartloom.core.metrics import LIVE_QUERIES, LIVE_QUERY_SECONDS
from cartloom.core.settings import Settings
from cartloom.domain.public_shapes import View as PublicView
from cartloom.web.routing import Placement, locate

FORWARDED_HEADER = "X-CartLoom-Forwarded-By"
SERVED_BY_HEADER = "X-CartLoom-Served-By"
PARTITION_HEADER = "X-CartLoom-Partition"
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class LiveQuery:
    """One queryable table: its path parameter, entity name, 404 message and public view."""

    table: Any
    param: str
    entity: str
    not_found: str
    public: PublicView  #: what an answer holds: this allow-list of the value's fields


class QueryError(Exception):
    """A request the view refuses with ``status`` and a JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any], outcome: str) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.outcome = outcome


def check_token(settings: Settings, authorization: str | None) -> None:
    """Raise 401 unless no token is configured or ``authorization`` carries it."""
    if settings.api_token is None:
        return
    expected = f"Bearer {settings.api_token.get_secret_value()}".encode()
    if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
        raise QueryError(401, {"error": "missing or wrong bearer token"}, "unauthorized")


#: The largest version a query may wait for (a signed 64-bit integer, as JSON carries it).
MAX_VERSION = 2**63 - 1


def parse_min_version(raw: str | None) -> int | None:
    """``?min_version=`` as a positive int, None when absent; 400 for anything else."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_VERSION:  # JSON encoders stop at 64 bits: a larger one was a 500
        raise QueryError(
            400, {"error": f"min_version must be an integer from 1 to {MAX_VERSION}"}, "bad_request"
        )
    return value


def _version(value: Any) -> int | None:
    if isinstance(value, dict) and isinstance(value.get("version"), int | float):
        return int(value["version"])
    return None


def _unavailable(error: str, outcome: str, **extra: Any) -> QueryError:
    return QueryError(503, {"error": error, **extra}, outcome)


async def read_local(
    app: Any, query: LiveQuery, key: str, min_version: int | None, wait_max: float
) -> Any:
    """The owner's value of ``key``, waiting (bounded) for ``min_version``; None if absent.

    The table's whole value: the caller answers its public view.
    """
    deadline = time.monotonic() + wait_max
    while True:
        placement = locate(app, query.table, key)
        if not placement.serving:
            raise _unavailable("this worker is not the recovered owner of the key", "unavailable")
        value = query.table.get(key)
        version = _version(value)
        if min_version is None or (version is not None and version >= min_version):
            return value
        if time.monotonic() >= deadline:
            raise _unavailable(
                "version not reached",
                "version_timeout",
                min_version=min_version,
                version=version,
            )
        await asyncio.sleep(_POLL_SECONDS)


async def forward(view: View, placement: Placement, request: Request, wait_max: float) -> Response:
    """Send the request once to the owner and relay its answer (503 if it cannot be reached)."""
    assert placement.owner_url is not None
    app: Any = view.app
    target = f"{placement.owner_url.rstrip('/')}{request.rel_url}"
    headers = {FORWARDED_HEADER: str(app.conf.canonical_url)}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    timeout = aiohttp.ClientTimeout(total=wait_max + 5.0)

    async def relay() -> Response:
        async with app.http_client.get(target, headers=headers, timeout=timeout) as answer:
            body = await answer.read()
            relayed = {k: v for k, v in answer.headers.items() if k.startswith("X-CartLoom-")}
            if "Retry-After" in answer.headers:
                relayed["Retry-After"] = answer.headers["Retry-After"]
            return view.bytes(
                body, status=answer.status, content_type=answer.content_type, headers=relayed
            )

    try:
        try:
            return await relay()
        except aiohttp.ServerDisconnectedError:
            # A pooled connection the owner closed as idle (its head deadline) just as this
            # request went out: a GET is safe to send once more, on a fresh connection.
            return await relay()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _unavailable(
            "owner unreachable", "owner_unreachable", owner=placement.owner_url, detail=str(exc)
        ) from None


async def answer(view: View, request: Request, query: LiveQuery, settings: Settings) -> Response:
    """Serve one live query (the body of every registered ``GET`` view)."""
    app: Any = view.app
    started = time.perf_counter()
    route = "local"
    key = request.match_info[query.param]
    try:
        check_token(settings, request.headers.get("Authorization"))
        min_version = parse_min_version(request.query.get("min_version"))
        placement = locate(app, query.table, key)
        if not placement.local and FORWARDED_HEADER not in request.headers:
            if placement.owner_url is None:
                raise _unavailable("no worker owns the key's partition yet", "unavailable")
            route = "forwarded"
            response = await forward(view, placement, request, settings.query_wait_max_seconds)
            LIVE_QUERIES.labels(query.entity, "forwarded").inc()
            return response
        value = await read_local(app, query, key, min_version, settings.query_wait_max_seconds)
        headers = {SERVED_BY_HEADER: str(app.conf.canonical_url)}
        headers[PARTITION_HEADER] = str(placement.partition)
        if value is None:
            LIVE_QUERIES.labels(query.entity, "not_found").inc()
            body = {"error": query.not_found, query.param: key}
            return view.json(body, status=404, headers=headers)
        LIVE_QUERIES.labels(query.entity, "found").inc()
        return view.json(query.public.project(value), headers=headers)
    except QueryError as exc:
        LIVE_QUERIES.labels(query.entity, exc.outcome).inc()
        headers = {"Retry-After": "1"} if exc.status == 503 else {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="cartloom"'
        return view.json(exc.body, status=exc.status, headers=headers)
    finally:
        LIVE_QUERY_SECONDS.labels(query.entity, route).observe(time.perf_counter() - started)


def register_live_query(app: Any, path: str, query: LiveQuery, settings: Settings) -> type[View]:
    """Add ``GET path`` answering ``query`` on ``app``; return the view class."""

    class LiveQueryView(View):
        async def get(self, request: Request, **_: Any) -> Response:
            return await answer(self, request, query, settings)

    LiveQueryView.__name__ = LiveQueryView.__qualname__ = f"{query.entity.title()}Query"
    LiveQueryView.__doc__ = f"``GET {path}``: the {query.entity}'s current value from its owner."
    app.page(path)(LiveQueryView)
    return LiveQueryView
