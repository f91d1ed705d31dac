"""Faust classes CartLoom configures the app with."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.tables.recovery import RebalanceAgain
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, EventT
from mode import Service

from cartloom.core.metrics import CHANGELOG_STALE_RECORDS, INPUT_REREADS
from cartloom.domain.changelog_order import changelog_rank
from cartloom.stream.kafka_clients import KafkaConnection
from cartloom.stream.offsets import StallWatch, advance, missed, waiting_for_records

log = logging.getLogger(__name__)

#: Seconds a partition's commit may stand behind a handed-out record before it is looked at.
STALL_PATIENCE_SECONDS = 5.0
#: The same while Faust still counts a record of the partition as being processed: a record
#: dropped at a rebalance can stay in Faust's unacknowledged set, and waiting on it forever
#: left partitions unprocessed for good (short RocksDB SIGKILL runs, see docs/crash-safety.md).
IN_FLIGHT_PATIENCE_SECONDS = 30.0
#: Seconds a partition may go without a record handed out while the broker holds records
#: past its committed offset, before the fetcher is made to ask for it again.
IDLE_PATIENCE_SECONDS = 30.0


class RawKeyTable(faust.Table):  # type: ignore[type-arg]
    """A table whose ``str`` keys travel as the producers' raw key bytes, not as JSON.

    Faust encodes ``str`` keys as JSON (``'"o-1"'``). Raw bytes keep the changelog keys
    equal to the input topics' keys, so web-view routing hashes the same bytes as the
    producers' partitioner and the sinks read plain ids. Choosing the codec here (not by
    assigning ``key_serializer`` after construction) matters: Faust builds the changelog
    topic, which recovery decodes with, while the table is being registered.
    """

    def _serializer_from_type(self, typ: Any) -> Any:
        if typ is str:
            return "raw"
        return super()._serializer_from_type(typ)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        """Apply recovered (or standby) changelog records, leaving out stale ones.

        A worker frozen past its session timeout (a zombie) can write the rest of its batch
        after its partitions moved, with no transactions to fence it, so a key's changelog
        can end on an older record than the one before it. Faust would recover that older
        value. The rule is the sinks' (:func:`cartloom.sinks.base.coalesce`), with ledger
        entries ranked by their command's offset
        (:func:`cartloom.domain.changelog_order.changelog_rank`): a document ranked lower
        than the one the table holds is stale; a deletion always applies; documents
        without a rank apply as Faust would.

        With the in-memory store "holds" means the value before the batch, which came from
        this changelog. A RocksDB store can hold a value its changelog never got (written
        locally, then a SIGKILL before the changelog write, then another worker owning the
        key for a while), whose version says nothing about the changelog's order: there
        only the records of one batch are compared with each other.
        """
        events = list(batch)
        kept = newest_records(events, self._held_rank)
        if len(kept) < len(events):
            CHANGELOG_STALE_RECORDS.labels(self.name).inc(len(events) - len(kept))
        super().apply_changelog_batch(kept)

    def _held_rank(self, key: Any) -> int:
        if not isinstance(self.data, MemoryStore):
            return 0
        try:
            held = self.data[key]
        except KeyError:
            return 0
        return changelog_rank(held) if isinstance(held, dict) else 0


def newest_records(events: list[EventT[Any]], held_rank: Callable[[Any], int]) -> list[EventT[Any]]:
    """``events`` without the documents older than what their key holds before them.

    ``held_rank(key)`` is the rank of what the table holds before the batch (0: none).
    """
    ranks: dict[Any, int] = {}
    kept = []
    for event in events:
        key, value = event.key, event.value
        if event.message.value is None:
            ranks[key] = 0
            kept.append(event)
            continue
        rank = changelog_rank(value) if isinstance(value, dict) else 0
        held = ranks[key] if key in ranks else held_rank(key)
        if rank and rank < held:
            continue
        ranks[key] = rank or held
        kept.append(event)
    return kept


class TunedConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the fetch wait the app's settings choose.

    Faust hard-codes ``fetch_max_wait_ms=1500``. A real Kafka broker answers a fetch as
    soon as records arrive, so the wait only bounds empty polls; the embedded broker holds
    every fetch for the whole wait, which made each hop of the order saga cost up to 1.5 s.
    The app (``cartloom.stream.app.CartloomApp``) carries the value as ``fetch_max_wait_ms``.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts; 500 ms (aiokafka's default) for a plain Faust app.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 500)
        return consumer


class TunedConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, on :class:`TunedConsumerThread`, committing only what ran.

    Faust commits over jumps in the offsets it hands out; CartLoom commits acknowledged
    offsets one after another and looks again at a partition that stalls behind a record
    it handed out (why: :mod:`cartloom.stream.offsets`). Private Faust attributes used here
    (``_acked``, ``_acked_index``, ``_committed_offset``, ``_unacked_messages``,
    ``_read_offset``, ``_new_offset``, ``_add_gap``, ``Message.acked``) are pinned by
    tests/integration/test_commit_only_what_ran.py.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stalls = StallWatch(STALL_PATIENCE_SECONDS)
        self._idle = StallWatch(IDLE_PATIENCE_SECONDS)
        #: Per partition, the highest offset the fetcher handed to Faust since the last
        #: seek. Not Faust's ``_read_offset``: a seek sets that to the offset to read
        #: *next*, so every idle partition looked as if its committed record had been
        #: handed out, and was probed for seconds again and again for nothing.
        self._fetched: dict[TP, int] = {}
        #: Per partition, (seek number, offset read from) of its last seek: where the
        #: handlers' count of the next record starts again
        #: (:class:`cartloom.stream.offsets.InOrder`).
        self._read_from: dict[TP, tuple[int, int | None]] = {}
        self._seeked_to: dict[TP, int | None] = {}  # the last seek_to_committed's offsets
        self._seek_number = 0

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        """Faust's fetch loop, noting the highest offset handed out per partition.

        Per record, not per fetch: only what reached a stream counts. Noting every record a
        fetch brought (in Faust's ``_wait_next_records``) was tried: in the short RocksDB
        SIGKILL run two ``orders.accepted`` partitions then went unprocessed from the start,
        in two runs of three (seed 381884), and never with this.
        """
        fetched = self._fetched
        async for tp, message in super().getmany(timeout):
            if message.offset > fetched.get(tp, -1):
                fetched[tp] = message.offset
            yield tp, message

    async def seek(self, partition: TP, offset: int) -> None:
        """Seek, and forget what was handed out of ``partition`` before."""
        self._fetched.pop(partition, None)
        self._note_reads_from({partition: offset})
        await super().seek(partition, offset)

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset (recovery's end), forgetting the rest."""
        self._fetched.clear()
        self._seeked_to = {}
        await super().perform_seek()
        # The seek went to each assigned partition's committed offset, None where the
        # group never committed there. The fetch then starts at the first offset held,
        # but what Faust drops on the way to the streams around a rebalance (records
        # 0-110 of a partition, seen in the zombie scenario) would go unnoticed, so the
        # handlers' count starts from the broker's.
        reads_from: dict[TP, int | None] = {
            tp: offset if offset is not None and offset >= 0 else None
            for tp, offset in self._seeked_to.items()
        }
        unknown = [
            tp
            for tp, offset in reads_from.items()
            if offset is None and self.app.topics.acks_enabled_for(tp.topic)
        ]
        if unknown:
            try:
                await self._learn_committed_offsets(unknown)
            except Exception:  # the stall check asks again; the first record sets the count
                log.warning("could not read committed offsets after a seek", exc_info=True)
            for tp in unknown:
                committed = self._committed_offset.get(tp)
                reads_from[tp] = committed if known(committed) else None
        self._note_reads_from(reads_from)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek of every partition to its committed offset, remembering where to."""
        offsets = await super().seek_to_committed()
        self._seeked_to = {TP(tp.topic, tp.partition): offset for tp, offset in offsets.items()}
        return offsets

    def _note_reads_from(self, offsets: Mapping[TP, int | None]) -> None:
        self._seek_number += 1
        for tp, offset in offsets.items():
            self._read_from[tp] = (self._seek_number, offset)

    def read_from(self, tp: TP) -> tuple[int, int | None]:
        """(seek number, offset) of ``tp``'s last seek; (0, None) before any."""
        return self._read_from.get(tp, (0, None))

    def refuse(self, message: Any) -> None:
        """Leave ``message`` unacknowledged: nothing is committed from its offset on.

        For a record handed out past one never handled (:class:`cartloom.stream.offsets.InOrder`).
        Faust acknowledges every event of a batch once the agent is done with it; marked
        acknowledged already, this one is not counted, so the commit stands at the first
        record never handled and the stall check reads the partition again from there.
        """
        message.acked = True
        self._unacked_messages.discard(message)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Recovery's seek of its changelog partitions; a round a rebalance replaced restarts.

        Faust's recovery builds each partition's start offset, then seeks. A rebalance can
        land between the two: its ``on_rebalance`` adds the partitions it assigns to the
        very sets the round is working on, with no offset yet (None), and signals a new
        round. When the seek's task and that signal finish in the same turn of the event
        loop, Faust's ``Recovery._wait`` raises the seek's error before it looks at the
        signal, and aiokafka's ``ValueError("Offset must be a positive integer")`` stopped
        an unkilled worker (full-form SIGKILL series, 2026-12-04). Such a seek belongs to a
        round that is over: it is refused with Faust's ``RebalanceAgain``, which the
        recovery loop answers by starting the new round (pinned by
        tests/integration/test_recovery_seek_race.py).
        """
        unknown = sorted(tp for tp, offset in partitions.items() if offset is None)
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]  # TableManager's
        if unknown and recovery.signal_recovery_start.is_set():
            log.info(
                "recovery: %d changelog partition(s) arrived with a new rebalance before "
                "their offsets were read (%s); starting the new round",
                len(unknown),
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in unknown[:4]),
            )
            raise RebalanceAgain()
        await super().seek_wait(partitions)

    def _new_consumer_thread(self) -> TunedConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Record nothing: a jump is not proof that the offsets between hold no record."""

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        offset, used = advance(self._committed_offset[tp], acked)
        if used:
            self._acked_index[tp].difference_update(acked[:used])
            del acked[:used]
        return offset

    @Service.task
    async def _look_again_at_stalled_partitions(self) -> None:
        interval = max(1.0, STALL_PATIENCE_SECONDS / 2)
        async for _ in self.itertimer(interval, name="stalled_partitions"):
            if self.app.rebalancing or not self.flow_active:
                continue
            try:
                await self.look_again_at_stalled_partitions()
            except Exception:  # a probe that fails is tried again next round
                log.warning("could not look at stalled partitions", exc_info=True)

    async def look_again_at_stalled_partitions(self, now: float | None = None) -> None:
        """Re-read or skip the committed offset of each partition stalled behind it."""
        now = time.monotonic() if now is None else now
        try:
            assigned = self.assignment()
        except Exception:  # not started or closing
            return
        self._stalls.keep_only(set(assigned))
        self._idle.keep_only(set(assigned))
        unknown = [
            tp
            for tp in assigned
            if self.app.topics.acks_enabled_for(tp.topic)
            and not known(self._committed_offset.get(tp))
        ]
        if unknown:
            await self._learn_committed_offsets(unknown)
        in_flight = {m.tp for m in list(self._unacked_messages) if not m.acked}
        idle: dict[TP, int] = {}
        for tp in assigned:
            committed = self._committed_offset.get(tp)
            if (
                committed is None
                or committed < 0  # not known yet: learnt from the broker next round
                or tp in self._paused_partitions
                or not self.app.topics.acks_enabled_for(tp.topic)
            ):
                self._stalls.forget(tp)
                self._idle.forget(tp)
                continue
            if tp not in in_flight and waiting_for_records(committed, self._fetched.get(tp)):
                self._stalls.forget(tp)
                if self._idle.stalled(tp, committed, now):
                    idle[tp] = committed
                continue
            self._idle.forget(tp)
            if not missed(committed, self._fetched.get(tp), committed in self._acked_index[tp]):
                self._stalls.forget(tp)
                continue
            patience = IN_FLIGHT_PATIENCE_SECONDS if tp in in_flight else None
            if self._stalls.stalled(tp, committed, now, patience):
                self._stalls.forget(tp)
                await self._look_again(tp, committed, still_in_flight=tp in in_flight)
        if idle:
            await self._fetch_again_if_behind(idle)

    async def _fetch_again_if_behind(self, idle: dict[TP, int]) -> None:
        """Make the fetcher ask again for idle partitions the broker holds records for.

        Seen in the zombie scenario: after a rebalance a partition of ``orders.accepted``
        was assigned, not paused, nothing of it in flight, and its fetcher handed out
        nothing for minutes while 200 records waited (Faust leaves a partition out of the
        partitions it fetches after ``on_buffer_full`` until a pressure drop that a
        cleared buffer never signals). The partition is put back among those fetched
        (Faust's public ``resume_partitions``) and read from its committed offset.
        """
        for tp in idle:
            self._idle.forget(tp)
        ends = await aiokafka_driver.Consumer.highwaters(self, *idle)
        behind = {
            tp: committed
            for tp, committed in idle.items()
            if (ends.get(tp) or 0) > committed
            and self._committed_offset.get(tp) == committed
            and tp not in self._paused_partitions
            and waiting_for_records(committed, self._fetched.get(tp))
        }
        if not behind:
            return
        broker = await self._broker_committed(list(behind))  # one lookup for them all
        for tp, committed in behind.items():
            log.warning(
                "%s[%d]: nothing handed out for %.0f s though the broker holds records "
                "%d..%d past the committed offset; fetching from %d again",
                tp.topic,
                tp.partition,
                IDLE_PATIENCE_SECONDS,
                committed,
                ends[tp] - 1,
                committed,
            )
            INPUT_REREADS.labels(tp.topic, "idle").inc()
            await self._read_again(tp, self._reading_start(tp, committed, broker.get(tp)))

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` again, with the fetcher asking for it.

        Faust leaves a partition out of those it fetches after ``on_buffer_full`` until a
        drain signal that a buffer cleared at a rebalance never gives; a seek alone then
        handed nothing out for 30 s (the zombie scenario, after records were refused for
        coming out of order).
        """
        self._buffered_partitions.discard(tp)
        self.resume_partitions([tp])
        await self.seek(tp, offset)

    def _reading_start(self, tp: TP, committed: int, broker: int | None) -> int:
        """Where to read an idle partition again: the lower of Faust's and the broker's commit.

        In the zombie scenario Faust held 14 as committed where the broker held nothing:
        the commit had failed at the rebalance. Reading from the broker's offset
        processes again what may not have been (each step is idempotent); the partition's
        acknowledgements start over with it.
        """
        if broker is None or broker >= committed:
            return committed
        log.warning(
            "%s[%d]: the broker's committed offset is %d, not %d; reading from %d",
            tp.topic,
            tp.partition,
            broker,
            committed,
            broker,
        )
        self._committed_offset[tp] = broker
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return broker

    async def _learn_committed_offsets(self, partitions: list[TP]) -> None:
        """Ask the broker for the committed offsets Faust does not know (None or -1).

        Faust forgets a partition's committed offset when a rebalance revokes it and
        learns it again only when recovery ends; it keeps -1 for a partition its group
        never committed (and turns a committed 0 into None). No commit is made without it
        (:func:`cartloom.stream.offsets.advance`): a partition the group never committed starts
        at the first offset the broker holds.
        """
        learnt = await self._broker_committed(partitions)
        assigned = self.assignment()
        for tp, offset in learnt.items():
            if tp in assigned and not known(self._committed_offset.get(tp)):
                self._committed_offset[tp] = offset

    async def _broker_committed(self, partitions: list[TP]) -> dict[TP, int]:
        """The group's committed offsets at the broker; the first offset held where none."""
        connection: KafkaConnection | None = getattr(self.app, "kafka", None)
        if connection is None:
            return {}
        wanted = {TopicPartition(tp.topic, tp.partition): tp for tp in partitions}
        admin = connection.admin()
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(
                self.app.conf.id, partitions=list(wanted)
            )
        finally:
            await admin.close()
        learnt = {
            wanted[p]: meta.offset
            for p, meta in found.items()
            if p in wanted and meta is not None and meta.offset >= 0
        }
        never = [p for p, tp in wanted.items() if tp not in learnt]
        if never:
            probe = connection.consumer(enable_auto_commit=False)
            await probe.start()
            try:
                starts = await probe.beginning_offsets(never)
            finally:
                await probe.stop()
            learnt.update({wanted[p]: offset for p, offset in starts.items()})
        return learnt

    async def _look_again(self, tp: TP, committed: int, still_in_flight: bool = False) -> None:
        found = await self._first_offset_from(tp, committed)
        if found is None or self._committed_offset.get(tp) != committed:
            return
        if found == committed:
            log.warning(
                "%s[%d]: the record at offset %d was handed out and never processed%s; "
                "reading it again",
                tp.topic,
                tp.partition,
                committed,
                f" ({IN_FLIGHT_PATIENCE_SECONDS:.0f} s counted in flight)"
                if still_in_flight
                else "",
            )
            INPUT_REREADS.labels(tp.topic, "reread").inc()
            await self._read_again(tp, committed)
            return
        log.info(
            "%s[%d]: no record at offsets %d..%d (transaction markers or removed records); skipped",
            tp.topic,
            tp.partition,
            committed,
            found - 1,
        )
        INPUT_REREADS.labels(tp.topic, "no_record").inc()
        for offset in range(committed, found):
            if offset not in self._acked_index[tp]:
                self._acked_index[tp].add(offset)
                self._acked[tp].append(offset)

    def _probe(self) -> Any:
        """A plain consumer of the app's brokers (``CartloomApp.kafka``), or None without one."""
        connection: KafkaConnection | None = getattr(self.app, "kafka", None)
        return None if connection is None else probe_consumer(connection)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """End offsets as the records show them, which recovery reads changelogs up to.

        The embedded broker (Tansu 0.6) answers ListOffsets with the base offset of a
        partition's last record batch plus one, so a changelog whose last batch holds
        several records looks shorter than it is: recovery stopped there and a worker
        took over a table without the last records of its previous owner (a SIGKILL
        between a batch and its one-record tail leaves such an end; seen as stock
        missing reservations its ledger and orders hold). Reading from one before the
        reported end gives the last batch whole, and the true end with it; on Kafka,
        whose answer is exact, the read confirms it.
        """
        reported = dict(await super().highwaters(*partitions))
        readable = {tp: end for tp, end in reported.items() if end and end > 0}
        if not readable:
            return reported
        probe = self._probe()
        if probe is None:
            return reported
        await probe.start()
        try:
            found = await read_true_ends(probe, readable)
        finally:
            await probe.stop()
        for tp, end in found.items():
            if end > reported[tp]:
                log.info(
                    "%s[%d]: end offset %d, not the %d the broker reported",
                    tp.topic,
                    tp.partition,
                    end,
                    reported[tp],
                )
                reported[tp] = end
        return reported

    async def _first_offset_from(self, tp: TP, offset: int) -> int | None:
        """The offset of the first record at or after ``offset`` the broker holds, if any."""
        probe = self._probe()
        if probe is None:
            return None
        await probe.start()
        try:
            partition = TopicPartition(tp.topic, tp.partition)
            probe.assign([partition])
            probe.seek(partition, offset)
            got = await probe.getmany(partition, timeout_ms=5000, max_records=1)
            records = got.get(partition) or []
            return records[0].offset if records else None
        finally:
            await probe.stop()


def known(committed: int | None) -> bool:
    """Whether Faust knows a partition's committed offset (it keeps None or -1 when not)."""
    return committed is not None and committed >= 0


def probe_consumer(connection: KafkaConnection) -> Any:
    """A consumer without a group, for reads that must not move the worker's own."""
    return connection.consumer(enable_auto_commit=False)


async def read_true_ends(
    probe: Any, reported: Mapping[TP, int], patience: float = 10.0
) -> dict[TP, int]:
    """Per partition, one past the last record, read from one before each reported end.

    Reads until each partition's records reach the high watermark of its fetch answers
    (or for ``patience`` seconds); a partition with nothing at or after its reported end keeps it.
    """
    partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in reported}
    probe.assign(list(partitions))
    for partition, tp in partitions.items():
        probe.seek(partition, reported[tp] - 1)
    ends = dict(reported)
    waiting = set(partitions)
    deadline = time.monotonic() + patience
    while waiting and time.monotonic() < deadline:
        got = await probe.getmany(*waiting, timeout_ms=500)
        for partition, records in got.items():
            if records:
                tp = partitions[partition]
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        for partition in list(waiting):
            highwater = probe.highwater(partition)
            if highwater is not None and ends[partitions[partition]] >= highwater:
                waiting.discard(partition)
    return ends


class TunedTransport(aiokafka_driver.Transport):
    """Faust's aiokafka transport, with :class:`TunedConsumer`."""

    Consumer = TunedConsumer
