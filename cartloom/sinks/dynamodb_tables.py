"""Creates the DynamoDB tables CartLoom writes (local stack; production: ``deploy/dynamodb``)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiobotocore.session import get_session

from cartloom.core.settings import Settings
from cartloom.sinks.base import KEY_ATTRIBUTE
from cartloom.sinks.dynamodb import dynamodb_client_config

#: Tables whose items may expire, and the attribute holding the expiry (epoch seconds).
TTL_ATTRIBUTE: dict[str, str] = {"orders": "ttl_epoch"}  # see sinks.base.dynamodb_expiry


def table_definition(name: str, key_attribute: str) -> dict[str, Any]:
    """CreateTable arguments: on-demand billing, a string hash key."""
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": key_attribute, "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": key_attribute, "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


async def ensure_tables(settings: Settings, within: float = 30.0) -> list[str]:
    """Create the missing tables and wait until all are ACTIVE; return the names created."""
    session = get_session()
    async with session.create_client(
        "dynamodb",
        endpoint_url=settings.dynamodb_endpoint,
        config=dynamodb_client_config(settings),
    ) as client:
        existing = set((await client.list_tables())["TableNames"])
        created = []
        for entity, key_attribute in KEY_ATTRIBUTE.items():
            name = settings.dynamodb_table(entity)
            if name not in existing:
                await client.create_table(**table_definition(name, key_attribute))
                created.append(name)
        async with asyncio.timeout(within):
            for entity in KEY_ATTRIBUTE:
                waiter = client.get_waiter("table_exists")
                await waiter.wait(
                    TableName=settings.dynamodb_table(entity),
                    WaiterConfig={"Delay": 0.2, "MaxAttempts": 150},
                )
        for entity, attribute in TTL_ATTRIBUTE.items():
            if settings.dynamodb_table(entity) in created:
                await client.update_time_to_live(
                    TableName=settings.dynamodb_table(entity),
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
                )
        return created
