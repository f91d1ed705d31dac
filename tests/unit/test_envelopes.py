"""Packing envelopes by bytes: every item once, in order, no envelope over the limit."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartloom.stream.envelopes import ItemTooLarge, fits_alone, pack


def items(sizes: list[int]) -> list[bytes]:
    return [orjson.dumps({"id": n, "pad": "x" * size}) for n, size in enumerate(sizes)]


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=60),
    limit=st.integers(min_value=400, max_value=3_000),  # every item fits alone
    max_items=st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
)
def test_every_item_travels_once_in_order_within_the_limits(
    sizes: list[int], limit: int, max_items: int | None
) -> None:
    encoded = items(sizes)
    seen: list[object] = []
    for first, body in pack("orders", encoded, limit=limit, max_items=max_items):
        assert len(body) <= limit
        envelope = orjson.loads(body)["orders"]
        assert envelope, "no empty envelope"
        assert max_items is None or len(envelope) <= max_items
        assert envelope[0] == orjson.loads(encoded[first])
        seen.extend(envelope)
    assert seen == [orjson.loads(item) for item in encoded]


def test_an_envelope_fills_up_to_the_byte_limit_before_a_new_one_starts() -> None:
    encoded = [b"1234", b"5678", b"9"]  # {"c":[1234,5678]} is 17 bytes
    bodies = [body for _, body in pack("c", encoded, limit=17)]
    assert bodies == [b'{"c":[1234,5678]}', b'{"c":[9]}']
    assert [first for first, _ in pack("c", encoded, limit=17)] == [0, 2]


def test_an_item_that_cannot_fit_alone_is_refused() -> None:
    # {"c":[]} is 8 bytes: 5 are left for the item
    assert fits_alone(b"12345", "c", limit=13)
    assert not fits_alone(b"123456", "c", limit=13)
    with pytest.raises(ItemTooLarge, match="6 bytes"):
        list(pack("c", [b"1", b"123456"], limit=13))
