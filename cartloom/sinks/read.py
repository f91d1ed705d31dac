"""Reading materialised views as a storefront would: Redis first, DynamoDB on a miss.

``ViewReader.get("orders", order_id)`` returns the view document or None. A Redis miss
(never cached, expired by the TTL policy, or Redis unreachable) falls back to DynamoDB;
what DynamoDB returns is put back into Redis through the sinks' own version-checking
script, so a refill can never overwrite a newer view the sink wrote in the meantime.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from aiobotocore.session import get_session
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cartloom.core import metrics
from cartloom.core.redis_keys import RedisKeys
from cartloom.core.settings import Settings
from cartloom.sinks.base import KEY_ATTRIBUTE, StoredView, ViewChange
from cartloom.sinks.dynamodb import dynamodb_client_config, from_item
from cartloom.sinks.redis import WRITE_VIEWS, read_views, redis_client, write_views_args

log = logging.getLogger(__name__)


class ViewReader:
    """Reads views of ``orders``, ``inventory`` and ``products``; use as an async context."""

    def __init__(self, settings: Settings, *, refill: bool = True, consistent: bool = False):
        self._settings = settings
        self._refill = refill
        self._consistent = consistent
        self._exit = AsyncExitStack()
        self._redis: Redis | None = None
        self._dynamodb: Any = None
        self._script: Any = None

    async def start(self) -> None:
        """Open the Redis and DynamoDB clients."""
        self._redis = redis_client(self._settings)
        self._exit.push_async_callback(self._redis.aclose)
        self._script = self._redis.register_script(WRITE_VIEWS)
        self._dynamodb = await self._exit.enter_async_context(
            get_session().create_client(
                "dynamodb",
                endpoint_url=self._settings.dynamodb_endpoint,
                config=dynamodb_client_config(self._settings),
            )
        )

    async def stop(self) -> None:
        """Close both clients."""
        await self._exit.aclose()

    async def __aenter__(self) -> ViewReader:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def get(self, entity: str, key: str) -> dict[str, Any] | None:
        """The view of ``key``, or None when neither store has it.

        Raises ``KeyError`` for an unknown entity; DynamoDB errors propagate (a reader
        must not mistake an outage for "not found").
        """
        if entity not in KEY_ATTRIBUTE:
            raise KeyError(f"unknown entity {entity!r}; expected one of {sorted(KEY_ATTRIBUTE)}")
        cached = await self._from_redis(entity, key)
        if cached is not None and cached.document is not None:
            metrics.VIEW_READS.labels(entity=entity, source="redis").inc()
            return cached.document
        stored = await self._from_dynamodb(entity, key)
        if stored is None or stored.document is None:
            metrics.VIEW_READS.labels(entity=entity, source="missing").inc()
            return None
        metrics.VIEW_READS.labels(entity=entity, source="dynamodb").inc()
        if self._refill:
            await self._put_back(entity, key, stored)
        return stored.document

    async def _from_redis(self, entity: str, key: str) -> StoredView | None:
        assert self._redis is not None
        try:
            names = RedisKeys(self._settings.namespace)
            return (await read_views(self._redis, entity, [key], names)).get(key)
        except RedisError as exc:
            metrics.VIEW_READS.labels(entity=entity, source="redis_error").inc()
            log.warning("Redis unavailable, reading %s %s from DynamoDB: %s", entity, key, exc)
            return None

    async def _from_dynamodb(self, entity: str, key: str) -> StoredView | None:
        response = await self._dynamodb.get_item(
            TableName=self._settings.dynamodb_table(entity),
            Key={KEY_ATTRIBUTE[entity]: {"S": key}},
            ConsistentRead=self._consistent,
        )
        item = response.get("Item")
        return from_item(item) if item else None

    async def _put_back(self, entity: str, key: str, view: StoredView) -> None:
        assert view.document is not None
        keys, args = write_views_args(
            [ViewChange(entity, key, view.version, view.document)],
            RedisKeys(self._settings.namespace),
            self._settings.redis_closed_order_ttl_seconds,
        )
        try:
            (result,) = await self._script(keys=keys, args=args)
            if isinstance(result, RedisError):  # an error of this key alone, such as WRONGTYPE
                raise result
        except RedisError as exc:  # the read succeeded; the cache stays cold
            log.warning("could not refill Redis with %s %s: %s", entity, key, exc)
