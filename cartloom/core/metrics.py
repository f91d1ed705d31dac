"""CartLoom's domain metrics, declared once; Faust's own figures come from its Prometheus sensor.

Label values are bounded sets (topics, reason codes, stores, outcomes): never order ids or SKUs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

#: Buckets of the per-batch timings (agents, intake): 1 ms to 2.5 s.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@lru_cache(maxsize=4096)
def labelled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, cached.

    The agents count per event, and ``labels()`` (validation and a lock per call) was a
    tenth of the order path's time.
    """
    return metric.labels(*values)


class Tally:
    """Counts made while an agent handles a batch, added to their counters once per batch.

    A counter's ``inc`` takes a lock; the order path counts several things per order, so
    it counts here and :meth:`publish` adds each total once, when the batch is handled.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[Any, tuple[str, ...]], float] = {}

    def count(self, metric: Any, *labels: str, amount: float = 1) -> None:
        """Add ``amount`` to ``metric`` (with ``labels``, if it has labels) at publish time."""
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + amount

    def publish(self) -> None:
        """Add every total to its counter and start again from zero."""
        for (metric, labels), amount in self._counts.items():
            (labelled(metric, *labels) if labels else metric).inc(amount)
        self._counts.clear()


ORDERS_RECEIVED = Counter(
    "cartloom_orders_received_total",
    "Orders accepted into the orders table for the first time.",
)
ORDERS_DUPLICATE = Counter(
    "cartloom_orders_duplicate_total",
    "Order messages for an order already known (redeliveries, replays); changed nothing.",
)
ORDER_INPUTS = Counter(
    "cartloom_order_inputs_total",
    "Inputs handled by the orders agent, by input (order, event, result, timeout) and outcome"
    " (applied, deferred, duplicate, stale, illegal, ignored; held: an event before its order).",
    ["input", "outcome"],
)
EARLY_EVENTS = Counter(
    "cartloom_early_events_total",
    "Lifecycle events that arrived before their order, by outcome: held (kept for the order),"
    " duplicate (already held), applied (handed to the order when it arrived), expired (the"
    " order did not come in time: dead-lettered as unknown_order), evicted (over the per-order"
    " limit: dead-lettered as held_over_limit), invalid (the order could not take it).",
    ["outcome"],
)
ORDER_TRANSITIONS = Counter(
    "cartloom_order_transitions_total",
    "Orders that moved to a new status, by the status reached.",
    ["status"],
)
ORDER_TRANSITIONS_REFUSED = Counter(
    "cartloom_order_transitions_refused_total",
    "Lifecycle events the state machine forbids (refused, logged with the order id).",
)
RESERVATIONS = Counter(
    "cartloom_reservations_total",
    "Reserve commands answered for the first time, by outcome (reserved, partial, short, refused).",
    ["outcome"],
)
RESERVED_UNITS_RELEASED = Counter(
    "cartloom_reserved_units_released_total",
    "Reserved units given back to available, by reason (rejected, cancelled, refunded, expired,"
    " deadline).",
    ["reason"],
)
RESERVATIONS_EXPIRED = Counter(
    "cartloom_reservations_expired_total",
    "Reservation lines released because the order stayed unpaid past the reservation TTL.",
)
OVERSOLD_UNITS = Counter(
    "cartloom_oversold_units_total",
    "Units of orders Shopify already accepted that CartLoom could not reserve.",
)
STOCK_UPDATES = Counter(
    "cartloom_stock_updates_total",
    "Stock messages (levels, adjustments), by outcome (applied, stale, duplicate).",
    ["outcome"],
)
SAGA_NUDGES = Counter(
    "cartloom_saga_nudges_total",
    "Overdue orders nudged by the timers, by kind (deadline, expire; held_events: events held"
    " for an order that has not arrived fell due).",
    ["kind"],
)
AGENT_BATCH_SECONDS = Histogram(
    "cartloom_agent_batch_seconds",
    "Time to handle one batch of events, by agent (orders, stock).",
    ["agent"],
    buckets=BATCH_BUCKETS,
)
ORDER_INTAKE = Counter(
    "cartloom_order_intake_records_total",
    "Records the order intake read from `orders`, by outcome (accepted, dead_lettered).",
    ["outcome"],
)
ORDER_INTAKE_LAG = Gauge(
    "cartloom_order_intake_lag_records",
    "Records of `orders` on this worker's intake partitions not yet forwarded (its lag).",
)
ORDER_INTAKE_DELIVERY_FAILURES = Counter(
    "cartloom_order_intake_delivery_failures_total",
    "Intake batches whose envelopes or dead letters the broker did not acknowledge (the"
    " worker stops, nothing committed).",
)
ORDER_INTAKE_BATCH_SECONDS = Histogram(
    "cartloom_order_intake_batch_seconds",
    "Time from reading one intake batch to its offsets being committed.",
    buckets=BATCH_BUCKETS,
)
DEAD_LETTERS_REPLAYED = Counter(
    "cartloom_dead_letters_replayed_total",
    "Dead letters sent back to their source topic by `cartloom dlq replay`, by topic.",
    ["topic"],
)
DEAD_LETTERS = Counter(
    "cartloom_dead_letters_total",
    "Messages sent to a dead-letter topic, by source topic and reason.",
    ["topic", "reason"],
)
SINK_WRITES = Counter(
    "cartloom_sink_writes_total",
    "Items offered to a store, by store and outcome (written, stale, deleted, rejected).",
    ["store", "outcome"],
)
SINK_FAILURES = Counter(
    "cartloom_sink_failures_total",
    "Write attempts a store failed (in whole or in part) and that are retried, by store.",
    ["store"],
)
SINK_DEAD_LETTERS = Counter(
    "cartloom_sink_dead_letters_total",
    "Changelog records a store could not take, set aside to sinks.dlq, by store and reason"
    " (refused, retries_exhausted, invalid_json, key_mismatch).",
    ["store", "reason"],
)
SINK_COALESCED = Counter(
    "cartloom_sink_coalesced_total",
    "Changes dropped before writing because a newer version of the key was in the batch.",
    ["store"],
)
SINK_UNUSABLE = Counter(
    "cartloom_sink_unusable_records_total",
    "Changelog records a sink skipped because they carry no key or no JSON object, by store.",
    ["store"],
)
SINK_LAG = Gauge(
    "cartloom_sink_lag_records",
    "Changelog records not yet written to a store (the sink group's lag), by store.",
    ["store"],
)
VIEW_READS = Counter(
    "cartloom_view_reads_total",
    "Views read through cartloom.sinks.read, by entity and source (redis, dynamodb, missing,"
    " redis_error).",
    ["entity", "source"],
)
SINK_BATCH_SECONDS = Histogram(
    "cartloom_sink_batch_seconds",
    "Time to write one coalesced batch to a store.",
    ["store"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# --- Live queries and readiness (cartloom.web) ---
LIVE_QUERIES = Counter(
    "cartloom_live_queries_total",
    "Live queries answered, by entity and outcome (found, not_found, forwarded, unavailable,"
    " version_timeout, unauthorized, owner_unreachable, bad_request).",
    ["entity", "outcome"],
)
LIVE_QUERY_SECONDS = Histogram(
    "cartloom_live_query_seconds",
    "Time to answer a live query, by entity and route (local or forwarded).",
    ["entity", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INPUT_OUT_OF_ORDER = Counter(
    "cartloom_input_out_of_order_total",
    "Input records an agent did not handle because they came out of offset order, by"
    " outcome: ahead (handed out past a record never handled: refused, unacknowledged, read"
    " again in order) or seen (at or before one handled since the partition's last seek).",
    ["topic", "outcome"],
)
INPUT_REREADS = Counter(
    "cartloom_input_rereads_total",
    "Input partitions whose commit stood still behind a record that was handed out, by"
    " outcome: reread (the broker holds the record: Faust dropped it, it is read again) or"
    " no_record (a transaction marker or removed record: the offset is skipped); idle: nothing"
    " handed out for 30 s though the broker held records past the committed offset (the"
    " partition is fetched again).",
    ["topic", "outcome"],
)
INPUTS_FORWARDED = Counter(
    "cartloom_inputs_forwarded_total",
    "Input records a producer put on another partition than the one their key owns (a"
    " partitioner other than Kafka's murmur2), forwarded there unchanged before they touch"
    " a table.",
    ["topic"],
)
CHANGELOG_STALE_RECORDS = Counter(
    "cartloom_changelog_stale_records_total",
    "Changelog records recovery or a standby left out because the table already held a"
    " higher version of the key: late writes of a worker that lost its partitions while"
    " frozen (a zombie). The sinks refuse the same records.",
    ["table"],
)
WORKER_READY = Gauge(
    "cartloom_worker_ready",
    "1 when the worker is ready (tables recovered, partitions assigned, broker reachable).",
)
WORKER_INFO = Info(
    "cartloom_worker",
    "The worker's app id (its consumer group), to label per-group queries; value always 1.",
)
EVENT_DELAY_SECONDS = Histogram(
    "cartloom_event_delay_seconds",
    "Time from a record's Kafka timestamp until its agent finished processing it, by topic.",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800),
)

# --- Shopify (cartloom.shopify, cartloom.agents.shopify) ---
HTTP_CONNECTIONS_REFUSED = Counter(
    "cartloom_http_connections_refused_total",
    "Connections answered 503 and closed at once: the process held CARTLOOM_WEB_MAX_CONNECTIONS"
    " already, by server (worker, ingress).",
    ["server"],
)
SHOPIFY_WEBHOOKS_RECEIVED = Counter(
    "cartloom_shopify_webhooks_received_total",
    "Webhook requests answered by the receiver, by Shopify topic (known topics, else 'other')"
    " and outcome (accepted, unauthorized, foreign_shop, malformed, mismatched: a signed body"
    " that is not of its X-Shopify-Topic or shop, oversized, slow: body not read in time,"
    " unavailable).",
    ["topic", "outcome"],
)
SHOPIFY_WEBHOOK_SECONDS = Histogram(
    "cartloom_shopify_webhook_seconds",
    "Time from request to answer in the webhook receiver (accepted deliveries: until in Kafka).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SHOPIFY_WEBHOOKS_PROCESSED = Counter(
    "cartloom_shopify_webhooks_processed_total",
    "Enqueued deliveries normalised, by Shopify topic and outcome"
    " (applied, duplicate, stale, dead_letter).",
    ["topic", "outcome"],
)
SHOPIFY_INVENTORY_PARKED = Counter(
    "cartloom_shopify_inventory_parked_total",
    "Inventory levels parked because their inventory item had no known SKU yet.",
)
SHOPIFY_INVENTORY_RELEASED = Counter(
    "cartloom_shopify_inventory_released_total",
    "Parked inventory levels published once their SKU mapping arrived.",
)
SHOPIFY_PRIVACY_JOBS = Counter(
    "cartloom_shopify_privacy_jobs_total",
    "Privacy jobs applied per order, by kind (redact, export, redact_shop) and outcome.",
    ["kind", "outcome"],
)
SHOPIFY_API_REQUESTS = Counter(
    "cartloom_shopify_api_requests_total",
    "Admin API GraphQL requests, by outcome (ok, throttled, error).",
    ["outcome"],
)
SHOPIFY_API_COST = Counter(
    "cartloom_shopify_api_cost_points_total",
    "Admin API query cost points actually spent.",
)
SHOPIFY_API_WAIT_SECONDS = Histogram(
    "cartloom_shopify_api_wait_seconds",
    "Time spent waiting for the shared rate budget or a throttle before a request.",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_RUNS = Counter(
    "cartloom_reconcile_runs_total",
    "Reconciliation runs against the Shopify Admin API, by outcome (ok, failed).",
    ["outcome"],
)
RECONCILE_DRIFT_ITEMS = Gauge(
    "cartloom_reconcile_drift_items",
    "Entities that differed from Shopify in the last reconciliation, by entity (orders, skus).",
    ["entity"],
)
RECONCILE_DRIFT_UNITS = Gauge(
    "cartloom_reconcile_drift_units",
    "Sum of absolute stock differences (units) found in the last reconciliation.",
)
RECONCILE_CORRECTIONS = Counter(
    "cartloom_reconcile_corrections_total",
    "Correction events published by reconciliation, by stream (orders, order.events, inventory).",
    ["stream"],
)
SHOPIFY_WRITEBACKS = Counter(
    "cartloom_shopify_writebacks_total",
    "Inventory write-backs to Shopify, by outcome (applied, already_applied, conflict, failed,"
    " retried, dead_lettered; crashed: the runner restarted).",
    ["outcome"],
)
SHOPIFY_WRITEBACK_DEAD_LETTERS = Counter(
    "cartloom_shopify_writeback_dead_letters_total",
    "Ledger entries write-back set aside to shopify.writeback.dlq, by reason (unknown_sku,"
    " refused, retries_exhausted, invalid_json, invalid_schema, processing_error).",
    ["reason"],
)
