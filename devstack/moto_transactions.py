"""``TransactWriteItems`` for the local DynamoDB endpoint, without copying whole tables.

moto 5.2 backs up every table a transaction names with ``copy.deepcopy`` before it starts,
so that it can roll back: each transaction costs time in proportion to the size of its
tables, not to its own items. With 2,000 items in a table that made conditional
transactions of 100 items about 10 items/s (docs/benchmarks.md), far below what the DynamoDB
sink's grouped writes send. DynamoDB's cost does not grow with the table.

:func:`transact_write_items` keeps moto's answers (the same exceptions, the same
``CancellationReasons``) and DynamoDB's all-or-nothing rule, and does it by the items alone:

1. Every condition is evaluated first, against the items as they were before the
   transaction. A transaction may touch each item only once (moto and DynamoDB refuse it
   otherwise), so that is exactly the state each condition sees in DynamoDB. If any fails,
   the transaction is cancelled before anything is written.
2. Then the writes apply. Should one fail (an update expression that does not validate,
   say), the items already written are put back from copies of those items alone, and the
   transaction is cancelled or refused as moto refuses it.

Transactions run one at a time (a lock), as DynamoDB isolates them from each other.

moto also parses every condition expression anew for each item it checks, twice per item of a
transaction (once to validate the request, once to evaluate): about a third of the endpoint's
CPU under the sink's writes, in a profile. The sink sends one expression with few distinct
values (the versions), so :func:`remember_parsed_conditions` keeps the parsed trees by
expression, names and values, and moto evaluates the same tree again.

:func:`install` puts both in place in moto (the conditions through
:func:`devstack.moto_patches.wrap_once`); ``tests/unit/test_moto_transactions.py`` pins the
moto methods and attributes they rely on.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moto.dynamodb.comparisons import ConditionExpressionParser, get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import Item

from devstack.moto_patches import wrap_once

OPERATIONS = frozenset({"ConditionCheck", "Put", "Delete", "Update"})
MOST_ITEMS = 100
#: Parsed condition expressions kept (then forgotten all at once and kept again).
MOST_PARSED = 10_000

_one_at_a_time = threading.Lock()


@dataclass
class _Step:
    """One operation of a transaction, with the item it found (``None``: no item)."""

    kind: str
    operation: dict[str, Any]
    table_name: str
    key: dict[str, Any]
    before: Item | None


def _key_of(backend: DynamoDBBackend, kind: str, operation: dict[str, Any]) -> dict[str, Any]:
    if kind != "Put":
        return dict(operation["Key"])
    table = backend.get_table(operation["TableName"])
    attributes = operation["Item"]
    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attributes[table.range_key_attr]
    return key


def _condition_holds(operation: dict[str, Any], current: Item | None) -> bool:
    expression = operation.get("ConditionExpression")
    if expression is None:
        return True
    condition = get_filter_expression(
        expression,
        operation.get("ExpressionAttributeNames"),
        operation.get("ExpressionAttributeValues"),
    )
    return bool(condition.expr(current))


def _plan(
    backend: DynamoDBBackend, transact_items: list[dict[str, Any]]
) -> tuple[list[_Step | None], list[tuple[Any, Any, Any]]]:
    """Each operation with the item it finds, and moto's error triple for each (all None: go)."""
    steps: list[_Step | None] = []
    errors: list[tuple[Any, Any, Any]] = []
    touched: set[tuple[str, str]] = set()
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        kind, operation = next(iter(entry.items()))
        try:
            if kind not in OPERATIONS:
                raise ValueError("Unsupported transaction operation")
            table_name = operation["TableName"]
            key = _key_of(backend, kind, operation)
            slot = (str(table_name), str(dict(sorted(key.items()))))
            if slot in touched:
                raise MultipleTransactionsException()
            touched.add(slot)
            current = backend.get_item(table_name, key)
            holds = _condition_holds(operation, current)
        except MockValidationException:
            raise
        except Exception as error:  # as moto: any other failure is this item's reason
            steps.append(None)
            errors.append((type(error).__name__, str(error), None))
            continue
        if holds:
            # moto's put and delete replace an item object and leave the old one as it was;
            # only its update changes the item in place, so only an update needs a copy.
            before = copy.deepcopy(current) if kind == "Update" else current
            steps.append(_Step(kind, operation, table_name, key, before))
            errors.append((None, None, None))
            continue
        old = None
        if operation.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
            old = current.to_json()["Attributes"]
        steps.append(None)
        errors.append(("ConditionalCheckFailed", ConditionalCheckFailed().message, old))
    return steps, errors


def _apply(backend: DynamoDBBackend, step: _Step) -> None:
    operation = step.operation
    if step.kind == "Put":
        backend.put_item(step.table_name, operation["Item"])
    elif step.kind == "Delete":
        backend.delete_item(step.table_name, step.key)
    elif step.kind == "Update":
        backend.update_item(
            step.table_name,
            step.key,
            update_expression=operation["UpdateExpression"],
            expression_attribute_names=operation.get("ExpressionAttributeNames") or {},
            expression_attribute_values=operation.get("ExpressionAttributeValues") or {},
        )


def _put_back(backend: DynamoDBBackend, step: _Step) -> None:
    if step.kind == "ConditionCheck":
        return
    if step.before is None:
        backend.delete_item(step.table_name, step.key)
    else:
        backend.put_item(step.table_name, step.before.to_json()["Attributes"])


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """The ``TransactWriteItems`` of moto, all or nothing, at a cost of its own items only."""
    if len(transact_items) > MOST_ITEMS:
        raise TooManyTransactionsException()
    with _one_at_a_time:
        steps, errors = _plan(self, transact_items)
        if any(code is not None for code, _, _ in errors):
            raise TransactionCanceledException(errors)
        applied: list[_Step] = []
        for index, step in enumerate(steps):
            assert step is not None
            try:
                _apply(self, step)
            except Exception as error:
                for done in reversed(applied):
                    _put_back(self, done)
                if isinstance(error, MockValidationException):
                    raise
                errors[index] = (type(error).__name__, str(error), None)
                raise TransactionCanceledException(errors) from error
            applied.append(step)


def remember_parsed_conditions() -> None:
    """Parse each distinct condition (expression, names, values) once, in this process.

    The tree moto builds holds the values it was given and is only read when evaluated, so
    one tree serves every item with the same condition. What the parser also notes (the
    names and values it found, which moto's request validation reads) is kept beside it.
    """
    parsed: dict[tuple[str, str, str], tuple[Any, list[str], list[str]]] = {}

    def wrapper(parse: Callable[..., Any]) -> Callable[..., Any]:
        def remembered(self: ConditionExpressionParser) -> Any:
            if not self.condition_expression:
                return parse(self)
            key = (
                self.condition_expression,
                json.dumps(self.expression_attribute_names, sort_keys=True),
                json.dumps(self.expression_attribute_values, sort_keys=True),
            )
            known = parsed.get(key)
            if known is None:
                tree = parse(self)
                if len(parsed) >= MOST_PARSED:
                    parsed.clear()
                known = parsed[key] = (
                    tree,
                    list(self.expr_attr_names_found),
                    list(self.expr_attr_values_found),
                )
            self.expr_attr_names_found = list(known[1])
            self.expr_attr_values_found = list(known[2])
            return known[0]

        return remembered

    wrap_once(ConditionExpressionParser, "parse", wrapper)


def install() -> None:
    """Serve :func:`transact_write_items` and remembered conditions in moto (this process)."""
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    remember_parsed_conditions()
