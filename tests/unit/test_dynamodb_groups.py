"""How the DynamoDB sink cuts a batch into ``TransactWriteItems`` groups (no store involved)."""

from __future__ import annotations

from typing import Any

from cartloom.core.settings import Settings
from cartloom.sinks.base import ViewChange
from cartloom.sinks.dynamodb import GROUP_BYTES, DynamoDBSink


def sink(group: int) -> DynamoDBSink:
    return DynamoDBSink(Settings(dynamodb_write_group=group))  # never started: no calls


def change(key: str, note: str = "", document: bool = True) -> ViewChange:
    doc: dict[str, Any] | None = {"order_id": key, "version": 2, "note": note}
    return ViewChange("orders", key, 2, doc if document else None)


def sizes(parts: list[list[Any]]) -> list[int]:
    return [len(part) for part in parts]


def test_documents_go_in_groups_of_the_setting_and_deletions_alone() -> None:
    changes = [change(f"k{n}") for n in range(10)]
    changes.insert(4, change("gone", document=False))
    parts = sink(4)._parts(changes)
    assert sizes(parts) == [1, 4, 4, 2]
    assert parts[0] == [(changes[4], None)], "a deletion is a DeleteItem of its own"
    written = [c.key for part in parts[1:] for c, _ in part]
    assert written == [c.key for c in changes if c.key != "gone"], "every change, in order"


def test_one_per_group_is_one_put_item_each() -> None:
    assert sizes(sink(1)._parts([change(f"k{n}") for n in range(3)])) == [1, 1, 1]


def test_a_group_stays_under_the_transaction_size_limit() -> None:
    big = "x" * 300_000  # as an item about twice that counted: a few per group
    parts = sink(100)._parts([change(f"k{n}", big) for n in range(12)])
    per_group = GROUP_BYTES // (2 * 300_000)
    assert max(sizes(parts)) <= per_group
    assert sum(sizes(parts)) == 12


def test_each_put_carries_the_version_guard_unless_the_key_starts_over() -> None:
    guarded, starting_over = sink(100)._parts(
        [change("a"), ViewChange("orders", "b", 1, {"order_id": "b"}, replaces=True)]
    )[0]
    assert guarded[1] is not None and "ConditionExpression" in guarded[1]
    assert starting_over[1] is not None and "ConditionExpression" not in starting_over[1]
