"""Recovery keeps the newest version of a key, whatever order its changelog records came in.

With no transactions on the embedded broker nothing fences a worker that was frozen past
its session timeout (a zombie): when it wakes it writes the rest of its batch after its
partitions moved, so a key's changelog can end on a record older than the one before it
(the zombie scenario of the fault suite saw 6 such records). Faust recovers the last
record. CartLoom's table (:class:`cartloom.stream.faust_types.RawKeyTable`) leaves out a
document whose ``version`` is lower than the one it holds, as the sinks do, and a ledger
entry whose command offset is lower; a deletion still applies. Here a real Faust app
recovers a changelog written that way, with each store CartLoom supports (see
``RawKeyTable.apply_changelog_batch`` for why RocksDB compares records of one batch only).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cartloom.stream.faust_types import RawKeyTable
from tests.harness import eventually, in_process_app

pytestmark = pytest.mark.integration

#: What each key's changelog holds, in order (None: a deletion); the stale ones marked.
CHANGELOG: list[tuple[str, dict[str, Any] | None]] = [
    ("k1", {"version": 1, "status": "received"}),
    ("k1", {"version": 3, "status": "reserved"}),
    ("k1", {"version": 2, "status": "received"}),  # stale: a zombie's late write
    ("k2", {"version": 4, "status": "reserved"}),
    ("k2", None),  # deleted (a redaction): stays deleted
    ("k3", {"version": 5, "status": "paid"}),
    ("k3", {"version": 4, "status": "reserved"}),  # stale
    ("k3", {"version": 6, "status": "fulfilled"}),
    ("k4", {"version": 2, "status": "received"}),
    ("k4", None),
    ("k4", {"version": 1, "status": "received"}),  # after a deletion: a new start, kept
    ("k5", {"note": "no version"}),
    ("k5", {"note": "no version, later"}),  # documents without versions: the last one
    # ledger entries rank by the offset of the command that last changed them
    ("k6", {"command_offset": 3, "granted": 1, "released": 0}),
    ("k6", {"command_offset": 7, "granted": 1, "released": 1}),
    ("k6", {"command_offset": 3, "granted": 1, "released": 0}),  # stale: a zombie's reserve
]
EXPECTED = {
    "k1": {"version": 3, "status": "reserved"},
    "k2": None,
    "k3": {"version": 6, "status": "fulfilled"},
    "k4": {"version": 1, "status": "received"},
    "k5": {"note": "no version, later"},
    "k6": {"command_offset": 7, "granted": 1, "released": 1},
}


@pytest.mark.parametrize(
    ("store", "buffer_size"),
    [
        # one record per recovery batch: each compared with what the table holds
        ("memory://", 1),
        # RocksDB compares within a batch only (a local value may never have reached the
        # changelog); Faust's buffer takes these records in one batch
        ("rocksdb://", 1000),
    ],
)
async def test_recovery_keeps_the_newest_version_of_each_key(
    bootstrap: str, producer: AIOKafkaProducer, tmp_path: Path, store: str, buffer_size: int
) -> None:
    run = uuid.uuid4().hex[:8]
    group, table_name, lookups = f"stale-{run}", "things", f"lookups-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(f"{group}-{table_name}-changelog", 1, 1),
                NewTopic(lookups, 1, 1),
            ]
        )
    finally:
        await admin.close()
    for key, value in CHANGELOG:
        body = None if value is None else orjson.dumps(value)
        await producer.send_and_wait(
            f"{group}-{table_name}-changelog", key=key.encode(), value=body, partition=0
        )

    app = in_process_app(
        group,
        bootstrap,
        tmp_path,
        store=store,
        key_serializer="raw",  # as cartloom.stream.app.create_app configures it
        value_serializer="json",
        Table=RawKeyTable,
    )
    things = app.Table(
        table_name,
        default=None,
        partitions=1,
        key_type=str,
        recovery_buffer_size=buffer_size,
    )
    seen: dict[str, Any] = {}

    @app.agent(app.topic(lookups, key_type=str, value_serializer="raw"))
    async def look_up(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            seen[event.key] = things.get(event.key)

    for key in EXPECTED:
        await producer.send_and_wait(lookups, key=key.encode(), value=b"?", partition=0)

    async def all_looked_up() -> bool:
        return len(seen) == len(EXPECTED)

    await app.start()
    try:
        await eventually(all_looked_up, timeout=60, what="the lookups")
    finally:
        await app.stop()
    assert seen == EXPECTED
