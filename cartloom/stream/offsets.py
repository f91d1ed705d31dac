"""Which input offset a worker may commit, and when a stalled partition needs a second look.

Pure bookkeeping for :class:`cartloom.stream.faust_types.TunedConsumer`; no Kafka here.

Faust commits the first run of acknowledged offsets of a partition, and it bridges any
jump in the offsets it is handed (a "gap": it assumes a compacted record or a
transaction marker) and a hole of one offset right after the committed one. Both bridges
commit past records nobody processed when the jump is Faust's own doing: records fetched
before a seek and handed out after it, records dropped at a rebalance (``getmany`` stops on
a new generation, ``flow_control.clear()`` empties the stream buffers) while the client's
fetch position has already moved on. Seen under SIGKILL and rebalances on the local stack:
an envelope of four orders committed over and never applied, and a group stuck behind a
record it had dropped (docs/crash-safety.md).

CartLoom commits only offsets it saw acknowledged, one after another from the committed
one. A partition whose commit stands still while later records were handed out is looked
at again by the consumer: either the broker holds no record at the committed offset (a
transaction marker, a compacted or deleted record: skipped, as Faust meant to) or it does
and it was dropped (read again from there; a duplicate is harmless, every handler is
idempotent).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum


def advance(committed: int | None, acked: Sequence[int]) -> tuple[int | None, int]:
    """The offset to commit next and how many of the sorted ``acked`` offsets it uses up.

    ``committed`` is the next offset to read (Kafka's committed offset). Without one
    (``None``, or Faust's -1) nothing is committed: Faust forgets a partition's committed
    offset when a rebalance revokes it and learns it again only at the end of recovery,
    while records fetched before the rebalance are still being processed and acknowledged.
    Starting the run at the lowest acknowledged offset then committed over the records
    the rebalance had dropped (seen in full-scale SIGKILL runs: an envelope of two orders
    committed over and never applied). The consumer asks the broker instead. Offsets below
    ``committed`` (acknowledged twice across a rebalance) are used up without moving
    anything. With ``committed`` not acknowledged there is nothing to commit.
    """
    if committed is None or committed < 0:
        return None, 0
    used = 0
    while used < len(acked) and acked[used] < committed:
        used += 1
    if used == len(acked) or acked[used] != committed:
        return None, used
    last = acked[used]
    used += 1
    while used < len(acked) and acked[used] == last + 1:
        last = acked[used]
        used += 1
    return last + 1, used


@dataclass
class StallWatch:
    """Says when a partition's commit has stood at one offset for ``patience`` seconds."""

    patience: float
    _since: dict[Hashable, tuple[int, float]] = field(default_factory=dict)

    def stalled(
        self, key: Hashable, committed: int, now: float, patience: float | None = None
    ) -> bool:
        """Whether ``key`` has been at ``committed`` for ``patience`` seconds (seen now).

        ``patience`` overrides the watch's own for this look (a longer one while a record
        of the partition is still being processed).
        """
        seen = self._since.get(key)
        if seen is None or seen[0] != committed:
            self._since[key] = (committed, now)
            return False
        return now - seen[1] >= (self.patience if patience is None else patience)

    def forget(self, key: Hashable) -> None:
        """Start over for ``key`` (it moved, was looked at, or is no longer ours)."""
        self._since.pop(key, None)

    def keep_only(self, keys: set[Hashable]) -> None:
        """Drop every partition not in ``keys`` (revoked ones)."""
        for key in [k for k in self._since if k not in keys]:
            del self._since[key]


def missed(committed: int, read: int | None, acked: bool) -> bool:
    """Whether the record at ``committed`` looks handed out but not (yet) processed.

    ``read`` is the highest offset the fetcher handed out since the last seek (not Faust's
    read offset, which a seek sets to the offset to read next). True when something at or
    past the committed offset was handed out and the committed one is not acknowledged.
    How long that may last before the partition is read again is the caller's patience.
    """
    return read is not None and read >= committed and not acked


def waiting_for_records(committed: int, read: int | None) -> bool:
    """Whether everything handed out of a partition since the last seek is committed.

    Such a partition waits for new records; if the broker holds some past ``committed``
    and none is handed out for long, the fetcher has stopped asking for the partition.
    """
    return read is None or read < committed


class HandOut(Enum):
    """What a handler does with a record, by its offset (:class:`InOrder`)."""

    TAKE = "take"  # the next record of its partition: handle it
    SEEN = "seen"  # at or before one handled since the last seek: handled already
    AHEAD = "ahead"  # past a record never handled: refuse it, unacknowledged


@dataclass
class InOrder:
    """Lets a partition's records be handled only in offset order, none skipped.

    Faust can drop records between the fetch and a stream (at a rebalance; see the module
    docstring) and hand out the ones after them. Handled then, commands ran out of order:
    in the zombie scenario a new owner applied a SKU's commands 122-188 before 19-121,
    which were read again only a rebalance later, and the stock's "counted up to" mark
    passed commands it never counted (docs/crash-safety.md). A record past the next
    offset is therefore refused and left unacknowledged: the commit stands at the first
    record never handled, and the consumer reads the partition again from there.

    ``read_from`` is the consumer's (seeks so far, offset read from) for the partition: a
    seek starts the count again at its offset (None: unknown, the first record sets it).
    """

    _next: dict[Hashable, tuple[int, int | None]] = field(default_factory=dict)

    def judge(self, key: Hashable, offset: int, read_from: tuple[int, int | None]) -> HandOut:
        """Whether the record at ``offset`` of partition ``key`` may be handled now."""
        seeks, start = read_from
        seen_seeks, expected = self._next.get(key, (-1, None))
        if seen_seeks != seeks:
            expected = start
        if expected is None or offset == expected:
            self._next[key] = (seeks, offset + 1)
            return HandOut.TAKE
        self._next[key] = (seeks, expected)
        return HandOut.SEEN if offset < expected else HandOut.AHEAD
