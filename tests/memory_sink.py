"""An in-memory sink with the same version rule as the real stores: for tests and benches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cartloom.sinks.base import ViewChange, WriteOutcome


class MemorySink:
    """Keeps ``(entity, key) -> (version, document)`` in a dict."""

    name = "memory"

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.write_calls = 0

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def write(self, changes: Sequence[ViewChange]) -> WriteOutcome:
        """Apply each change whose version is newer than the stored one."""
        self.write_calls += 1
        outcome = WriteOutcome()
        for change in changes:
            slot = (change.entity, change.key)
            if change.document is None:
                outcome.deleted += int(self.items.pop(slot, None) is not None)
                continue
            stored = self.items.get(slot)
            if stored is not None and stored[0] >= change.version and not change.replaces:
                outcome.stale += 1
                outcome.stale_keys.append(change.key)
                continue
            self.items[slot] = (change.version, change.document)
            outcome.written += 1
        return outcome

    def store_unavailable(self, error: BaseException) -> bool:
        """Connection-level errors (``OSError``: refused, reset, timed out) are the store's."""
        return isinstance(error, OSError)

    def get(self, entity: str, key: str) -> dict[str, Any] | None:
        """The stored document of ``key``, or None."""
        stored = self.items.get((entity, key))
        return stored[1] if stored else None
