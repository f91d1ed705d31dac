"""DynamoDB sink: version-guarded conditional puts, grouped into ``TransactWriteItems`` calls.

The calls go through :class:`cartloom.sinks.dynamodb_client.DynamoDBWriteClient` (orjson,
botocore's signer and aiohttp: about half botocore's CPU per call); everything else here
(tables, reads, the audit) uses aiobotocore.

``BatchWriteItem`` cannot carry a condition, so it could overwrite a newer item with an
older one; each change is a ``Put`` with ``attribute_not_exists(version) OR version < :v``,
up to ``dynamodb_write_group`` of them per ``TransactWriteItems`` (1: one ``PutItem`` each).
A failed condition is a stale change, counted and skipped; a transaction it cancelled is
sent again without it. What fails otherwise (throttling, transient errors) is handed back
to the materialiser as a :class:`PartialWrite`, which retries just those changes. A
change DynamoDB can never take (an item over 400 KB, a ``ValidationException``) is raised
as :class:`ChangeRefused`, which the materialiser sets aside to the sinks' dead-letter
topic. docs/sinks.md has the why of each.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import aiohttp
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from cartloom.core.settings import Settings
from cartloom.sinks.base import (
    KEY_ATTRIBUTE,
    TTL_ATTRIBUTE,
    ChangeRefused,
    PartialWrite,
    StoredView,
    ViewChange,
    WriteOutcome,
    dynamodb_expiry,
)
from cartloom.sinks.dynamodb_client import DynamoDBCallError, DynamoDBWriteClient

log = logging.getLogger(__name__)

GUARD = "attribute_not_exists(#v) OR #v < :v"
#: Errors of the table or the account, not of one item: retried without bound (with the
#: store unreachable, a missing table or revoked credentials no item can be written).
STORE_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "InternalServerError",
        "ServiceUnavailable",
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
    }
)


#: DynamoDB caps a transaction at 4 MB; groups stay under this (the items' estimated size).
GROUP_BYTES = 3_000_000
#: Errors of a ``PutItem`` that refuse the item itself: it can never be written as it is.
REFUSING_ERRORS = frozenset({"ValidationException", "ItemCollectionSizeLimitExceededException"})
#: Cancellation reasons that refuse the item itself: it can never be written as it is.
REFUSING_CANCELLATIONS = frozenset({"ValidationError", "ItemCollectionSizeLimitExceeded"})
#: Cancellation reasons of the table or of other writers, not of the item: retried like
#: throttling, without bound.
PASSING_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"}
)


class CancelledInTransactionError(Exception):
    """One change of a cancelled ``TransactWriteItems``, with DynamoDB's reason code for it."""

    def __init__(self, code: str) -> None:
        super().__init__(f"TransactWriteItems cancelled this item: {code}")
        self.code = code


def item_outcome(code: str) -> str | Exception:
    """What a cancellation reason other than ``None`` means for its change."""
    if code == "ConditionalCheckFailed":
        return "stale"
    if code in REFUSING_CANCELLATIONS:
        return ChangeRefused(f"DynamoDB TransactWriteItems: {code}")
    return CancelledInTransactionError(code)


def store_unavailable(error: BaseException) -> bool:
    """Whether ``error`` is DynamoDB (or the way to it) failing as a whole, not one item.

    Knows both clients' errors: aiobotocore's (tables, reads, audit) and the sink's write
    client's; both name DynamoDB's error by the same code.
    """
    if isinstance(error, CancelledInTransactionError):
        return error.code in PASSING_CANCELLATIONS
    if isinstance(error, DynamoDBCallError):
        # An answer that is not DynamoDB's own names no item: the way to the store fails.
        return not error.code or error.code in STORE_ERRORS or error.status >= 500
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in STORE_ERRORS or (isinstance(status, int) and status >= 500)
    return isinstance(
        error,
        BotocoreConnectionError
        | HTTPClientError
        | NoCredentialsError
        | aiohttp.ClientError
        | OSError
        | TimeoutError,
    )


def dynamodb_client_config(settings: Settings) -> AioConfig:
    """Client config shared by the sink, the table tools, the reader and the audit."""
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 4},
        max_pool_connections=max(10, settings.sink_concurrency),
        connect_timeout=3,
        read_timeout=10,
    )


#: The view fields an item carries as attributes of their own, beside its key, ``version``,
#: ``doc`` and the TTL attribute: the ones a secondary index or a filter would use. Every
#: other field is read from ``doc``, as the readers and the audit do. Copying every scalar
#: made items twice the size: DynamoDB bills a write by the KB (a transaction twice over),
#: and the sink and the endpoint handle every attribute (docs/sinks.md, What an item holds).
ITEM_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "orders": ("status", "created_at", "updated_at"),
    "inventory": ("on_hand", "reserved", "available", "updated_at"),
    "products": ("status", "updated_at"),
}


