"""Which store errors mean the store is failing (retried without bound) and which one change.

And what DynamoDB's reasons for cancelling a grouped write mean for each change in it.
"""

from __future__ import annotations

import orjson
import pytest
from aiodynamo.errors import (
    ConditionalCheckFailed,
    ExpiredToken,
    NoCredentialsFound,
    ProvisionedThroughputExceeded,
    TableNotFound,
    Throttled,
    TransactionCanceled,
    UnknownError,
    ValidationException,
)
from aiodynamo.models import RetryTimeout
from aiohttp import ClientConnectionError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cartloom.sinks import dynamodb, redis
from cartloom.sinks.base import ChangeRefused


def client_error(code: str, status: int = 400) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutItem")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "store_failing"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (NoCredentialsError(), True),
        (client_error("ProvisionedThroughputExceededException"), True),
        (client_error("ThrottlingException"), True),
        (client_error("ResourceNotFoundException"), True),
        (client_error("SomethingNew", status=503), True),
        (client_error("SomethingNew"), False),
        (client_error("ValidationException"), False),
        (ParamValidationError(report="bad item"), False),
        (TypeError("cannot encode"), False),
        # aiodynamo's, from the sink's write client
        (ClientConnectionError("refused"), True),
        (RetryTimeout(), True),
        (NoCredentialsFound(), True),
        (ExpiredToken({"message": "expired"}), True),
        (Throttled({"message": "slow down"}), True),
        (ProvisionedThroughputExceeded({"message": "over"}), True),
        (TableNotFound({"message": "no table"}), True),
        (UnknownError(503, b"unavailable"), True),
        (UnknownError(400, b"{}"), False),
        (ValidationException({"message": "Item size has exceeded the maximum"}), False),
        (ConditionalCheckFailed({"message": "stale"}), False),
        # one item of a cancelled TransactWriteItems
        (dynamodb.CancelledInTransactionError("TransactionConflict"), True),
        (dynamodb.CancelledInTransactionError("ThrottlingError"), True),
        (dynamodb.CancelledInTransactionError("ProvisionedThroughputExceeded"), True),
        (dynamodb.CancelledInTransactionError("SomethingNew"), False),
    ],
)
def test_dynamodb_errors(error: BaseException, store_failing: bool) -> None:
    assert dynamodb.store_unavailable(error) is store_failing


@pytest.mark.parametrize(
    ("error", "store_failing"),
    [
        (RedisConnectionError("refused"), True),
        (RedisTimeoutError("timed out"), True),
        (BusyLoadingError("LOADING"), True),
        (ReadOnlyError("READONLY replica"), True),
        (ResponseError("BUSY Redis is busy running a script"), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("ERR Error running script: attempt to compare nil with number"), False),
    ],
)
def test_redis_errors(error: BaseException, store_failing: bool) -> None:
    assert redis.store_unavailable(error) is store_failing


REASONS = [
    {"Code": "None"},
    {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
    {"Code": "ValidationError", "Message": "Item size has exceeded the maximum"},
    {"Code": "TransactionConflict", "Message": "in progress"},
]


def test_cancellation_reasons_are_read_from_either_form_of_the_error() -> None:
    body = {"__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"}
    body |= {"CancellationReasons": REASONS, "Message": "Transaction cancelled"}
    codes = ["None", "ConditionalCheckFailed", "ValidationError", "TransactionConflict"]
    assert dynamodb.cancellation_codes(TransactionCanceled(body)) == codes
    # a reason without a message: aiodynamo gives up and hands the body back raw
    raw = orjson.dumps(body | {"CancellationReasons": [{"Code": "None"}, {"Code": "X"}]})
    assert dynamodb.cancellation_codes(UnknownError(400, raw)) == ["None", "X"]
    assert dynamodb.cancellation_codes(UnknownError(400, b'{"__type": "Other"}')) is None
    assert dynamodb.cancellation_codes(UnknownError(400, b"not json")) is None


def test_what_each_cancellation_reason_means_for_its_change() -> None:
    assert dynamodb.item_outcome("ConditionalCheckFailed") == "stale"
    for refused in ("ValidationError", "ItemCollectionSizeLimitExceeded"):
        assert isinstance(dynamodb.item_outcome(refused), ChangeRefused)
    conflict = dynamodb.item_outcome("TransactionConflict")
    assert isinstance(conflict, dynamodb.CancelledInTransactionError)
    assert dynamodb.store_unavailable(conflict)
