"""Hypothesis: random inputs never take an order outside the state machine."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cartloom.domain.errors import InvalidInput
from cartloom.domain.ledger import FencePassed, ReserveOutcome, ReserveResult
from cartloom.domain.lifecycle import (
    EXTERNAL,
    TERMINAL,
    TRANSITIONS,
    Status,
    apply_order_event,
    parse_order_event,
)
from cartloom.domain.orders import OrderView, new_order_view, parse_order
from cartloom.domain.saga import Timeout, apply_reservation_result, resolve_timeout

TIMES = [f"2026-11-25T10:{minute:02d}:00+00:00" for minute in range(0, 60, 5)]
LINES = [("A", 2), ("B", 1)]

external = st.builds(
    lambda kind, at, version, qty: {
        "order_id": "o-1",
        "event": kind,
        "at": at,
        **({"version": version} if version is not None else {}),
        **({"lines": [{"sku": "A", "quantity": qty}]} if kind.startswith("partially") else {}),
    },
    st.sampled_from(sorted(t.value for t in EXTERNAL)),
    st.sampled_from(TIMES),
    st.one_of(st.none(), st.integers(0, 5)),
    st.integers(1, 2),
)
answers = st.one_of(
    st.builds(
        lambda line, granted: ("answer", line, granted), st.integers(0, 1), st.integers(0, 2)
    ),
    st.builds(lambda line: ("fence", line), st.integers(0, 1)),
)
timeouts = st.builds(
    lambda kind, at: ("timeout", kind, at), st.sampled_from(list(Timeout)), st.sampled_from(TIMES)
)


def reachable(before: str, after: str) -> bool:
    return before == after or any(
        src.value == before and dst.value == after for (src, _), dst in TRANSITIONS.items()
    )


def step(view: OrderView, item: Any) -> OrderView:
    now = TIMES[-1]
    try:
        if isinstance(item, dict):
            return apply_order_event(view, parse_order_event(item), now).view
        if item[0] == "answer":
            _, line, granted = item
            sku, requested = LINES[line]
            granted = min(granted, requested)
            outcome = ReserveOutcome.RESERVED if granted == requested else ReserveOutcome.SHORT
            if outcome is ReserveOutcome.SHORT:
                granted = 0
            result = ReserveResult("o-1", line, sku, requested, granted, granted, outcome)
            return apply_reservation_result(view, result, now, ttl_seconds=60).view
        if item[0] == "fence":
            fence = FencePassed("o-1", item[1], LINES[item[1]][0])
            return apply_reservation_result(view, fence, now, ttl_seconds=60).view
        _, kind, clock = item
        return resolve_timeout(view, kind, now, clock=clock, ttl_seconds=60).view
    except InvalidInput:
        return view  # a partial event for more than the order has left: refused


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(external, answers, timeouts), max_size=25), st.booleans())
def test_random_inputs_keep_the_order_inside_the_machine(items: list[Any], upstream: bool) -> None:
    payload = {
        "order_id": "o-1",
        "source": "shopify" if upstream else "pos",
        "created_at": TIMES[0],
        "lines": [{"sku": s, "quantity": q} for s, q in LINES],
        "accepted_upstream": upstream,
    }
    view = new_order_view(parse_order(payload), TIMES[0], deadline_seconds=60)
    for item in items:
        after = step(view, item)
        assert after["status"] in {s.value for s in Status}
        assert after["history"][-1]["status"] == after["status"]
        if after is not view:
            assert after["version"] > view["version"]
        if Status(view["status"]) in TERMINAL:
            assert after["status"] == view["status"], "terminal statuses are never left"
        for line in after["reservations"]:
            assert 0 <= line["fulfilled"] + line["released"] <= line["requested"]
            assert 0 <= line["refunded"] <= line["requested"]
            assert line["granted"] is None or 0 <= line["granted"] <= line["requested"]
        statuses = [h["status"] for h in after["history"]]
        assert all(reachable(a, b) for a, b in pairwise(statuses))
        view = after
