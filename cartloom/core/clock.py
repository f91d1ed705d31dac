"""Wall-clock time for the I/O edge; the domain takes ``now`` as a parameter instead."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with an explicit offset."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
