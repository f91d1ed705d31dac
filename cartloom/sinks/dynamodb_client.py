"""The DynamoDB sink's write client: DynamoDB's JSON protocol, signed by botocore, over aiohttp.

The sink's writes are ``TransactWriteItems`` of up to 100 conditional puts (or one
``PutItem`` per change, ``dynamodb_write_group=1``), whose request CartLoom builds itself
(:func:`cartloom.sinks.dynamodb.to_item`, the version guard). What is left to do per call
is small, so it is done here with the libraries CartLoom already has:

- the body is encoded with orjson (about 0.6 µs per item of a transaction, against 4.4 µs
  for the standard ``json`` that aiodynamo, the client used before, is fixed to);
- botocore's ``SigV4Auth`` signs it with the credentials of botocore's own chain
  (environment, profiles, web identity on Kubernetes, container and instance metadata),
  so the write path authenticates exactly as every other AWS call of CartLoom does;
- one keep-alive aiohttp session posts it.

aiobotocore spends about twice this per call: it validates, serialises, runs its event
hooks and walks its model for every call and every attribute (``bench/dynamodb_clients.py``).
The table tools, the reader and the audit keep aiobotocore (few calls, paginators, waiters,
the control plane).

No call is retried here. A failed call raises, and the materialiser's back-off retries
what failed: one place for retries, with one policy (``docs/sinks.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiobotocore.session import get_session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import NoCredentialsError

from cartloom.core.settings import Settings

CONTENT_TYPE = "application/x-amz-json-1.0"
TARGET_PREFIX = "DynamoDB_20120810."


class DynamoDBCallError(Exception):
    """DynamoDB answered a call with an error.

    ``code`` is DynamoDB's error type without its namespace (``ConditionalCheckFailedException``,
    ``TransactionCanceledException``...), the same code botocore reports, or ``""`` when the
    answer is not DynamoDB's JSON (a proxy's page, an endpoint checking signatures its own
    way); ``cancellation_codes`` holds a cancelled transaction's reason per item (``"None"``
    for the items that were fine).
    """

    def __init__(
        self, status: int, code: str, message: str, cancellation_codes: list[str] | None = None
    ) -> None:
        super().__init__(f"DynamoDB {code} (HTTP {status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.cancellation_codes = cancellation_codes


def call_error(status: int, body: bytes) -> DynamoDBCallError:
    """The :class:`DynamoDBCallError` of an answer with HTTP ``status`` and ``body``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return DynamoDBCallError(status, "", body[:200].decode(errors="replace"))
    code = str(data.get("__type", "")).rpartition("#")[2]
    message = str(data.get("message") or data.get("Message") or "")
    reasons = data.get("CancellationReasons")
    codes = None
    if isinstance(reasons, list):
        codes = [str(reason.get("Code", "None")) for reason in reasons if isinstance(reason, dict)]
    return DynamoDBCallError(status, code, message, codes)


class DynamoDBWriteClient:
    """``TransactWriteItems``, ``PutItem`` and ``DeleteItem`` calls on keep-alive connections."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._credentials: Any = None
        self._region = ""
        self._url = ""

    async def start(self) -> None:
        """Resolve credentials and region through botocore; open the connection pool."""
        session = get_session()
        self._credentials = await session.get_credentials()
        if self._credentials is None:
            raise NoCredentialsError()
        self._region = session.get_config_variable("region") or ""
        if not self._region:
            raise ValueError("no AWS region is set for DynamoDB (AWS_REGION or AWS_DEFAULT_REGION)")
        endpoint = self._settings.dynamodb_endpoint
        self._url = endpoint or f"https://dynamodb.{self._region}.amazonaws.com"
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(10, self._settings.sink_concurrency)),
            timeout=aiohttp.ClientTimeout(total=10, connect=3),
        )

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.close()
            await asyncio.sleep(0)  # let aiohttp close its transports before the loop moves on
        self._http = None

    async def call(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``action`` with ``payload`` (DynamoDB's JSON); raise :class:`DynamoDBCallError`.

        A connection failure or timeout raises aiohttp's or asyncio's own error.
        """
        if self._http is None:
            raise RuntimeError("DynamoDBWriteClient.start() was not called")
        body = orjson.dumps(payload)
        headers = await self._signed_headers(action, body)
        async with self._http.post(self._url, data=body, headers=headers) as response:
            answer = await response.read()
        if response.status != 200:
            raise call_error(response.status, answer)
        result: dict[str, Any] = orjson.loads(answer) if answer else {}
        return result

    async def _signed_headers(self, action: str, body: bytes) -> dict[str, str]:
        """The request's headers with botocore's SigV4 signature (credentials refreshed by it)."""
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET_PREFIX + action},
        )
        SigV4Auth(frozen, "dynamodb", self._region).add_auth(request)
        return dict(request.headers.items())
