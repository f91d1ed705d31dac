"""The order.timeouts messages read back as they were written: each encode beside its parse."""

from __future__ import annotations

import orjson
import pytest

from cartloom.domain.early_events import held_nudge_json, parse_held_nudge
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.saga import Timeout, parse_timeout, timeout_json

AT = "2026-12-04T10:00:00+00:00"


@pytest.mark.parametrize("kind", list(Timeout))
def test_a_timeout_nudge_reads_back_as_sent(kind: Timeout) -> None:
    sent = orjson.loads(orjson.dumps(timeout_json("o-1", kind, AT)))
    assert parse_timeout(sent, key="o-1") == ("o-1", kind)


def test_a_held_events_nudge_reads_back_as_sent() -> None:
    sent = orjson.loads(orjson.dumps(held_nudge_json("o-1", AT)))
    assert parse_held_nudge(sent, key="o-1") == "o-1"


def test_a_nudge_under_another_key_is_refused_as_a_key_mismatch() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_timeout(timeout_json("o-1", Timeout.DEADLINE, AT), key="o-2")
    assert refused.value.reason is RejectReason.KEY_MISMATCH
    assert "o-2" in refused.value.detail and "o-1" in refused.value.detail
