"""``devstack/moto_patches.py``: the local endpoint's request parameters, and the one wrapper.

The endpoint takes a DynamoDB request's JSON body as the action's parameters instead of
walking it through botocore's model as moto does. That is only right while the two give the
same parameters: checked here on the requests CartLoom sends, with moto's own parser as the
reference. A binary attribute, which the model decodes from base64, must go to moto's parser.
"""

from __future__ import annotations

import inspect
from typing import Any

import orjson
import pytest
from moto.core.request import Request
from moto.core.responses import BaseResponse
from moto.dynamodb.responses import DynamoHandler
from moto.moto_api._internal.recorder.models import Recorder

from cartloom.core.settings import Settings
from cartloom.sinks.base import ViewChange
from cartloom.sinks.dynamodb import DynamoDBSink
from devstack import moto_patches

ORDER = {
    "order_id": "o-1",
    "status": "reserved",
    "paid": False,
    "version": 3,
    "ratio": 0.5,
    "lines": [{"sku": "s-1", "quantity": 2}],
    "note": 'quotes " and a "B" inside a string',
    "history": [{"status": "received", "reason": None}],
}


def request(action: str, body: dict[str, Any]) -> Any:
    headers = {
        "X-Amz-Target": f"DynamoDB_20120810.{action}",
        "Content-Type": "application/x-amz-json-1.0",
    }
    return Request.from_primitives("POST", "http://localhost/", headers, orjson.dumps(body))


def moto_parameters(action: str, body: dict[str, Any]) -> Any:
    """What moto's own parser makes of the request (the reference)."""
    handler = DynamoHandler()
    req = request(action, body)
    handler.setup_class(req, "http://localhost/", req.headers)
    BaseResponse.parse_parameters(handler, req)
    return handler.params


def sink_requests() -> list[tuple[str, dict[str, Any]]]:
    sink = DynamoDBSink(Settings(table_prefix="t-", dynamodb_closed_order_ttl_seconds=60))
    puts = [sink._put_request(ViewChange("orders", f"o-{n}", n + 1, ORDER)) for n in range(3)]
    replacing = sink._put_request(ViewChange("orders", "o-9", 1, ORDER, replaces=True))
    return [
        ("TransactWriteItems", {"TransactItems": [{"Put": put} for put in puts]}),
        ("PutItem", puts[0]),
        ("PutItem", replacing),
        ("DeleteItem", {"TableName": "t-orders", "Key": {"order_id": {"S": "o-1"}}}),
        (
            "BatchGetItem",
            {
                "RequestItems": {
                    "t-orders": {
                        "Keys": [{"order_id": {"S": "o-1"}}],
                        "ConsistentRead": True,
                        "ProjectionExpression": "#k, version, doc",
                        "ExpressionAttributeNames": {"#k": "order_id"},
                    }
                }
            },
        ),
        ("Scan", {"TableName": "t-orders", "Limit": 100, "ConsistentRead": True}),
    ]


@pytest.mark.parametrize(("action", "body"), sink_requests())
def test_the_json_body_is_the_parameters_moto_would_parse(
    action: str, body: dict[str, Any]
) -> None:
    assert moto_patches.json_parameters(orjson.dumps(body)) == moto_parameters(action, body)


def test_a_binary_attribute_goes_to_motos_parser_which_decodes_it() -> None:
    body = {"TableName": "t", "Item": {"id": {"S": "k"}, "blob": {"B": "aGk="}}}
    assert moto_patches.json_parameters(orjson.dumps(body)) is None
    assert moto_parameters("PutItem", body)["Item"]["blob"] == {"B": b"hi"}
    assert moto_patches.json_parameters(b"not json") is None
    assert moto_patches.json_parameters(b"[1, 2]") is None


def test_wrap_once_wraps_a_method_once() -> None:
    class Owner:
        def greet(self) -> str:
            return "hello"

    def louder(greet: Any) -> Any:
        def wrapped(self: Owner) -> str:
            return f"{greet(self)}!"

        return wrapped

    moto_patches.wrap_once(Owner, "greet", louder)
    moto_patches.wrap_once(Owner, "greet", louder)
    assert Owner().greet() == "hello!"
    assert Owner.greet.__name__ == "greet"


def test_moto_still_reads_parameters_and_records_requests_where_the_patches_hook_in() -> None:
    assert "self.parse_parameters(request)" in inspect.getsource(BaseResponse.setup_class)
    assert DynamoHandler().automated_parameter_parsing
    assert set(inspect.signature(BaseResponse.parse_parameters).parameters) == {"self", "request"}
    assert "_record_request" in vars(Recorder)


def test_install_wraps_both_in_this_process() -> None:
    parse, record = vars(DynamoHandler).get("parse_parameters"), Recorder._record_request
    try:
        moto_patches.install()
        moto_patches.install()
        assert getattr(DynamoHandler.parse_parameters, moto_patches.WRAPPED, False)
        assert getattr(Recorder._record_request, moto_patches.WRAPPED, False)
        handler = DynamoHandler()
        body = {"TableName": "t-orders", "Key": {"order_id": {"S": "o-1"}}}
        req = request("GetItem", body)
        handler.setup_class(req, "http://localhost/", req.headers)
        assert handler.params == body
    finally:
        if parse is None:
            del DynamoHandler.parse_parameters
        else:
            DynamoHandler.parse_parameters = parse  # type: ignore[method-assign]
        Recorder._record_request = record  # type: ignore[method-assign]
