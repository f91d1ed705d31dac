"""Batch rules shared by every sink, and the in-memory sink's version rule."""

from __future__ import annotations

from dataclasses import replace

from cartloom.domain.lifecycle import TERMINAL, TRANSITIONS, Status
from cartloom.sinks.base import CLOSED_ORDER_STATUSES, ViewChange, coalesce, document_version
from tests.memory_sink import MemorySink


def change(key: str, version: int, entity: str = "orders") -> ViewChange:
    return ViewChange(entity, key, version, {"version": version, "key": key})


def test_coalesce_keeps_newest_version_per_key_in_first_seen_order() -> None:
    batch = [change("a", 1), change("b", 3), change("a", 3), change("b", 2), change("a", 2)]
    assert [(c.key, c.version) for c in coalesce(batch)] == [("a", 3), ("b", 3)]


def test_coalesce_separates_entities_with_the_same_key() -> None:
    batch = [change("x", 1, "orders"), change("x", 5, "inventory")]
    assert len(coalesce(batch)) == 2


def test_coalesce_orders_deletions_by_log_position() -> None:
    deleted = ViewChange("orders", "a", 0, None)
    assert coalesce([change("a", 4), deleted]) == [deleted]
    assert coalesce([deleted, change("a", 1)]) == [replace(change("a", 1), replaces=True)]


def test_document_version_of_odd_documents_is_zero() -> None:
    assert document_version(None) == 0
    assert document_version({"version": True}) == 0
    assert document_version({"version": "3"}) == 0
    assert document_version({"version": 3}) == 3


async def test_memory_sink_refuses_same_or_older_versions() -> None:
    sink = MemorySink()
    first = await sink.write([change("a", 2)])
    again = await sink.write([change("a", 2), change("a", 1)])
    newer = await sink.write([change("a", 3)])
    assert (first.written, again.written, again.stale, newer.written) == (1, 0, 2, 1)
    assert sink.get("orders", "a") == {"version": 3, "key": "a"}


def test_the_sinks_closed_orders_are_the_domains() -> None:
    """One home for "closed": every terminal status, and fulfilled, which only a refund leaves."""
    assert {Status(s) for s in CLOSED_ORDER_STATUSES} == set(TERMINAL) | {Status.FULFILLED}
    assert not any(
        src is Status.FULFILLED and dst not in (Status.REFUNDED, Status.PARTIALLY_REFUNDED)
        for (src, _), dst in TRANSITIONS.items()
    )
