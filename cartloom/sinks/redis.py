"""Redis sink: one pipeline per batch, each write a Lua script that refuses older versions.

Keys are ``cartloom:order:{id}``, ``cartloom:inventory:{sku}``, ``cartloom:product:{id}``:
hashes with ``version`` and ``doc`` (the view as JSON). Connection errors are retried by
redis-py's own ``Retry``; a batch that still fails is retried whole by the materialiser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from cartloom.settings import Settings
from cartloom.sinks.base import ViewChange, WriteOutcome

KEY_PREFIX: dict[str, str] = {
    "orders": "cartloom:order:",
    "inventory": "cartloom:inventory:",
    "products": "cartloom:product:",
}

# KEYS[1] = item key; ARGV[1] = version, ARGV[2] = document JSON.
# Returns 1 when written, 0 when the stored version is the same or newer.
_PUT_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2])
return 1
"""


def redis_key(entity: str, key: str) -> str:
    """The Redis key holding ``entity`` ``key``."""
    return f"{KEY_PREFIX[entity]}{key}"


def redis_client(settings: Settings) -> Redis:
    """A client with redis-py's retry on connection errors; shared by sink, reader and audit."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3)
    return Redis.from_url(
        settings.redis_url,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_timeout=5,
        socket_connect_timeout=3,
    )


class RedisSink:
    """Writes views to Redis hashes through a version-checking Lua script."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Redis | None = None
        self._script: Any = None

    async def start(self) -> None:
        """Create the client and register the script (loaded lazily by the pipeline)."""
        self._client = redis_client(self._settings)
        self._script = self._client.register_script(_PUT_IF_NEWER)

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Send the batch as one pipeline; raise if Redis cannot take it."""
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for change in changes:
                key = redis_key(change.entity, change.key)
                if change.document is None:
                    pipe.delete(key)
                else:
                    payload = orjson.dumps(change.document)
                    await self._script(keys=[key], args=[change.version, payload], client=pipe)
            results = await pipe.execute()
        outcome = WriteOutcome()
        for change, result in zip(changes, results, strict=True):
            if change.document is None:
                outcome.deleted += int(bool(result))
            elif result == 1:
                outcome.written += 1
            else:
                outcome.stale += 1
                outcome.stale_keys.append(change.key)
        return outcome
