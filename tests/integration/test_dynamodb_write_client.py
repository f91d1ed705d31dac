"""The DynamoDB sink's write client signs what it sends: a server that checks signatures says so.

The local stack's endpoint, like most emulators, takes any signature. Here a full
``moto.server`` of its own runs with IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``:
the first calls, which create a user and its key, go unchecked; every later one is checked
against the key's secret, as AWS checks it). The client's requests, with the headers aiohttp
actually sends, must pass that check, and a wrong secret must not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import get_session

from cartloom.core.settings import Settings
from cartloom.sinks.dynamodb import store_unavailable
from cartloom.sinks.dynamodb_client import DynamoDBCallError, DynamoDBWriteClient
from cartloom.sinks.dynamodb_tables import ensure_tables
from devstack.processes import free_port, spawn, stop, wait_until

pytestmark = pytest.mark.integration

REGION = "us-east-1"
#: create_user, create_access_key, put_user_policy: the calls that make the checked key.
UNCHECKED_CALLS = 3
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@pytest.fixture
async def checking_endpoint(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A moto server that checks signatures, and a key it knows (id and secret)."""
    port = free_port()
    argv = [
        "env",
        f"INITIAL_NO_AUTH_ACTION_COUNT={UNCHECKED_CALLS}",
        sys.executable,
        *("-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)),
    ]
    server = spawn("moto-iam", argv, tmp_path, port)
    url = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/moto-api/") as response:
            return response.status == 200

    try:
        await wait_until(server, answers, within=60)
        async with get_session().create_client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",  # only for the unchecked calls
        ) as iam:
            await iam.create_user(UserName="cartloom-sink")
            key = (await iam.create_access_key(UserName="cartloom-sink"))["AccessKey"]
            await iam.put_user_policy(
                UserName="cartloom-sink", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL)
            )
        yield url, {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        stop(server)


def use_key(monkeypatch: pytest.MonkeyPatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


async def put(settings: Settings, order_id: str) -> dict[str, object]:
    client = DynamoDBWriteClient(settings)
    await client.start()
    try:
        item = {"order_id": {"S": order_id}, "version": {"N": "1"}}
        return await client.call("PutItem", {"TableName": "signed-orders", "Item": item})
    finally:
        await client.stop()


async def test_a_signature_checking_server_takes_the_clients_requests_and_refuses_a_wrong_key(
    checking_endpoint: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = checking_endpoint
    settings = Settings(dynamodb_endpoint=url, table_prefix="signed-")
    use_key(monkeypatch, key["id"], key["secret"])
    await ensure_tables(settings)  # botocore's own client, checked too

    assert await put(settings, "o-1") == {}

    use_key(monkeypatch, key["id"], "not-the-secret")
    with pytest.raises(DynamoDBCallError) as refused:
        await put(settings, "o-2")
    assert refused.value.status == 403
    # No item is to blame: the sink waits for the store instead of setting changes aside.
    assert store_unavailable(refused.value)

    use_key(monkeypatch, key["id"], key["secret"])
    async with get_session().create_client("dynamodb", endpoint_url=url) as dynamodb:
        items = (await dynamodb.scan(TableName="signed-orders"))["Items"]
    assert [item["order_id"]["S"] for item in items] == ["o-1"]
