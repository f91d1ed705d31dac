"""Inventory write-back: stock CartLoom takes for non-Shopify orders is taken in Shopify too.

Source: the reservation ledger's changelog (one entry per order line, with ``granted``,
``committed`` and ``released`` units). For each line of an order that did not come from
Shopify, the units Shopify must not sell again are ``granted - released`` (reserved or
committed). What was already pushed is kept per line in the compacted topic
``shopify.writeback.progress`` (:mod:`cartloom.shopify.writeback_progress`; in Kafka, so it
survives a cache that loses its data), so a redelivered or replayed entry pushes only the
difference, and nothing when there is none.

Each push is a compare-and-swap: read the item's ``available``, then
``inventorySetQuantities`` to ``available - delta`` with ``compareQuantity = available``;
a ``COMPARE_QUANTITY_STALE`` answer (someone else changed it) re-reads and tries again.
The intent is written to the progress topic (and acknowledged) before the mutation: if the
outcome of a request is unknown (timeout, crash), the retry finds Shopify already at the
intended quantity and records it as applied instead of taking the units twice.

One line never holds up the others (:class:`WritebackRunner`): while the Admin API, the
broker or Redis (the API rate budget) is unavailable the batch waits and retries without
bound; a line that fails on its own (a SKU Shopify does not know, conflicts that do not
settle) is retried a bounded number of times (``CARTLOOM_SHOPIFY_WRITEBACK_MAX_ATTEMPTS``)
while the other lines go ahead; then it, like an entry Shopify refuses, an unusable entry
or one that hit a bug, is set aside to ``shopify.writeback.dlq`` with the reason in
headers, counted, and the stream moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from cartloom.core import metrics
from cartloom.domain.errors import InvalidInput, RejectReason
from cartloom.domain.shopify.normalise import ORDER_PREFIX
from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable, AdminClient
from cartloom.shopify.writeback_progress import LineProgress, ProgressListener, WritebackProgress
from cartloom.sinks.redis import store_unavailable as redis_unavailable
from cartloom.stream.deadletter import queue_dead_letter
from cartloom.stream.deliveries import Deliveries

log = logging.getLogger(__name__)
MAX_CAS_ATTEMPTS = 10
#: Where write-back sets aside the ledger entries it could not push (``topics.yaml``).
WRITEBACK_DEAD_LETTER_TOPIC = "shopify.writeback.dlq"
#: Where write-back keeps each line's progress (``topics.yaml``, compacted).
WRITEBACK_PROGRESS_TOPIC = "shopify.writeback.progress"


class UnknownSku(AdminApiError):  # noqa: N818 - Shopify's verdict on a SKU
    """Shopify has no inventory item for the SKU (at the configured location)."""


class ShopifyRefused(AdminApiError):  # noqa: N818 - Shopify's verdict on a mutation
    """Shopify refused the quantity change with user errors (other than a stale compare)."""


ITEM_BY_SKU = """
query CartLoomInventoryItems($first: Int!, $query: String) {
  inventoryItems(first: $first, query: $query) {
    edges { node {
      id sku
      inventoryLevels(first: 10) { edges { node {
        location { id } quantities(names: ["available"]) { name quantity }
      } } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
SET_QUANTITIES = """
mutation CartLoomSetQuantities($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { id reason referenceDocumentUri changes { name delta } }
    userErrors { field message code }
  }
}
"""


@dataclass(frozen=True, slots=True)
class LineTake:
    """Units one order line holds out of stock, from a ledger entry."""

    key: str
    order_id: str
    sku: str
    taken: int


def line_take(key: str, entry: Any) -> LineTake | None:
    """The take a ledger entry means, or None for Shopify's own orders.

    Raises :class:`InvalidInput` for an entry that is not a ledger entry.
    """
    if not isinstance(entry, dict):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "ledger entry is not a JSON object")
    order_id, sku = entry.get("order_id"), entry.get("sku")
    granted, released = entry.get("granted"), entry.get("released")
    if not isinstance(order_id, str):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "ledger entry without order_id")
    if order_id.startswith(ORDER_PREFIX):
        return None  # Shopify already counted its own orders
    if not isinstance(sku, str) or not isinstance(granted, int) or not isinstance(released, int):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, "ledger entry needs sku, granted, released")
    return LineTake(key, order_id, sku, max(0, granted - released))


class InventoryWriteback:
    """Pushes line takes to Shopify exactly once per change (see the module docstring)."""

    def __init__(
        self, client: AdminClient, progress: WritebackProgress, location_id: str | None
    ) -> None:
        self._client = client
        self.progress = progress
        self._location = location_id

    async def push(self, take: LineTake, ledger_partition: int) -> str:
        """Bring Shopify in line with ``take``; the outcome (a metric label) is returned.

        ``ledger_partition``: the ledger changelog partition the take was read from, whose
        progress partition keeps the line's progress.
        """
        state = self.progress.get(take.key)
        pushed, pending = state.pushed, state.pending
        if pushed == take.taken:
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="already_applied").inc()
            return "already_applied"
        for _ in range(MAX_CAS_ATTEMPTS):
            item_id, location, available = await self._read(take.sku)
            if pending and pending["target"] == take.taken and available == pending["quantity"]:
                # the earlier request did land: do not take twice
                await self.progress.record(take.key, ledger_partition, LineProgress(take.taken))
                metrics.SHOPIFY_WRITEBACKS.labels(outcome="already_applied").inc()
                return "already_applied"
            delta = take.taken - pushed
            pending = {"target": take.taken, "compare": available, "quantity": available - delta}
            await self.progress.record(take.key, ledger_partition, LineProgress(pushed, pending))
            if await self._set(take, item_id, location, pending):
                await self.progress.record(take.key, ledger_partition, LineProgress(take.taken))
                metrics.SHOPIFY_WRITEBACKS.labels(outcome="applied").inc()
                return "applied"
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="conflict").inc()
        metrics.SHOPIFY_WRITEBACKS.labels(outcome="failed").inc()
        raise AdminApiError(f"write-back of {take.key}: still conflicting after retries")

    async def _read(self, sku: str) -> tuple[str, str, int]:
        variables = {"first": 1, "query": f"sku:'{sku}'"}
        data = await self._client.execute(ITEM_BY_SKU, variables, "CartLoomInventoryItems", 5)
        edges = (data.get("inventoryItems") or {}).get("edges") or []
        if not edges:
            raise UnknownSku(f"no Shopify inventory item has SKU {sku!r}")
        node = edges[0]["node"]
        for edge in node["inventoryLevels"]["edges"]:
            level = edge["node"]
            if self._location in (None, level["location"]["id"]):
                quantity = next(q["quantity"] for q in level["quantities"])
                return node["id"], level["location"]["id"], int(quantity)
        raise UnknownSku(f"SKU {sku!r} is not stocked at {self._location}")

    async def _set(self, take: LineTake, item: str, location: str, plan: dict[str, int]) -> bool:
        """One compare-and-swap; False when Shopify's quantity changed in between."""
        quantity = {
            "inventoryItemId": item,
            "locationId": location,
            "quantity": plan["quantity"],
            "compareQuantity": plan["compare"],
        }
        variables = {
            "input": {
                "name": "available",
                "reason": "correction",
                "referenceDocumentUri": f"cartloom://ledger/{take.key}?taken={take.taken}",
                "quantities": [quantity],
            }
        }
        data = await self._client.execute(SET_QUANTITIES, variables, "CartLoomSetQuantities", 10)
        errors = (data.get("inventorySetQuantities") or {}).get("userErrors") or []
        if any(e.get("code") == "COMPARE_QUANTITY_STALE" for e in errors):
            return False
        if errors:
            raise ShopifyRefused(f"write-back of {take.key} refused: {errors}", errors)
        return True


