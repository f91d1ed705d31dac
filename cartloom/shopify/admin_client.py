"""Async client for Shopify's GraphQL Admin API, honouring its cost-based throttle.

Every request first takes its estimated cost from a rate budget shared by all worker
replicas (a token bucket in Redis, refilled at the shop's restore rate), so scaling out
does not get the app throttled. Each answer's ``extensions.cost.throttleStatus`` brings
the shared bucket in line with what Shopify reports; a ``THROTTLED`` answer waits for the
points to come back and retries. Transport errors and 5xx answers are retried with
capped, jittered back-off. The API version is pinned by settings.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Protocol

import aiohttp
import orjson
from redis.asyncio import Redis

from cartloom.core import metrics
from cartloom.core.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class AdminApiError(RuntimeError):
    """Shopify answered with errors that retrying will not fix (or retries ran out)."""

    def __init__(self, message: str, errors: Any = None) -> None:
        super().__init__(message)
        self.errors = errors


class AdminApiUnavailable(AdminApiError):  # noqa: N818 - a state of the API, like the others
    """The Admin API as a whole cannot be used now; callers wait and try again.

    No answer after the retries (down, 5xx, throttled throughout), or it refuses this app
    (401, 403, 404: token, scopes, URL). Nothing about the request itself is wrong.
    """


class RateBudget(Protocol):
    """Cost points available to this app for one shop."""

    async def take(self, cost: float) -> float:
        """Take ``cost`` points if available and return 0, else return seconds to wait."""

    async def observe(self, available: float) -> None:
        """Align the budget with Shopify's ``currentlyAvailable``."""


# KEYS[1] bucket; ARGV: capacity, restore rate (points/s), cost. Returns wait (s) as string.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or capacity)
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or now)
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(wait)
"""
# KEYS[1] bucket; ARGV[1] Shopify's currentlyAvailable: never believe more than Shopify.
_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[1])
local tokens = math.min(held, tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


class RedisRateBudget:
    """A token bucket in Redis, one per shop, shared by every replica (Redis's clock)."""

    def __init__(
        self,
        redis: Redis,
        shop: str,
        capacity: float,
        restore_rate: float,
        *,
        key: str | None = None,
    ) -> None:
        self._redis = redis
        self._key = key or RedisKeys().api_budget(shop)  # a namespace passes its own
        self._capacity = capacity
        self._rate = restore_rate
        self._take = redis.register_script(_TAKE)
        self._observe = redis.register_script(_OBSERVE)

    async def take(self, cost: float) -> float:
        """See :meth:`RateBudget.take`."""
        cost = min(cost, self._capacity)
        wait = await self._take(keys=[self._key], args=[self._capacity, self._rate, cost])
        return float(wait)

    async def observe(self, available: float) -> None:
        """See :meth:`RateBudget.observe`."""
        await self._observe(keys=[self._key], args=[available])


class AdminClient:
    """GraphQL Admin API calls: ``await client.execute(query, variables, name, cost)``."""

    def __init__(
        self,
        base_url: str,
        access_token: str,
        api_version: str,
        budget: RateBudget | None = None,
        *,
        max_attempts: int = 8,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = f"{base_url.rstrip('/')}/admin/api/{api_version}/graphql.json"
        self._token = access_token
        self._budget = budget
        self._max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AdminClient({self.endpoint!r})"  # never the token

    async def __aenter__(self) -> AdminClient:
        self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        operation: str | None = None,
        estimated_cost: float = 10.0,
    ) -> dict[str, Any]:
        """Run one operation and return its ``data``; raise :class:`AdminApiError` on errors."""
        body = orjson.dumps(
            {"query": query, "variables": variables or {}, "operationName": operation}
        )
        for attempt in range(self._max_attempts):
            await self._wait_for_budget(estimated_cost)
            answer = await self._post(body)
            if answer is None:  # transport error or 5xx
                metrics.SHOPIFY_API_REQUESTS.labels(outcome="error").inc()
                await asyncio.sleep(_backoff(attempt))
                continue
            cost = (answer.get("extensions") or {}).get("cost") or {}
            await self._observe(cost)
            errors = answer.get("errors")
            if errors and _throttled(errors):
                metrics.SHOPIFY_API_REQUESTS.labels(outcome="throttled").inc()
                await asyncio.sleep(_throttle_wait(cost, estimated_cost))
                continue
            if errors:
                metrics.SHOPIFY_API_REQUESTS.labels(outcome="error").inc()
                raise AdminApiError(f"{operation or 'query'} failed: {errors}", errors)
            metrics.SHOPIFY_API_REQUESTS.labels(outcome="ok").inc()
            metrics.SHOPIFY_API_COST.inc(float(cost.get("actualQueryCost") or 0))
            data = answer.get("data")
            return data if isinstance(data, dict) else {}
        raise AdminApiUnavailable(
            f"{operation or 'query'}: no answer after {self._max_attempts} tries"
        )

    async def _wait_for_budget(self, cost: float) -> None:
        if self._budget is None:
            return
        started = time.monotonic()
        while (wait := await self._budget.take(cost)) > 0:  # noqa: ASYNC110 - the bucket is in Redis
            await asyncio.sleep(min(wait, 10.0))
        metrics.SHOPIFY_API_WAIT_SECONDS.observe(time.monotonic() - started)

    async def _observe(self, cost: dict[str, Any]) -> None:
        status = cost.get("throttleStatus") or {}
        available = status.get("currentlyAvailable")
        if self._budget is not None and isinstance(available, int | float):
            await self._budget.observe(float(available))

    async def _post(self, body: bytes) -> dict[str, Any] | None:
        assert self._http is not None, "use `async with AdminClient(...)`"
        headers = {"Content-Type": "application/json", "X-Shopify-Access-Token": self._token}
        try:
            async with self._http.post(self.endpoint, data=body, headers=headers) as response:
                if response.status >= 500 or response.status == 429:
                    log.info("Admin API answered %s; retrying", response.status)
                    return None
                payload = await response.read()
                if response.status in (401, 403, 404):
                    raise AdminApiUnavailable(
                        f"Admin API answered {response.status}: {payload[:200]!r}"
                    )
                if response.status >= 400:
                    raise AdminApiError(f"Admin API answered {response.status}: {payload[:200]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("Admin API unreachable (%s); retrying", type(exc).__name__)
            return None
        answer = orjson.loads(payload)
        return answer if isinstance(answer, dict) else None


def _throttled(errors: Any) -> bool:
    return isinstance(errors, list) and any(
        isinstance(e, dict) and (e.get("extensions") or {}).get("code") == "THROTTLED"
        for e in errors
    )


def _throttle_wait(cost: dict[str, Any], estimated: float) -> float:
    status = cost.get("throttleStatus") or {}
    requested = float(cost.get("requestedQueryCost") or estimated)
    available = float(status.get("currentlyAvailable") or 0)
    rate = float(status.get("restoreRate") or 50)
    return max(0.05, (requested - available) / rate)


def _backoff(attempt: int) -> float:
    return float(min(10.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))  # noqa: S311
