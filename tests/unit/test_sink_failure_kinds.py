"""Which store errors mean the store is failing (retried without bound) and which one change.

And what DynamoDB's reasons for cancelling a grouped write mean for each change in it.
"""

from __future__ import annotations

import orjson
import pytest
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
from cartloom.sinks.dynamodb_client import call_error


def answer(error_type: str, status: int = 400, **more: object) -> dict[str, object]:
    """DynamoDB's JSON error body, as the service sends it."""
    return {"__type": error_type, "message": f"about {error_type}", **more}


def write_error(error_type: str, status: int = 400) -> Exception:
    """The sink's write client's error for DynamoDB's answer ``error_type``."""
    return call_error(status, orjson.dumps(answer(error_type, status)))


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
        # the sink's write client's
        (ClientConnectionError("refused"), True),
        (TimeoutError(), True),
        (write_error("com.amazon.coral.service#ExpiredTokenException"), True),
        (write_error("com.amazon.coral.service#UnrecognizedClientException"), True),
        (write_error("com.amazon.coral.service#IncompleteSignatureException"), True),
        (write_error("com.amazonaws.dynamodb.v20120810#ThrottlingException"), True),
        (
            write_error("com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"),
            True,
        ),
        (write_error("com.amazonaws.dynamodb.v20120810#ResourceNotFoundException"), True),
        (write_error("com.amazonaws.dynamodb.v20120810#InternalServerError", 500), True),
        (call_error(503, b"<html>unavailable</html>"), True),
        (call_error(403, b"<ErrorResponse>SignatureDoesNotMatch</ErrorResponse>"), True),
        (call_error(400, b"{}"), True),
        (write_error("com.amazonaws.dynamodb.v20120810#SomethingNew"), False),
        (write_error("com.amazonaws.dynamodb.v20120810#ValidationException"), False),
        (write_error("com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"), False),
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


def test_an_answer_is_read_into_its_code_message_and_cancellation_reasons() -> None:
    body = answer("com.amazonaws.dynamodb.v20120810#TransactionCanceledException")
    body["CancellationReasons"] = REASONS
    error = call_error(400, orjson.dumps(body))
    assert (error.status, error.code) == (400, "TransactionCanceledException")
    assert error.message == "about com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
    codes = ["None", "ConditionalCheckFailed", "ValidationError", "TransactionConflict"]
    assert error.cancellation_codes == codes
    # "Message" as some answers spell it; a reason without a message or a code
    other = {"__type": "TransactionCanceledException", "Message": "cancelled"}
    other["CancellationReasons"] = [{"Code": "None"}, {}]
    error = call_error(400, orjson.dumps(other))
    assert (error.message, error.cancellation_codes) == ("cancelled", ["None", "None"])
    # an answer that is not DynamoDB's JSON (a proxy's page, say) keeps its status
    page = call_error(502, b"<html>Bad Gateway</html>")
    assert (page.status, page.code, page.cancellation_codes) == (502, "", None)
    assert "Bad Gateway" in page.message
    assert call_error(400, b'{"__type": "x#ValidationException"}').cancellation_codes is None


def test_what_each_cancellation_reason_means_for_its_change() -> None:
    assert dynamodb.item_outcome("ConditionalCheckFailed") == "stale"
    for refused in ("ValidationError", "ItemCollectionSizeLimitExceeded"):
        assert isinstance(dynamodb.item_outcome(refused), ChangeRefused)
    conflict = dynamodb.item_outcome("TransactionConflict")
    assert isinstance(conflict, dynamodb.CancelledInTransactionError)
    assert dynamodb.store_unavailable(conflict)
