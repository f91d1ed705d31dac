"""Redis sink: a batch in one call of a Lua script that refuses older versions per key.

Key layout (one hash per view, see ``docs/sinks.md``): ``cartloom:order:{order_id}``,
``cartloom:inventory:{sku}``, ``cartloom:product:{product_id}``, each with the fields
``version`` (integer) and ``doc`` (the view as JSON). Closed orders carry a TTL; every
other view is kept without one. Connection errors are retried by redis-py's own
``Retry``; a batch that still fails is retried by the materialiser. An error that belongs
to one key (a foreign value of another type at the key, a version that is not a number)
comes back in that key's place in the script's answer and fails that change alone: the
materialiser retries it a bounded number of times.

One call per batch rather than a pipeline of one call per change: redis-py spends most of
its time per command, packing it and parsing its reply, so one command carrying the whole
batch costs the client about a fifth as much per change (``docs/sinks.md``). Redis runs
a script to its end before serving anyone else, so ``CARTLOOM_SINK_BATCH_MAX`` bounds how
long one call holds it.
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

# One call writes a batch. KEYS[i] is the view key of change i, and ARGV[4i-3 .. 4i] its
# operation ('P' put if newer, 'R' delete then put, 'D' delete), version, document JSON and
# TTL in seconds (0 = none). The answer has one entry per key: 1 written (or deleted), 0
# stale (or nothing to delete), or an error reply that belongs to that key alone.
WRITE_VIEWS = """
local results = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 4
  local op = ARGV[at + 1]
  if op == 'D' then
    results[i] = redis.call('DEL', key)
  else
    if op == 'R' then
      redis.call('DEL', key)
    end
    local current = redis.pcall('HGET', key, 'version')
    if type(current) == 'table' then
      results[i] = current
    elseif current and tonumber(current) == nil then
      results[i] = {err = 'ERR the version field at ' .. key .. ' is not a number'}
    elseif current and tonumber(current) >= tonumber(ARGV[at + 2]) then
      results[i] = 0
    else
      redis.call('HSET', key, 'version', ARGV[at + 2], 'doc', ARGV[at + 3])
      local ttl = tonumber(ARGV[at + 4])
      if ttl > 0 then
        redis.call('EXPIRE', key, ttl)
      else
        redis.call('PERSIST', key)
      end
      results[i] = 1
    end
  end
end
return results
"""


def write_views_args(
    changes: Sequence[ViewChange], names: RedisKeys, closed_order_ttl: int
) -> tuple[list[str], list[bytes | int | str]]:
    """The keys and arguments of one :data:`WRITE_VIEWS` call writing ``changes``."""
    keys: list[str] = []
    args: list[bytes | int | str] = []
    for change in changes:
        keys.append(names.view(change.entity, change.key))
        if change.document is None:
            args += ("D", 0, b"", 0)
        else:
            expiry = redis_ttl_seconds(change.entity, change.document, closed_order_ttl)
            op = "R" if change.replaces else "P"
            args += (op, change.version, orjson.dumps(change.document), expiry)
    return keys, args


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


class RedisSink:
    """Writes views to Redis hashes, a batch in one call of a version-checking Lua script."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._names = RedisKeys(settings.namespace)
        self._client: Redis | None = None
        self._script: Any = None

    async def start(self) -> None:
        """Create the client and register the script (redis-py loads it on first use)."""
        self._client = redis_client(self._settings)
        self._script = self._client.register_script(WRITE_VIEWS)

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Send the batch as one script call; raise if Redis cannot take it.

        A failed call raises (nothing is known to be taken; the batch is retried, and
        what was taken comes back stale); an error the script returns for one key raises
        :class:`PartialWrite` for just those changes.
        """
        assert self._client is not None
        keys, args = write_views_args(
            changes, self._names, self._settings.redis_closed_order_ttl_seconds
        )
        results = await self._script(keys=keys, args=args)
        outcome = WriteOutcome()
        failed: list[ViewChange] = []
        errors: list[BaseException] = []
        for change, result in zip(changes, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(change)
                errors.append(result)
            elif change.document is None:
                outcome.deleted += result
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