def attribute_value(value: Any) -> dict[str, Any] | None:
    """The typed DynamoDB value of a JSON scalar; None for anything else (or NaN, infinity).

    Views are decoded JSON, so exact types: a check of ``type(value)`` costs half of the
    isinstance chain.
    """
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is int:
        return {"N": str(value)}
    if kind is bool:
        return {"BOOL": value}
    if kind is float and math.isfinite(value):
        return {"N": str(value)}
    return None


def to_item(entity: str, change: ViewChange, closed_ttl: int = 0) -> dict[str, Any]:
    """The DynamoDB item for ``change``: its key, ``version``, the whole view as ``doc``.

    The fields :data:`ITEM_ATTRIBUTES` names for the entity are attributes of their own when
    the view holds a scalar there. A closed order gets the TTL attribute when
    ``closed_ttl`` > 0.
    """
    document = change.document
    assert document is not None
    item: dict[str, Any] = {
        KEY_ATTRIBUTE[entity]: {"S": change.key},
        "version": {"N": str(change.version)},
        "doc": {"S": orjson.dumps(document).decode()},
    }
    for name in ITEM_ATTRIBUTES[entity]:
        value = attribute_value(document.get(name))
        if value is not None:
            item[name] = value
    expiry = dynamodb_expiry(entity, document, closed_ttl)
    if expiry is not None:
        item[TTL_ATTRIBUTE] = {"N": str(expiry)}
    return item


def from_item(item: dict[str, Any]) -> StoredView:
    """The :class:`StoredView` of a DynamoDB item written by :func:`to_item`."""
    try:
        document = orjson.loads(item["doc"]["S"]) if "doc" in item else None
    except orjson.JSONDecodeError:
        document = None
    return StoredView(int(item["version"]["N"]), document if isinstance(document, dict) else None)


async def read_items(
    client: Any, settings: Settings, entity: str, keys: Iterable[str]
) -> dict[str, StoredView]:
    """The stored views of ``keys`` (absent ones left out), by consistent ``BatchGetItem``."""
    table = settings.dynamodb_table(entity)
    attribute = KEY_ATTRIBUTE[entity]
    wanted = list(dict.fromkeys(keys))
    found: dict[str, StoredView] = {}
    for start in range(0, len(wanted), 100):
        request: dict[str, Any] = {
            table: {
                "Keys": [{attribute: {"S": key}} for key in wanted[start : start + 100]],
                "ConsistentRead": True,
            }
        }
        while request:
            response = await client.batch_get_item(RequestItems=request)
            for item in response["Responses"].get(table, []):
                found[item[attribute]["S"]] = from_item(item)
            request = response.get("UnprocessedKeys") or {}
    return found


async def scan_items(
    client: Any, settings: Settings, entity: str
) -> AsyncIterator[tuple[str, StoredView]]:
    """Every item of ``entity``'s table, by a consistent paginated ``Scan``."""
    attribute = KEY_ATTRIBUTE[entity]
    paginator = client.get_paginator("scan")
    pages = paginator.paginate(
        TableName=settings.dynamodb_table(entity),
        ProjectionExpression="#k, version, doc",
        ExpressionAttributeNames={"#k": attribute},
        ConsistentRead=True,
    )
    async for page in pages:
        for item in page.get("Items", []):
            yield item[attribute]["S"], from_item(item)


#: One change to write, with its ``PutItem`` request (``None``: a deletion).
_Write = tuple[ViewChange, dict[str, Any] | None]


