"""Pure sink rules: coalescing with deletions, Redis TTL policy, item mapping, the audit fold."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cartloom.sinks.base import (
    StoredView,
    ViewChange,
    coalesce,
    dynamodb_expiry,
    redis_ttl_seconds,
)
from cartloom.sinks.comparison import ChangelogState, Expected, compare, digest
from cartloom.sinks.dynamodb import from_item, to_item
from tests.memory_sink import MemorySink


def doc(key: str, version: int, **extra: Any) -> dict[str, Any]:
    return {"order_id": key, "version": version, **extra}


def change(key: str, version: int, **extra: Any) -> ViewChange:
    return ViewChange("orders", key, version, doc(key, version, **extra))


def deletion(key: str) -> ViewChange:
    return ViewChange("orders", key, 0, None)


def test_a_document_after_a_deletion_replaces_whatever_the_store_holds() -> None:
    [kept] = coalesce([change("a", 7), deletion("a"), change("a", 1), change("a", 2)])
    assert kept == replace(change("a", 2), replaces=True)


def test_an_equal_version_is_a_duplicate_and_the_first_document_stays() -> None:
    assert coalesce([change("a", 2, note="first"), change("a", 2, note="second")]) == [
        change("a", 2, note="first")
    ]


async def test_memory_sink_applies_a_replacing_change_over_a_newer_version() -> None:
    sink = MemorySink()
    await sink.write([change("a", 9)])
    outcome = await sink.write(coalesce([deletion("a"), change("a", 1)]))
    assert outcome.written == 1
    assert sink.get("orders", "a") == doc("a", 1)


@pytest.mark.parametrize(
    ("entity", "document", "ttl"),
    [
        ("orders", {"status": "received"}, 0),
        ("orders", {"status": "reserved"}, 0),
        ("orders", {"status": "paid"}, 0),
        ("orders", {"status": "fulfilled"}, 3600),
        ("orders", {"status": "cancelled"}, 3600),
        ("orders", {"status": "refunded"}, 3600),
        ("orders", {"status": "rejected"}, 3600),
        ("inventory", {"status": "cancelled"}, 0),
        ("products", {"status": "archived"}, 0),
    ],
)
def test_only_closed_orders_expire_in_redis(
    entity: str, document: dict[str, Any], ttl: int
) -> None:
    assert redis_ttl_seconds(entity, document, 3600) == ttl


def test_a_zero_closed_order_ttl_keeps_every_view() -> None:
    assert redis_ttl_seconds("orders", {"status": "cancelled"}, 0) == 0


def test_item_carries_its_key_version_declared_attributes_and_the_whole_document() -> None:
    document = doc(
        "o-1",
        3,
        status="paid",
        created_at="2026-12-05T10:00:00+00:00",
        total=12.5,
        gift=False,
        lines=[{"sku": "A"}],
    )
    item = to_item("orders", ViewChange("orders", "o-1", 3, document))
    assert item == {
        "order_id": {"S": "o-1"},
        "version": {"N": "3"},
        "doc": item["doc"],
        "status": {"S": "paid"},
        "created_at": {"S": "2026-12-05T10:00:00+00:00"},
    }, "no updated_at in this view; total, gift and lines only in doc; no TTL while open"
    assert from_item(item) == StoredView(3, document)


def test_inventory_items_carry_the_stock_figures_as_numbers() -> None:
    level = {"sku": "A", "version": 2, "on_hand": 5, "reserved": 2, "available": 3}
    item = to_item("inventory", ViewChange("inventory", "A", 2, level))
    assert (item["on_hand"], item["reserved"], item["available"]) == (
        {"N": "5"},
        {"N": "2"},
        {"N": "3"},
    )


def test_closed_orders_expire_from_dynamodb_only_when_a_ttl_is_set() -> None:
    closed = doc("o-1", 4, status="cancelled")
    closed["updated_at"] = "2026-11-25T10:00:00+00:00"
    change = ViewChange("orders", "o-1", 4, closed)
    assert "ttl_epoch" not in to_item("orders", change)  # 0 keeps every item
    item = to_item("orders", change, closed_ttl=3600)
    assert item["ttl_epoch"] == {"N": str(1_795_600_800 + 3600)}
    assert dynamodb_expiry("orders", closed, 3600) == 1_795_600_800 + 3600
    for status in ("reserved", "paid"):
        assert dynamodb_expiry("orders", {**closed, "status": status}, 3600) is None
    assert dynamodb_expiry("orders", {**closed, "status": "expired"}, 3600) is not None
    assert dynamodb_expiry("inventory", closed, 3600) is None


def test_non_finite_numbers_are_not_copied_as_attributes() -> None:
    level = {"sku": "A", "version": 1, "on_hand": float("nan"), "available": float("inf")}
    item = to_item("inventory", ViewChange("inventory", "A", 1, level))
    assert "on_hand" not in item and "available" not in item


def fold(*records: tuple[str, dict[str, Any] | None]) -> ChangelogState:
    state = ChangelogState(closed_order_ttl=3600)
    for offset, (key, document) in enumerate(records):
        state.apply("orders", key, 0, offset, document)
    return state


def test_fold_keeps_the_highest_version_and_counts_regressions() -> None:
    state = fold(("a", doc("a", 1)), ("a", doc("a", 3)), ("a", doc("a", 2)), ("a", doc("a", 3)))
    expected = state.expected[("orders", "a")]
    assert (expected.version, expected.offset, state.regressions) == (3, 1, 1)
    assert expected.fingerprint == digest(doc("a", 3))


def test_fold_deletes_on_a_tombstone_and_starts_over_after_it() -> None:
    state = fold(
        ("a", doc("a", 5)), ("a", None), ("b", doc("b", 1)), ("b", None), ("b", doc("b", 1))
    )
    assert state.expected[("orders", "a")].deleted
    assert state.expected[("orders", "b")].version == 1
    assert (state.live("orders"), sorted(state.keys("orders"))) == (1, ["a", "b"])


def test_fold_ignores_unusable_values_but_counts_the_records() -> None:
    state = fold(("a", doc("a", 1)), ("a", ["not", "an", "object"]))  # type: ignore[arg-type]
    assert state.records == 2
    assert state.expected[("orders", "a")].version == 1


LIVE = Expected(version=4, fingerprint=digest(doc("a", 4)), partition=0, offset=9)


@pytest.mark.parametrize(
    ("store", "expected", "stored", "kind"),
    [
        ("redis", LIVE, StoredView(4, doc("a", 4)), None),
        ("redis", LIVE, None, "missing"),
        ("redis", LIVE, StoredView(3, doc("a", 3)), "stale"),
        ("redis", LIVE, StoredView(5, doc("a", 5)), "ahead"),
        ("redis", LIVE, StoredView(4, doc("a", 4, status="paid")), "content"),
        ("redis", LIVE, StoredView(4, None), "content"),
        ("redis", None, StoredView(1, {}), "undeleted"),
        ("dynamodb", Expected(0, None, 0, 3), StoredView(1, {}), "undeleted"),
        ("dynamodb", Expected(0, None, 0, 3), None, None),
        ("redis", replace(LIVE, may_expire_in_redis=True), None, "expired"),
        ("dynamodb", replace(LIVE, may_expire_in_redis=True), None, "missing"),
        ("dynamodb", replace(LIVE, expires_at=1_000), None, "expired"),
        ("dynamodb", replace(LIVE, expires_at=3_000_000_000), None, "missing"),
    ],
)
def test_compare_names_each_kind_of_difference(
    store: str, expected: Expected | None, stored: StoredView | None, kind: str | None
) -> None:
    assert compare(store, expected, stored, now=2_000_000_000) == kind


def test_digest_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
