"""Which worker owns a table key right now: the active partition map, never a standby.

Faust's ``@app.table_route`` answers locally whenever its router names this worker, and
that router hashes the key with the changelog topic's *declared* key codec and the
producer's cached metadata. Two things went wrong with it in a two-worker run (docs/facts.md):

* the changelog topic of a ``str``-keyed table encoded keys as JSON (``'"o-1"'``) while
  the data lives on the partition of the producer's raw key bytes, so the hash pointed at
  the wrong partition, whose owner held the key only as a standby copy and answered it;
* even with the right partition, ``SameNode`` only compares URLs from the last assignment:
  during a rebalance, or while a newly promoted partition is still replaying its changelog,
  the local copy can be behind, and two workers with different maps can bounce a request.

:func:`locate` fixes both: the partition is the producers' murmur2 hash of the key bytes
the table writes (the same hash the source topic used), the owner comes from the
assignor's map of *active* changelog partitions, and this worker answers only when the
assignor says it holds that partition as active and table recovery has finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.types import TP

from cartloom.core.partitioning import key_partition


@dataclass(frozen=True)
class Placement:
    """Where a key's active partition lives, as this worker sees it now."""

    partition: int
    owner_url: str | None  #: canonical URL of the active owner; None while nobody holds it
    local: bool  #: this worker is the active owner
    serving: bool  #: local *and* recovered: a read here is the owner's current value


def table_partitions(table: Any) -> int:
    """Partition count of ``table``'s changelog (equal to its source topic's)."""
    declared = table.partitions or table.changelog_topic.partitions
    return int(declared or table.app.conf.topic_partitions)


def locate(app: Any, table: Any, key: str) -> Placement:
    """Find the worker holding ``key``'s partition of ``table`` as active.

    Reads only in-process state (the last assignment), so it is cheap; a stale map is
    caught by the owner, which re-checks :attr:`Placement.serving` before answering.
    """
    topic = table.changelog_topic.get_topic_name()
    raw_key = table.changelog_topic.prepare_key(key, None)[0]
    partition = key_partition(raw_key, table_partitions(table))
    me = str(app.conf.canonical_url)
    if app.assignor.is_active(TP(topic, partition)):
        recovered = app.tables.recovery.completed.is_set() and not app.rebalancing
        return Placement(partition, me, local=True, serving=recovered)
    for url, topics in app.router.table_metadata(table.name).items():
        if partition in topics.get(topic, ()) and str(url) != me:
            return Placement(partition, str(url), local=False, serving=False)
    return Placement(partition, None, local=False, serving=False)