class DynamoDBSink:
    """Writes views to ``{prefix}orders``, ``{prefix}inventory`` and ``{prefix}products``."""

    name = "dynamodb"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tables = {entity: settings.dynamodb_table(entity) for entity in KEY_ATTRIBUTE}
        self._closed_ttl = settings.dynamodb_closed_order_ttl_seconds
        self._client = DynamoDBWriteClient(settings)
        self._limit = asyncio.Semaphore(settings.sink_concurrency)

    async def start(self) -> None:
        """Open the write client."""
        await self._client.start()

    async def stop(self) -> None:
        """Close the client."""
        await self._client.stop()

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Write every change (in groups, and groups concurrently, bounded); then report.

        Every call finishes before this returns, so a retry never races the previous
        attempt; the changes that failed are raised as :class:`PartialWrite`.
        """
        parts = self._parts(changes)
        results = await asyncio.gather(
            *(self._write_part(part) for part in parts), return_exceptions=True
        )
        outcome = WriteOutcome()
        failed: list[ViewChange] = []
        errors: list[BaseException] = []
        for part, result in zip(parts, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and the like are not retried here
            each = [result] * len(part) if isinstance(result, Exception) else result
            for (change, _), taken in zip(part, each, strict=True):
                if isinstance(taken, Exception):
                    failed.append(change)
                    errors.append(taken)
                elif taken == "written":
                    outcome.written += 1
                elif taken == "deleted":
                    outcome.deleted += 1
                else:
                    outcome.stale += 1
                    outcome.stale_keys.append(change.key)
        if errors:
            raise PartialWrite(outcome, failed, errors[0], errors)
        return outcome

    def _parts(self, changes: Sequence[ViewChange]) -> list[list[_Write]]:
        """Deletions one by one; documents in groups for one ``TransactWriteItems`` each."""
        most = self._settings.dynamodb_write_group
        parts: list[list[_Write]] = []
        group: list[_Write] = []
        size = 0
        for change in changes:
            if change.document is None:
                parts.append([(change, None)])
                continue
            request = self._put_request(change)
            weight = 2 * len(request["Item"]["doc"]["S"]) + 512  # the doc, its fields, the rest
            if group and (len(group) == most or size + weight > GROUP_BYTES):
                parts.append(group)
                group, size = [], 0
            group.append((change, request))
            size += weight
        if group:
            parts.append(group)
        return parts

    async def _write_part(self, part: list[_Write]) -> list[str | Exception]:
        async with self._limit:
            if len(part) == 1:
                return [await self._write_one(*part[0])]
            return await self._write_group(part)

    async def _write_group(self, group: list[_Write]) -> list[str | Exception]:
        """One ``TransactWriteItems``; a cancelled one is sent again without its refusals.

        DynamoDB cancels the whole transaction when one condition fails, and says which
        (``CancellationReasons``, one per item, ``None`` for the items that were fine). A
        failed version guard is a stale change; the rest are sent again. A request refused
        as a whole (``ValidationException``: an item too large, say) is written change by
        change, so only the change at fault is set aside.
        """
        taken: list[str | Exception] = ["written"] * len(group)
        pending = list(range(len(group)))
        while pending:
            items = [{"Put": group[index][1]} for index in pending]
            try:
                await self._client.call("TransactWriteItems", {"TransactItems": items})
            except DynamoDBCallError as exc:
                if exc.code == "ValidationException":
                    return await self._one_by_one(group)
                codes = exc.cancellation_codes
                if (
                    exc.code != "TransactionCanceledException"
                    or codes is None
                    or len(codes) != len(pending)
                ):
                    raise  # no reason per item to learn from
                again = []
                for index, code in zip(pending, codes, strict=True):
                    if code == "None":
                        again.append(index)
                    else:
                        taken[index] = item_outcome(code)
                if len(again) == len(pending):
                    raise  # nothing refused, nothing to learn: the caller's back-off retries
                pending = again
                continue
            pending = []
        return taken

    async def _one_by_one(self, group: list[_Write]) -> list[str | Exception]:
        taken: list[str | Exception] = []
        for change, request in group:
            try:
                taken.append(await self._write_one(change, request))
            except Exception as exc:
                taken.append(exc)
        return taken

    def _put_request(self, change: ViewChange) -> dict[str, Any]:
        """The ``PutItem`` of ``change``, version-guarded unless the key starts over."""
        request: dict[str, Any] = {
            "TableName": self._tables[change.entity],
            "Item": to_item(change.entity, change, self._closed_ttl),
        }
        if not change.replaces:  # a key that starts over after a deletion takes any item
            request["ConditionExpression"] = GUARD
            request["ExpressionAttributeNames"] = {"#v": "version"}
            request["ExpressionAttributeValues"] = {":v": {"N": str(change.version)}}
        return request

    async def _write_one(self, change: ViewChange, request: dict[str, Any] | None) -> str:
        """One ``PutItem`` (``request``), or a ``DeleteItem`` for a deletion (``None``)."""
        if request is None:
            key = {KEY_ATTRIBUTE[change.entity]: {"S": change.key}}
            await self._client.call(
                "DeleteItem", {"TableName": self._tables[change.entity], "Key": key}
            )
            return "deleted"
        try:
            await self._client.call("PutItem", request)
        except DynamoDBCallError as exc:
            if exc.code == "ConditionalCheckFailedException":
                return "stale"
            if exc.code in REFUSING_ERRORS:
                raise ChangeRefused(f"DynamoDB {exc.code}: {exc.message}") from exc
            raise
        return "written"

    def store_unavailable(self, error: BaseException) -> bool:
        """See :func:`store_unavailable`."""
        return store_unavailable(error)
