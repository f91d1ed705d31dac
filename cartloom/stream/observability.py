"""Faust's own Prometheus sensor, wired into the one registry that ``GET /metrics`` serves.

Faust's ``PrometheusMonitor`` records the framework's figures (messages in and out per
topic, event runtime, commits, rebalances, table operations, end and committed offsets per
partition). Its stock ``setup_prometheus_sensors`` would name them after the app id (so a
renamed deployment breaks every dashboard), observe latencies in milliseconds and register a
second ``/metrics`` page. Here the same monitor is fed metrics with stable, conventional
names (``faust_*``, ``_total`` counters, histograms in seconds) in the default registry, next
to CartLoom's own metrics from :mod:`cartloom.core.metrics`; :mod:`cartloom.web.health` serves
that one registry.
"""

from __future__ import annotations

import time
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP, AppT, EventT, StreamT
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from cartloom.core.metrics import EVENT_DELAY_SECONDS

#: Buckets in seconds for event, send, commit and HTTP latencies (1 ms .. 10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Buckets in seconds for rebalances and assignments (10 ms .. 2 min).
REBALANCE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class SecondsHistogram:
    """A histogram in seconds that accepts Faust's millisecond observations."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def observe(self, milliseconds: float) -> None:
        """Record one observation Faust measured in milliseconds."""
        self.histogram.observe(milliseconds / 1000.0)


def _seconds(name: str, doc: str, registry: CollectorRegistry, buckets: Any) -> Any:
    return SecondsHistogram(Histogram(name, doc, registry=registry, buckets=buckets))


def faust_metrics(registry: CollectorRegistry = REGISTRY) -> FaustMetrics:
    """Faust's metric set under stable ``faust_*`` names; call once per registry."""
    r = registry
    tp = ["topic", "partition"]
    return FaustMetrics(
        messages_received=Counter("faust_messages_received", "Messages consumed.", registry=r),
        active_messages=Gauge("faust_active_messages", "Messages being processed.", registry=r),
        messages_received_per_topics=Counter(
            "faust_topic_messages_received", "Messages consumed, by topic.", ["topic"], registry=r
        ),
        messages_received_per_topics_partition=Gauge(
            "faust_topic_partition_read_offset", "Last offset read, by partition.", tp, registry=r
        ),
        events_runtime_latency=_seconds(
            "faust_event_runtime_seconds", "Time an agent spent on one event.", r, LATENCY_BUCKETS
        ),
        total_events=Counter("faust_events", "Stream events processed.", registry=r),
        total_active_events=Gauge("faust_active_events", "Stream events in flight.", registry=r),
        total_events_per_stream=Counter(
            "faust_stream_events", "Stream events, by stream.", ["stream"], registry=r
        ),
        table_operations=Counter(
            "faust_table_operations",
            "Table reads, writes and deletes.",
            ["table", "operation"],
            registry=r,
        ),
        topic_messages_sent=Counter(
            "faust_topic_messages_sent", "Messages produced, by topic.", ["topic"], registry=r
        ),
        total_sent_messages=Counter("faust_messages_sent", "Messages produced.", registry=r),
        producer_send_latency=_seconds(
            "faust_producer_send_seconds", "Time to an acknowledged send.", r, LATENCY_BUCKETS
        ),
        total_error_messages_sent=Counter(
            "faust_producer_send_errors", "Sends that failed.", registry=r
        ),
        producer_error_send_latency=_seconds(
            "faust_producer_send_error_seconds", "Time to a failed send.", r, LATENCY_BUCKETS
        ),
        assignment_operations=Counter(
            "faust_assignments", "Partition assignments, by outcome.", ["operation"], registry=r
        ),
        assign_latency=_seconds(
            "faust_assignment_seconds", "Time to compute an assignment.", r, REBALANCE_BUCKETS
        ),
        total_rebalances=Gauge(
            "faust_rebalances_in_progress", "Rebalances not yet returned.", registry=r
        ),
        total_rebalances_recovering=Gauge(
            "faust_rebalances_recovering", "Rebalances recovering tables.", registry=r
        ),
        rebalance_done_consumer_latency=_seconds(
            "faust_rebalance_return_seconds",
            "Time until the consumer returned its assignment to the broker.",
            r,
            REBALANCE_BUCKETS,
        ),
        rebalance_done_latency=_seconds(
            "faust_rebalance_seconds",
            "Time a rebalance took, table recovery included.",
            r,
            REBALANCE_BUCKETS,
        ),
        count_metrics_by_name=Gauge(
            "faust_named_counts", "Faust's internal counters, by name.", ["metric"], registry=r
        ),
        http_status_codes=Counter(
            "faust_http_responses", "Web responses, by status code.", ["status_code"], registry=r
        ),
        http_latency=_seconds(
            "faust_http_response_seconds", "Time to answer a web request.", r, LATENCY_BUCKETS
        ),
        topic_partition_end_offset=Gauge(
            "faust_topic_partition_end_offset",
            "End offset (high water), by partition.",
            tp,
            registry=r,
        ),
        topic_partition_offset_commited=Gauge(
            "faust_topic_partition_committed_offset",
            "Committed offset, by partition.",
            tp,
            registry=r,
        ),
        consumer_commit_latency=_seconds(
            "faust_consumer_commit_seconds", "Time to commit offsets.", r, LATENCY_BUCKETS
        ),
    )


class CartLoomMonitor(PrometheusMonitor):
    """Faust's Prometheus monitor plus the end-to-end delay of each processed event.

    It also remembers since when the current rebalance runs (``rebalancing_since``,
    monotonic seconds, None outside a rebalance), which readiness uses to tell an ordinary
    rebalance from a stuck one.
    """

    rebalancing_since: float | None = None

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        """A rebalance began: note the time, then let Faust's sensor count it."""
        self.rebalancing_since = time.monotonic()
        state: dict[str, Any] = super().on_rebalance_start(app)
        return state

    def on_rebalance_end(self, app: AppT, state: dict[str, Any]) -> None:
        """The rebalance finished, table recovery included."""
        self.rebalancing_since = None
        super().on_rebalance_end(app, state)

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        """Record Faust's figures, then the delay since the record was produced."""
        super().on_stream_event_out(tp, offset, stream, event, state)
        produced_at = event.message.timestamp
        if produced_at:
            EVENT_DELAY_SECONDS.labels(tp.topic).observe(max(0.0, time.time() - produced_at))


_METRICS: FaustMetrics | None = None


def install_prometheus_monitor(app: faust.App, registry: CollectorRegistry = REGISTRY) -> None:
    """Make Faust's Prometheus monitor the app's monitor; call before the worker starts.

    Idempotent within a process: the metric objects are created once (a registry refuses
    duplicate names) and the monitor is installed only if the app does not have one yet.
    """
    global _METRICS  # one metric set per process, like any module-level metric
    if _METRICS is None:
        _METRICS = faust_metrics(registry)
    if not isinstance(app._monitor, CartLoomMonitor):
        app.monitor = CartLoomMonitor(metrics=_METRICS)
