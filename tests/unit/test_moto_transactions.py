"""Pins what ``devstack/moto_transactions.py`` takes from moto, whose internals it replaces.

The local endpoint serves ``TransactWriteItems`` with :func:`transact_write_items` in place of
moto's own. It calls moto's backend methods by name and raises moto's exceptions; a moto
release that renames one of them fails here, before a test against the endpoint fails in a
less obvious way. (What the replacement does is tested against the running endpoint:
``tests/integration/test_dynamodb_grouped_writes.py``.)
"""

from __future__ import annotations

import inspect

from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item

from devstack import moto_patches, moto_transactions


def parameters(method: object) -> set[str]:
    return set(inspect.signature(method).parameters)  # type: ignore[arg-type]


def test_moto_still_has_what_the_replacement_calls() -> None:
    assert {"table_name", "item_attrs"} <= parameters(DynamoDBBackend.put_item)
    assert {"table_name", "key"} <= parameters(DynamoDBBackend.delete_item)
    assert {"table_name", "keys"} <= parameters(DynamoDBBackend.get_item)
    assert {
        "table_name",
        "key",
        "update_expression",
        "expression_attribute_names",
        "expression_attribute_values",
    } <= parameters(DynamoDBBackend.update_item)
    assert parameters(DynamoDBBackend.transact_write_items) == {"self", "transact_items"}


def test_moto_parses_conditions_as_the_memo_expects() -> None:
    names, values = {"#v": "version"}, {":v": {"N": "3"}}
    parser = ConditionExpressionParser("attribute_not_exists(#v) OR #v < :v", names, values)
    assert (parser.condition_expression, parser.expression_attribute_names) == (
        "attribute_not_exists(#v) OR #v < :v",
        names,
    )
    assert parser.expression_attribute_values == values
    parser.parse()
    assert parser.expr_attr_names_found == ["#v", "#v"]
    assert parser.expr_attr_values_found == [":v"]


def test_install_replaces_moto_transactions_in_this_process() -> None:
    original = DynamoDBBackend.transact_write_items
    parse = ConditionExpressionParser.parse
    try:
        moto_transactions.install()
        assert DynamoDBBackend.transact_write_items is moto_transactions.transact_write_items
        assert getattr(ConditionExpressionParser.parse, moto_patches.WRAPPED, False)
        # a remembered tree still judges each item: the same condition, two answers
        guard = "attribute_not_exists(#v) OR #v < :v"
        values = {":v": {"N": "3"}}
        for _ in range(2):
            tree = ConditionExpressionParser(guard, {"#v": "version"}, values).parse()
            assert tree.expr(None)
            older = Item(DynamoType({"S": "k"}), None, {"id": {"S": "k"}, "version": {"N": "5"}})
            assert not tree.expr(older)
    finally:
        DynamoDBBackend.transact_write_items = original  # type: ignore[method-assign]
        ConditionExpressionParser.parse = parse  # type: ignore[method-assign]
