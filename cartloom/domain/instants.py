"""ISO-8601 instants as the views hold them, with the arithmetic the saga repeats.

Every order of a batch shares the batch's ``now``, so its deadline, its expiry and their
POSIX times are the same few strings over and over: they are computed once and
remembered (a bounded cache), not parsed again for each order. Pure.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache


@lru_cache(maxsize=4096)
def parse_instant(text: str) -> datetime:
    """``text`` (ISO-8601) as a datetime; raises ``ValueError`` like ``fromisoformat``."""
    return datetime.fromisoformat(text)


@lru_cache(maxsize=1024)
def instant_after(now: str, seconds: float) -> str:
    """The instant ``seconds`` after ``now``, in the views' format (milliseconds)."""
    return (parse_instant(now) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


@lru_cache(maxsize=4096)
def posix(instant: str) -> float:
    """POSIX seconds of an ISO-8601 instant with a time zone."""
    return parse_instant(instant).timestamp()


def is_before(earlier: str, later: str) -> bool:
    """Whether instant ``earlier`` comes before instant ``later``."""
    return parse_instant(earlier) < parse_instant(later)
