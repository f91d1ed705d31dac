"""Which of two changelog records of a key is newer, when a fenced-out owner still writes.

Without Kafka transactions nothing stops a worker frozen past its session timeout (a
zombie) from writing the rest of its batch after its partitions moved to another worker,
so a key's changelog can end on a record older than one before it. Whoever reads the
changelog back (a recovery, a standby, the fault suite's observer) must keep the newest
record by what it says, not by where it landed.

- A view (order, stock, product) says it with its ``version``, which grows with every
  change the key's single writer makes. The zombie and the new owner count up from the
  same recovered record and decide alike on the same inputs, so their records of one
  version hold the same document.
- A reservation ledger entry has no version. It changes only when a command about its
  line is applied; a line's commands travel on one partition, and the agents apply a
  partition's records in offset order (``cartloom.stream.batching.in_offset_order``), so
  its ``command_offset`` ranks it. Read back by position instead, a zombie's late entry (a
  reserve at offset 20) outlived the new owner's release of the same line (offset 23); a
  later release (92) then released the units again, and the SKU's stock fell 2 short of
  its ledger and orders (the zombie scenario of ``docs/crash-safety.md``, finding 18).

Pure.
"""

from __future__ import annotations

from typing import Any


def changelog_rank(document: dict[str, Any]) -> int:
    """The order of a key's changelog records: a higher rank is newer; 0 says nothing.

    A view ranks by its ``version``, a ledger entry by its ``command_offset`` plus one.
    """
    version = _whole_number(document.get("version"))
    if version is not None:
        return version
    offset = _whole_number(document.get("command_offset"))
    return 0 if offset is None else offset + 1


def _whole_number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
