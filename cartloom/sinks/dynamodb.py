"""DynamoDB sink: version-guarded conditional ``PutItem`` calls, many in flight at once.

``BatchWriteItem`` cannot carry a condition, so it could overwrite a newer item with an
older one; each change is a ``PutItem`` with ``attribute_not_exists(version) OR version <
:v``. A failed condition is a stale change, counted and skipped. Throttling and transient
errors are retried by botocore's own retry mode; anything else fails the batch, which the
materialiser retries whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cartloom.settings import Settings
from cartloom.sinks.base import KEY_ATTRIBUTE, ViewChange, WriteOutcome

_GUARD = "attribute_not_exists(#v) OR #v < :v"


def dynamodb_client_config(settings: Settings) -> AioConfig:
    """Client config shared by the sink, the table tools and the audit."""
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 4},
        max_pool_connections=max(10, settings.sink_concurrency),
        connect_timeout=3,
        read_timeout=10,
    )


def to_item(entity: str, change: ViewChange) -> dict[str, Any]:
    """The DynamoDB item for ``change``: scalar fields as attributes, the whole view as ``doc``."""
    assert change.document is not None
    item: dict[str, Any] = {}
    for name, value in change.document.items():
        if isinstance(value, bool):
            item[name] = {"BOOL": value}
        elif isinstance(value, int | float):
            item[name] = {"N": str(value)}
        elif isinstance(value, str):
            item[name] = {"S": value}
    item[KEY_ATTRIBUTE[entity]] = {"S": change.key}
    item["version"] = {"N": str(change.version)}
    item["doc"] = {"S": orjson.dumps(change.document).decode()}
    return item


class DynamoDBSink:
    """Writes views to ``{prefix}orders``, ``{prefix}inventory`` and ``{prefix}products``."""

    name = "dynamodb"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._exit = AsyncExitStack()
        self._client: Any = None
        self._limit = asyncio.Semaphore(settings.sink_concurrency)

    async def start(self) -> None:
        """Open the aiobotocore client."""
        session = get_session()
        self._client = await self._exit.enter_async_context(
            session.create_client(
                "dynamodb",
                endpoint_url=self._settings.dynamodb_endpoint,
                config=dynamodb_client_config(self._settings),
            )
        )

    async def stop(self) -> None:
        """Close the client."""
        await self._exit.aclose()
        self._client = None

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Write every change concurrently (bounded); raise if any write failed."""
        results = await asyncio.gather(*(self._write_one(change) for change in changes))
        outcome = WriteOutcome()
        for change, result in zip(changes, results, strict=True):
            if result == "written":
                outcome.written += 1
            elif result == "deleted":
                outcome.deleted += 1
            else:
                outcome.stale += 1
                outcome.stale_keys.append(change.key)
        return outcome

    async def _write_one(self, change: ViewChange) -> str:
        table = self._settings.dynamodb_table(change.entity)
        async with self._limit:
            if change.document is None:
                key = {KEY_ATTRIBUTE[change.entity]: {"S": change.key}}
                await self._client.delete_item(TableName=table, Key=key)
                return "deleted"
            try:
                await self._client.put_item(
                    TableName=table,
                    Item=to_item(change.entity, change),
                    ConditionExpression=_GUARD,
                    ExpressionAttributeNames={"#v": "version"},
                    ExpressionAttributeValues={":v": {"N": str(change.version)}},
                )
            except self._client.exceptions.ConditionalCheckFailedException:
                return "stale"
            return "written"
