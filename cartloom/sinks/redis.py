"""Redis sink: one pipeline per batch, each write a Lua script that refuses older versions.

Key layout (one hash per view, see ``docs/sinks.md``): ``cartloom:order:{order_id}``,
``cartloom:inventory:{sku}``, ``cartloom:product:{product_id}``, each with the fields
``version`` (integer) and ``doc`` (the view as JSON). Closed orders carry a TTL; every
other view is kept without one. Connection errors are retried by redis-py's own
``Retry``; a batch that still fails is retried by the materialiser. A command Redis
answers with an error for one key (a foreign value of another type at the key, a script
error) fails that change alone: the materialiser retries it a bounded number of times.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthorizationError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings
from cartloom.sinks.base import (
    PartialWrite,
    StoredView,
    ViewChange,
    WriteOutcome,
    redis_ttl_seconds,
)

#: The default deployment's keys (no namespace).
DEFAULT_KEYS = RedisKeys()

# KEYS[1] = item key; ARGV[1] = version, ARGV[2] = document JSON, ARGV[3] = TTL (0 = none).
# Returns 1 when written, 0 when the stored version is the same or newer.
PUT_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""


#: Errors of the server, not of one key: retried without bound.
STORE_ERRORS = (
    RedisConnectionError,  # includes BusyLoadingError (LOADING) and AuthenticationError
    RedisTimeoutError,
    ReadOnlyError,
    MasterDownError,
    TryAgainError,
    ClusterDownError,
    OutOfMemoryError,
    NoPermissionError,
    AuthorizationError,
    OSError,
)


def store_unavailable(error: BaseException) -> bool:
    """Whether ``error`` is Redis (or the way to it) failing as a whole, not one key."""
    if isinstance(error, STORE_ERRORS):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(("BUSY", "NOSCRIPT"))


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


def parse_view(version: bytes | None, doc: bytes | None) -> StoredView | None:
    """A hash's ``version`` and ``doc`` fields as a :class:`StoredView` (None if absent)."""
    if version is None:
        return None
    try:
        document = orjson.loads(doc) if doc is not None else None
    except orjson.JSONDecodeError:
        document = None
    return StoredView(int(version), document if isinstance(document, dict) else None)


async def read_views(
    client: Redis, entity: str, keys: Iterable[str], names: RedisKeys = DEFAULT_KEYS
) -> dict[str, StoredView]:
    """The stored views of ``keys`` (absent keys are left out), in one pipeline."""
    wanted = list(keys)
    async with client.pipeline(transaction=False) as pipe:
        for key in wanted:
            pipe.hmget(names.view(entity, key), ["version", "doc"])
        rows = await pipe.execute()
    views = {}
    for key, (version, doc) in zip(wanted, rows, strict=True):
        view = parse_view(version, doc)
        if view is not None:
            views[key] = view
    return views


async def scan_keys(
    client: Redis, entity: str, names: RedisKeys = DEFAULT_KEYS
) -> AsyncIterator[str]:
    """Every key of ``entity`` in Redis (ids, without the prefix), by ``SCAN``."""
    prefix = names.view_prefix(entity)
    async for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        yield raw.decode()[len(prefix) :]


def _commands(changes: Sequence[ViewChange]) -> list[bool]:
    """Per pipeline command, whether it is the one whose result judges its change."""
    judged: list[bool] = []
    for change in changes:
        if change.document is not None and change.replaces:
            judged.append(False)
        judged.append(True)
    return judged


class RedisSink:
    """Writes views to Redis hashes through a version-checking Lua script."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._names = RedisKeys(settings.namespace)
        self._client: Redis | None = None
        self._script: Any = None

    async def start(self) -> None:
        """Create the client and register the script (loaded lazily by the pipeline)."""
        self._client = redis_client(self._settings)
        self._script = self._client.register_script(PUT_IF_NEWER)

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Send the batch as one pipeline; raise if Redis cannot take it.

        A connection failure raises from ``execute`` (nothing is known to be taken, the
        whole batch is retried); a command Redis answered with an error raises
        :class:`PartialWrite` for just the failed changes.
        """
        assert self._client is not None
        ttl = self._settings.redis_closed_order_ttl_seconds
        async with self._client.pipeline(transaction=False) as pipe:
            for change in changes:
                key = self._names.view(change.entity, change.key)
                if change.document is None:
                    pipe.delete(key)
                else:
                    if change.replaces:
                        pipe.delete(key)
                    payload = orjson.dumps(change.document)
                    expiry = redis_ttl_seconds(change.entity, change.document, ttl)
                    await self._script(
                        keys=[key], args=[change.version, payload, expiry], client=pipe
                    )
            results = await pipe.execute(raise_on_error=False)
        outcome = WriteOutcome()
        failed: list[ViewChange] = []
        errors: list[BaseException] = []
        # A replacing change sent two commands (DEL, then the script): judge by the script.
        results = [r for c, r in zip(_commands(changes), results, strict=True) if c]
        for change, result in zip(changes, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(change)
                errors.append(result)
            elif change.document is None:
                outcome.deleted += int(bool(result))
            elif result == 1:
                outcome.written += 1
            else:
                outcome.stale += 1
                outcome.stale_keys.append(change.key)
        if errors:
            raise PartialWrite(outcome, failed, errors[0], errors)
        return outcome

    def store_unavailable(self, error: BaseException) -> bool:
        """See :func:`store_unavailable`."""
        return store_unavailable(error)
