"""The stock agent: the single writer of ``inventory_by_sku`` and the reservation ledger.

It reads everything keyed by SKU (``inventory`` levels and adjustments, the saga's
``inventory.commands``) in batches on the SKU's partition, applies them with the pure
:mod:`cartloom.domain.inventory` and :mod:`cartloom.domain.ledger`, writes each changed
SKU and ledger entry once per batch, and answers reserve commands on
``reservation.results`` keyed by order id; a fence is answered there too, after the answers
to every command that came before it on the partition. Oversold lines and expired reservations are
published on ``inventory.alerts`` and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import faust

from cartloom.core import metrics
from cartloom.core.clock import utc_now_iso
from cartloom.domain.inventory import (
    InventoryView,
    StockOutcome,
    apply_stock,
    empty_inventory,
    parse_stock_message,
)
from cartloom.domain.ledger import (
    Fence,
    LedgerEntry,
    LedgerStep,
    Release,
    ReleaseReason,
    ReserveOutcome,
    apply_command,
    counting_through,
    effective_entry,
    entry_key,
    parse_command,
    pass_fence,
    result_to_json,
    sealed_entry,
)
from cartloom.stream.app import app, settings
from cartloom.stream.batching import (
    BatchHandler,
    MessageHandler,
    Outbox,
    TableBatch,
    handle_batch,
    in_offset_order,
)
from cartloom.stream.deadletter import dead_letter_topic
from cartloom.stream.envelopes import RESERVATION_RESULTS
from cartloom.stream.faust_types import TunedConsumer
from cartloom.stream.forwarding import forward_if_elsewhere, forwarded_from
from cartloom.stream.tables import inventory_by_sku, reservation_by_line
from cartloom.stream.topics import inventory_alerts_topic, reservation_results_topic, stock_inputs


@app.agent(stock_inputs)
async def reserve_stock(stream: faust.StreamT[bytes]) -> None:
    """Apply stock messages and ledger commands a batch at a time, per SKU partition."""
    batch_max, within = settings.order_batch_max, settings.order_batch_within_seconds
    async for batch in cast(Any, stream).take_events(batch_max, within):
        events = in_offset_order(batch, cast(TunedConsumer, app.consumer), "stock")
        if not events:
            continue
        stock = TableBatch(inventory_by_sku, app.producer)
        ledger = TableBatch(reservation_by_line, app.producer)
        outbox = Outbox(app.producer)
        handler = StockHandler(stock, ledger, outbox)
        writes = ([ledger, stock], outbox)  # entries first: see effective_entry
        await handle_batch(events, handler, writes, dead_letter_topic, "stock")


class StockHandler(BatchHandler):
    """Dispatches one event by its topic to the domain and records what it decided."""

    def __init__(self, stock: TableBatch, ledger: TableBatch, outbox: Outbox) -> None:
        super().__init__()
        self.stock, self.ledger, self.outbox = stock, ledger, outbox
        self.now = utc_now_iso()
        # Each entry this batch changes, as counted when the batch began (effective_entry).
        self._before: dict[str, LedgerEntry | None] = {}
        # Each SKU's stock as the batch found it. An envelope carries several lines of a
        # SKU at one offset: once the first line moved the stock's offset there, entries
        # of the other lines written before a crash would look counted against it.
        self._stock_found: dict[str, InventoryView] = {}

    def handlers(self) -> Mapping[str, MessageHandler]:
        """Stock messages and the ledger's commands."""
        return {"inventory": self._stock_message, "inventory.commands": self._command}

    def _stock_message(
        self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None
    ) -> None:
        update = parse_stock_message(payload, key=key)
        if forward_if_elsewhere(event, update.sku, self.outbox, self.tally):
            return  # applied on its SKU's partition, by whichever worker owns it
        view, outcome = apply_stock(
            self._stock(update.sku),
            update,
            offset=event.message.offset,
            now=self.now,
            forwarded_from=forwarded_from(event.message),
        )
        self.tally.count(metrics.STOCK_UPDATES, outcome.value)
        if outcome is not StockOutcome.STALE:  # a duplicate is written again: see _command
            self.stock.put(update.sku, view, event.message.partition)

    def _command(self, event: faust.EventT[Any], payload: dict[str, Any], key: str | None) -> None:
        partition = event.message.partition
        command = parse_command(payload, key=key)
        if isinstance(command, Fence):  # the saga's deadline: answered in partition order
            body = result_to_json(pass_fence(command))
            field = RESERVATION_RESULTS.field
            self.outbox.add_to_envelope(reservation_results_topic, command.order_id, field, body)
            return
        ledger_key = entry_key(command.order_id, command.line)
        sku = command.sku
        before = self._stock(sku)
        stored = self.ledger.get(ledger_key)
        if ledger_key in self._before:  # changed earlier in this batch: its own write counts
            entry = stored
        else:  # judged against the stock as the batch found it, not as this batch moved it
            entry = effective_entry(stored, self._stock_found[sku])
        step = apply_command(before, entry, command, self.now)
        if step.changed:
            offset = event.message.offset
            counted = self._before.setdefault(ledger_key, entry)
            self.ledger.put(ledger_key, sealed_entry(step.entry, counted, offset), partition)
            stock = counting_through(step.stock, offset, changed=step.stock is not before)
            self.stock.put(sku, stock, partition)
            self._count(step, command)
        elif stored is not None and stored is entry:
            # A duplicate. Written again as it is: if this worker's store (RocksDB) kept a
            # change whose changelog write a crash lost, the changelog catches up here.
            self.ledger.put(ledger_key, stored, partition)
            self.stock.put(sku, before, partition)
        if step.result is not None:  # duplicates are answered again: the first answer may be lost
            body, topic = result_to_json(step.result), reservation_results_topic
            self.outbox.add_to_envelope(topic, command.order_id, RESERVATION_RESULTS.field, body)

    def _stock(self, sku: str) -> InventoryView:
        stored: InventoryView | None = self.stock.get(sku)
        view = stored if stored is not None else empty_inventory(sku, self.now)
        self._stock_found.setdefault(sku, view)
        return view

    def _count(self, step: LedgerStep, command: Any) -> None:
        result = step.result
        if result is not None:
            self.tally.count(metrics.RESERVATIONS, result.outcome.value)
            if result.outcome is ReserveOutcome.PARTIAL:
                self.tally.count(metrics.OVERSOLD_UNITS, amount=result.short_by)
                self._alert("oversold", step, short_by=result.short_by)
        if isinstance(command, Release) and step.released:
            reason = command.reason.value
            self.tally.count(metrics.RESERVED_UNITS_RELEASED, reason, amount=step.released)
            if command.reason is ReleaseReason.EXPIRED:
                self.tally.count(metrics.RESERVATIONS_EXPIRED)
                self._alert("reservation_expired", step, released=step.released)

    def _alert(self, kind: str, step: LedgerStep, **fields: int) -> None:
        entry = step.entry
        alert = {
            "event": kind,
            "sku": entry["sku"],
            "order_id": entry["order_id"],
            "line": entry["line"],
            "requested": entry["requested"],
            "granted": entry["granted"],
            "at": self.now,
            **fields,
        }
        self.outbox.add(inventory_alerts_topic, entry["sku"], alert)
