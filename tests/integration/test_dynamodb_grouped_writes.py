"""Grouped conditional writes: ``TransactWriteItems`` on the local endpoint, and the sink's use.

Against the embedded stack's DynamoDB endpoint (moto behind ``devstack.dynamodb_server``,
whose transactions roll back by their own items, ``devstack/moto_transactions.py``), driven
with aiobotocore, a client CartLoom's sink does not use for writes:

- a transaction with one failed condition writes nothing, and names the item;
- a transaction whose write fails after others applied leaves every item as it was;
- the endpoint serves the same without waitress, as in moto's image (docker-compose);
- the sink writes a batch in groups, refuses the stale versions among them (and only
  those), and keeps the newer items already stored.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from cartloom.sinks.base import ViewChange
from cartloom.sinks.dynamodb import DynamoDBSink, read_items
from devstack.processes import free_port, spawn, stop, wait_until
from devstack.stack import StackState
from tests.integration.sink_helpers import make_namespace, order_document

pytestmark = pytest.mark.integration


async def scratch_table(dynamodb: Any) -> str:
    name = f"txn-{uuid.uuid4().hex[:8]}"
    await dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def put(table: str, key: str, version: int, guard: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TableName": table,
        "Item": {"id": {"S": key}, "version": {"N": str(version)}},
    }
    if guard:
        request["ConditionExpression"] = "attribute_not_exists(version) OR version < :v"
        request["ExpressionAttributeValues"] = {":v": {"N": str(version)}}
    return {"Put": request}


async def versions(dynamodb: Any, table: str) -> dict[str, int]:
    page = await dynamodb.scan(TableName=table, ConsistentRead=True)
    return {item["id"]["S"]: int(item["version"]["N"]) for item in page["Items"]}


async def test_one_failed_condition_cancels_the_transaction_and_names_its_item(
    stack: StackState, dynamodb: Any
) -> None:
    table = await scratch_table(dynamodb)
    await dynamodb.put_item(TableName=table, Item={"id": {"S": "b"}, "version": {"N": "9"}})

    with pytest.raises(ClientError) as cancelled:
        await dynamodb.transact_write_items(
            TransactItems=[put(table, "a", 1), put(table, "b", 2), put(table, "c", 1)]
        )

    error = cancelled.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in error["CancellationReasons"]] == [
        "None",
        "ConditionalCheckFailed",
        "None",
    ]
    assert await versions(dynamodb, table) == {"b": 9}, "nothing of a cancelled transaction"

    await dynamodb.transact_write_items(TransactItems=[put(table, "a", 1), put(table, "c", 1)])
    assert await versions(dynamodb, table) == {"a": 1, "b": 9, "c": 1}


async def test_a_write_failing_midway_puts_back_what_the_transaction_wrote(
    stack: StackState, dynamodb: Any
) -> None:
    table = await scratch_table(dynamodb)
    await dynamodb.put_item(TableName=table, Item={"id": {"S": "old"}, "version": {"N": "1"}})
    too_large = {"id": {"S": "huge"}, "version": {"N": "1"}, "doc": {"S": "x" * 450_000}}

    with pytest.raises(ClientError) as refused:
        await dynamodb.transact_write_items(
            TransactItems=[
                put(table, "old", 2),  # applied first, then undone
                put(table, "new", 1),
                {"Put": {"TableName": table, "Item": too_large}},
            ]
        )

    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert await versions(dynamodb, table) == {"old": 1}


async def test_an_update_undone_midway_gets_its_old_attributes_back(
    stack: StackState, dynamodb: Any
) -> None:
    table = await scratch_table(dynamodb)
    await dynamodb.put_item(TableName=table, Item={"id": {"S": "u"}, "version": {"N": "1"}})
    too_large = {"id": {"S": "huge"}, "version": {"N": "1"}, "doc": {"S": "x" * 450_000}}
    update = {
        "TableName": table,
        "Key": {"id": {"S": "u"}},
        "UpdateExpression": "SET version = :v",
        "ExpressionAttributeValues": {":v": {"N": "7"}},
    }

    with pytest.raises(ClientError):
        await dynamodb.transact_write_items(
            TransactItems=[{"Update": update}, {"Put": {"TableName": table, "Item": too_large}}]
        )

    assert await versions(dynamodb, table) == {"u": 1}


async def test_two_operations_on_one_item_are_refused(stack: StackState, dynamodb: Any) -> None:
    table = await scratch_table(dynamodb)
    with pytest.raises(ClientError) as refused:
        await dynamodb.transact_write_items(TransactItems=[put(table, "a", 1), put(table, "a", 2)])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert await versions(dynamodb, table) == {}


async def test_the_sink_writes_in_groups_and_refuses_only_the_stale_versions(
    stack: StackState, dynamodb: Any
) -> None:
    ns = await make_namespace(stack.env, redis_db=11, CARTLOOM_DYNAMODB_WRITE_GROUP="8")
    sink = DynamoDBSink(ns.settings)
    keys = [f"grp-{n:02d}" for n in range(30)]
    newer = keys[3:30:4]  # 7 keys, spread over the groups
    await sink.start()
    try:
        first = await sink.write([ViewChange("orders", k, 5, order_document(k, 5)) for k in newer])
        batch = [ViewChange("orders", k, 3, order_document(k, 3)) for k in keys]
        outcome = await sink.write(batch)
    finally:
        await sink.stop()

    assert first.written == len(newer)
    assert (outcome.written, outcome.stale) == (len(keys) - len(newer), len(newer))
    assert sorted(outcome.stale_keys) == sorted(newer)
    stored = await read_items(dynamodb, ns.settings, "orders", keys)
    assert {k: view.version for k, view in stored.items()} == {
        k: 5 if k in newer else 3 for k in keys
    }


async def test_the_endpoint_serves_transactions_without_waitress_as_in_motos_image(
    stack: StackState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "no-waitress" / "waitress"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("not in moto\'s image")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    port = free_port()
    argv = [sys.executable, "-m", "devstack.dynamodb_server", "--port", str(port)]
    server = spawn("dynamodb", argv, tmp_path, port)
    try:
        async with get_session().create_client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=stack.env["AWS_DEFAULT_REGION"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ) as dynamodb:

            async def answering() -> bool:
                return "TableNames" in await dynamodb.list_tables()

            await wait_until(server, answering)
            table = await scratch_table(dynamodb)
            await dynamodb.put_item(TableName=table, Item={"id": {"S": "b"}, "version": {"N": "9"}})
            with pytest.raises(ClientError) as cancelled:
                await dynamodb.transact_write_items(
                    TransactItems=[put(table, "a", 1), put(table, "b", 2)]
                )
            reasons = cancelled.value.response["CancellationReasons"]
            assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
            assert await versions(dynamodb, table) == {"b": 9}
    finally:
        stop(server)
    assert "development server" in Path(server.log).read_text(), "served by werkzeug"