@dataclass(slots=True)
class _Line:
    """A line's newest take in a batch, the record it came from, and its failed attempts."""

    take: LineTake
    record: Any
    attempts: int = 0

    @property
    def partition(self) -> TopicPartition:
        """The ledger changelog partition the line was read from."""
        return TopicPartition(self.record.topic, self.record.partition)


DeadLetter = tuple[Any, RejectReason, str]


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` means Shopify, the broker or Redis cannot be used now (not the line)."""
    return isinstance(error, AdminApiUnavailable | KafkaError | TimeoutError) or redis_unavailable(
        error
    )


class WritebackRunner:
    """Consumes the ledger changelog in its own group; commits once every line is settled.

    A line is settled when Shopify took it or it was set aside to the dead-letter topic
    and the broker acknowledged that. ``producer`` (not started) sends the dead letters.
    """

    def __init__(
        self,
        writeback: InventoryWriteback,
        consumer: Any,
        producer: Any,
        *,
        max_attempts: int = 5,
        retry_base_seconds: float = 0.5,
        retry_max_seconds: float = 30.0,
        dead_letter_topic: str = WRITEBACK_DEAD_LETTER_TOPIC,
    ) -> None:
        self._writeback = writeback
        self._consumer = consumer
        self._producer = producer
        self._max_attempts = max(1, max_attempts)
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._dead_letter_topic = dead_letter_topic
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until :meth:`stop`; each assignment first reads its lines' progress."""
        # Before the consumer starts: subscribing again once it runs breaks aiokafka's fetcher.
        self._consumer.subscribe(
            topics=sorted(self._consumer.subscription()),
            listener=ProgressListener(self._writeback.progress),
        )
        await self._producer.start()
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=500, max_records=500)
                if batch:
                    await self.apply(batch)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def apply(self, batch: dict[Any, list[Any]]) -> None:
        """Push the newest entry of each line in ``batch``, then commit its offsets.

        Lines that fail on their own are retried in later rounds, after the others were
        pushed; while Shopify or Redis is unavailable the rounds go on without bound. If
        the runner is stopped meanwhile the batch is left uncommitted (re-read on start).
        """
        await self._writeback.progress.ensure_loaded(tp.partition for tp in batch)
        lines, letters = self._decode(batch)
        rounds = 0
        while lines:
            lines = await self._push_round(lines, letters)
            if lines:
                rounds += 1
                if not await self._back_off(rounds):
                    return
        await self._dead_letter(letters)
        try:
            assigned = self._consumer.assignment()
            offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs and tp in assigned}
            if offsets:  # (an empty mapping would commit every position)
                await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner re-reads them (pushes are idempotent).
            log.warning("inventory write-back could not commit: %s", exc)

    def _decode(self, batch: dict[Any, list[Any]]) -> tuple[list[_Line], list[DeadLetter]]:
        newest: dict[str, _Line] = {}
        letters: list[DeadLetter] = []
        for records in batch.values():
            for record in records:
                if record.key is None or record.value is None:
                    continue  # a deleted entry: nothing to push
                key = record.key.decode(errors="replace")
                try:
                    take = line_take(key, orjson.loads(record.value))
                except orjson.JSONDecodeError as exc:
                    letters.append((record, RejectReason.INVALID_JSON, str(exc)))
                    continue
                except InvalidInput as exc:
                    letters.append((record, exc.reason, exc.detail))
                    continue
                if take is not None:
                    newest[key] = _Line(take, record)
        return list(newest.values()), letters

    async def _push_round(self, lines: list[_Line], letters: list[DeadLetter]) -> list[_Line]:
        """Push each line once; return those to try again (a letter for the given-up ones)."""
        again: list[_Line] = []
        for index, line in enumerate(lines):
            if line.partition not in self._consumer.assignment():
                continue  # revoked meanwhile: its new owner pushes it (this batch is not committed)
            try:
                await self._writeback.push(line.take, line.record.partition)
            except Exception as exc:
                if unavailable(exc):
                    log.warning("inventory write-back waits: Shopify or Redis unavailable: %s", exc)
                    return again + lines[index:]  # the rest would only fail the same way
                letter = self._judge(line, exc)
                if letter is None:
                    again.append(line)
                else:
                    letters.append(letter)
        return again

    def _judge(self, line: _Line, error: Exception) -> DeadLetter | None:
        """None to try ``line`` again, else the dead letter it becomes."""
        take = line.take
        if isinstance(error, ShopifyRefused):
            return line.record, RejectReason.REFUSED, str(error)
        if not isinstance(error, AdminApiError):  # a bug: never stop the stream for it
            log.exception("inventory write-back of %s failed unexpectedly", take.key)
            return line.record, RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"
        line.attempts += 1
        if line.attempts < self._max_attempts:
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="retried").inc()
            log.warning("write-back of %s failed (attempt %d): %s", take.key, line.attempts, error)
            return None
        reason = RejectReason.UNKNOWN_SKU if isinstance(error, UnknownSku) else None
        detail = f"{line.attempts} attempts failed, the last with: {error}"
        return line.record, reason or RejectReason.RETRIES_EXHAUSTED, detail

    async def _back_off(self, rounds: int) -> bool:
        """Wait a capped, jittered exponential time; False if the runner was stopped."""
        ceiling = min(self._retry_max, self._retry_base * 2 ** min(rounds - 1, 30))
        delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        return not self._stopping.is_set()

    async def _dead_letter(self, letters: list[DeadLetter]) -> None:
        """Set ``letters`` aside; return once the broker has them (else raise, no commit)."""
        if not letters:
            return
        deliveries = Deliveries(self._producer)
        for record, reason, detail in letters:
            log.error("inventory write-back sets aside %s (%s): %s", record.key, reason, detail)
            await queue_dead_letter(deliveries, self._dead_letter_topic, record, reason, detail)
        await deliveries.acknowledged()
        for record, reason, _ in letters:
            metrics.SHOPIFY_WRITEBACKS.labels(outcome="dead_lettered").inc()
            metrics.SHOPIFY_WRITEBACK_DEAD_LETTERS.labels(reason=reason.value).inc()
            metrics.DEAD_LETTERS.labels(topic=record.topic, reason=reason.value).inc()

    def stop(self) -> None:
        """Finish the batch in hand (or leave it uncommitted during a back-off) and stop."""
        self._stopping.set()
