"""The DynamoDB sink's write client: aiodynamo over one keep-alive aiohttp session.

The sink's writes are ``TransactWriteItems`` of up to 100 conditional puts (or one
``PutItem`` per change, ``dynamodb_write_group=1``). Measured side by side on single puts
(``bench/dynamodb_clients.py``), aiodynamo spends about half of what aiobotocore does per
call: it signs and posts the request body CartLoom already built, where botocore validates,
serialises, runs its event hooks and walks its model for every call and every attribute.
So the hot write path uses aiodynamo's ``send_request`` with the request CartLoom builds
(:func:`cartloom.sinks.dynamodb.to_item`, the version guard), while the table tools, the
reader and the audit keep aiobotocore (few calls, paginators, waiters, the control plane).

Credentials and region come from botocore's own chain (:class:`BotocoreCredentials`), so
the write path authenticates exactly as every other AWS call of CartLoom does (environment,
profiles, web identity on Kubernetes, container and instance metadata), not through a
second, different chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from aiodynamo.client import Client
from aiodynamo.credentials import Credentials, Key
from aiodynamo.errors import (
    AccessDenied,
    ExpiredToken,
    IncompleteSignature,
    InternalDynamoError,
    MissingAuthenticationToken,
    NoCredentialsFound,
    ProvisionedThroughputExceeded,
    RequestLimitExceeded,
    ServiceUnavailable,
    TableNotFound,
    Throttled,
    UnknownError,
    UnrecognizedClient,
)
from aiodynamo.http.aiohttp import AIOHTTP
from aiodynamo.http.types import HttpImplementation
from aiodynamo.models import DecorelatedJitterRetry, RetryTimeout
from yarl import URL

from cartloom.core.settings import Settings

#: Errors of the table, the account or the service, not of one item (see
#: :func:`cartloom.sinks.dynamodb.store_unavailable`).
STORE_FAILURES: tuple[type[BaseException], ...] = (
    ProvisionedThroughputExceeded,
    RequestLimitExceeded,
    Throttled,
    InternalDynamoError,
    ServiceUnavailable,
    TableNotFound,
    AccessDenied,
    UnrecognizedClient,
    ExpiredToken,
    IncompleteSignature,
    MissingAuthenticationToken,
    NoCredentialsFound,
    RetryTimeout,
    aiohttp.ClientError,
)
#: How long one call may retry throttling and 5xx answers before the sink's own back-off
#: takes over (botocore's standard mode, which the other clients use, makes 4 attempts).
CALL_RETRY_SECONDS = 3.0


def unknown_error_is_store_failure(error: UnknownError) -> bool:
    """Whether an error aiodynamo did not recognise is a server-side (5xx) failure."""
    return error.status >= 500


class BotocoreCredentials(Credentials):
    """aiodynamo credentials taken from botocore's chain, refreshed as botocore refreshes them."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    async def get_key(self, http: HttpImplementation) -> Key | None:
        """The current key (botocore refreshes temporary credentials before they expire)."""
        frozen = await self._credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            return None
        return Key(id=frozen.access_key, secret=frozen.secret_key, token=frozen.token)

    def invalidate(self) -> bool:
        """Never: botocore refreshes on its own; an expired token is retried by the sink."""
        return False

    def is_disabled(self) -> bool:
        """Never: botocore's chain found these credentials."""
        return False


class DynamoDBWriteClient:
    """``TransactWriteItems``, ``PutItem`` and ``DeleteItem`` calls on keep-alive connections."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None
        self._client: Client | None = None

    async def start(self) -> None:
        """Resolve credentials and region through botocore; open the connection pool."""
        session = get_session()
        credentials = await session.get_credentials()
        if credentials is None:
            raise NoCredentialsFound()
        region = session.get_config_variable("region")
        if not region:
            raise ValueError("no AWS region is set for DynamoDB (AWS_REGION or AWS_DEFAULT_REGION)")
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(10, self._settings.sink_concurrency)),
            timeout=aiohttp.ClientTimeout(total=10, connect=3),
        )
        endpoint = self._settings.dynamodb_endpoint
        self._client = Client(
            AIOHTTP(self._http),
            BotocoreCredentials(credentials),
            region,
            endpoint=URL(endpoint) if endpoint else None,
            throttle_config=DecorelatedJitterRetry(
                time_limit_secs=CALL_RETRY_SECONDS, max_delay_secs=1
            ),
        )

    async def stop(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.close()
            await asyncio.sleep(0)  # let aiohttp close its transports before the loop moves on
        self._http = self._client = None

    async def call(self, action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``action`` with ``payload`` (DynamoDB's JSON); throttling is retried briefly."""
        if self._client is None:
            raise RuntimeError("DynamoDBWriteClient.start() was not called")
        return await self._client.send_request(action=action, payload=payload)
