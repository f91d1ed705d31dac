"""deploy/dynamodb/tables.yaml: valid CloudFormation, and the tables the sinks write to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

from cartloom.core.settings import Settings
from cartloom.sinks.base import KEY_ATTRIBUTE
from cartloom.sinks.dynamodb_tables import TTL_ATTRIBUTE, table_definition

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "dynamodb" / "tables.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    parsed, problems = decode(str(TEMPLATE))
    assert not problems, problems
    assert parsed is not None
    return dict(parsed)


def test_cfn_lint_finds_nothing_in_any_region() -> None:
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [str(match) for match in matches] == []


def tables(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for resource in template["Resources"].values():
        assert resource["Type"] == "AWS::DynamoDB::GlobalTable"
        name = resource["Properties"]["TableName"]["Fn::Sub"]
        found[name.removeprefix("${TablePrefix}")] = resource
    return found


def test_one_global_table_per_entity_keyed_as_the_local_stack_creates_it(
    template: dict[str, Any],
) -> None:
    by_entity = tables(template)
    assert set(by_entity) == set(KEY_ATTRIBUTE)
    local = Settings(table_prefix="")
    for entity, key in KEY_ATTRIBUTE.items():
        properties = by_entity[entity]["Properties"]
        created = table_definition(local.dynamodb_table(entity), key)
        assert properties["KeySchema"] == created["KeySchema"]
        assert properties["AttributeDefinitions"] == created["AttributeDefinitions"]
        assert properties["BillingMode"] == created["BillingMode"] == "PAY_PER_REQUEST"
    assert template["Parameters"]["TablePrefix"]["Default"] == Settings().table_prefix


def test_every_replica_has_point_in_time_recovery_and_deletion_protection(
    template: dict[str, Any],
) -> None:
    for entity, resource in tables(template).items():
        assert resource["DeletionPolicy"] == "Retain", entity
        replicas = resource["Properties"]["Replicas"]
        assert replicas[0]["Region"] == {"Ref": "AWS::Region"}  # writes stay in the home region
        specs = [replicas[0], *(r["Fn::If"][1] for r in replicas[1:])]
        assert len(specs) == 4  # home region + up to three from ReplicaRegions
        for spec in specs:
            assert spec["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
            assert spec["DeletionProtectionEnabled"] is True


def test_only_orders_expire_and_by_the_ttl_epoch_attribute(template: dict[str, Any]) -> None:
    ttl = {e: r["Properties"].get("TimeToLiveSpecification") for e, r in tables(template).items()}
    assert ttl == {
        "orders": {"AttributeName": "ttl_epoch", "Enabled": True},
        "inventory": None,
        "products": None,
    }
    assert {e: {"AttributeName": a, "Enabled": True} for e, a in TTL_ATTRIBUTE.items()} == {
        e: spec for e, spec in ttl.items() if spec
    }
