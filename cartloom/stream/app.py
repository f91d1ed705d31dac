"""The Faust app, built once from :mod:`cartloom.core.settings`; the one place adapters are chosen.

``cartloom worker`` and ``faust -A cartloom.stream.app worker`` both run this ``app``. Importing
this module builds the app object and nothing else; agents, tables and views are found
through the explicit ``AUTODISCOVER`` list when the worker starts.
"""

from __future__ import annotations

from typing import Any

import faust

from cartloom.core.settings import Settings, get_settings
from cartloom.core.topology import Topology, load_topology
from cartloom.stream.deadletter import DEAD_LETTER_MAX_REQUEST_BYTES
from cartloom.stream.faust_types import RawKeyTable, TunedTransport
from cartloom.stream.kafka_clients import KafkaConnection, kafka_connection
from cartloom.stream.web_guards import ConnectionLimits, GuardedWeb

#: Modules whose decorators register agents, tables, services and web views.
AUTODISCOVER = [
    "cartloom.agents.orders",
    "cartloom.agents.early_events",
    "cartloom.agents.inventory",
    "cartloom.agents.saga",
    "cartloom.agents.intake",
    "cartloom.agents.materialise",
    "cartloom.agents.shopify",
    "cartloom.agents.shopify_webhooks",
    "cartloom.agents.shopify_jobs",
    "cartloom.web.views",
]


class CartloomApp(faust.App):
    """A Faust app whose Kafka consumers take their fetch wait from CartLoom's settings."""

    fetch_max_wait_ms = 500
    #: The brokers and their security, for the consumer's own probes (set by create_app).
    kafka: KafkaConnection | None = None

    #: Deadlines and a cap for the web server's connections (set by create_app).
    connection_limits: ConnectionLimits | None = None

    def _new_web(self) -> Any:
        """The web server with CartLoom's connection limits (``cartloom.stream.web_guards``)."""
        return GuardedWeb(self)

    def _new_transport(self) -> Any:
        url = self.conf.broker_consumer[0]
        if url.scheme not in ("kafka", "aiokafka"):
            return super()._new_transport()
        return TunedTransport(self.conf.broker_consumer, self)


def create_app(settings: Settings, topology: Topology) -> faust.App:
    """Build the Faust app from CartLoom's settings alone.

    ``env={}`` stops Faust from reading its own environment variables (``BROKER_URL``,
    ``STORE``...), which would otherwise silently override what is passed here. The broker
    credentials (TLS, SASL) are the ones every plain client of :mod:`cartloom.stream.kafka_clients`
    uses; Faust's aiokafka driver gives them to its consumer, producer and topic creation.
    """
    app = CartloomApp(
        settings.app_id,
        env={},
        autodiscover=AUTODISCOVER,
        origin="cartloom",
        broker=settings.broker_url,
        broker_credentials=kafka_connection(settings).credentials,
        store=settings.store,
        datadir=str(settings.data_dir),
        processing_guarantee="at_least_once",
        recovery_consistency_check=settings.recovery_consistency_check,
        topic_partitions=topology.default_partitions,
        topic_replication_factor=topology.default_replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=settings.broker_session_timeout,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        # Static membership: a restarted pod takes its partitions back without a rebalance.
        consumer_group_instance_id=settings.group_instance_id,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        # Changelog writes go out as whole batches per partition (cartloom.stream.batching):
        # 256 KiB holds a few hundred order views, not Faust's default 16 KiB's twenty.
        producer_max_batch_size=256 * 1024,
        # A dead letter is an input record the broker already took, plus a few hundred
        # bytes of reason headers: Faust's 1,000,000-byte client ceiling refused the copy
        # of a ~1 MB input, and the worker stopped on it at every restart.
        producer_max_request_size=DEAD_LETTER_MAX_REQUEST_BYTES,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Faust's own pages answer any caller with raw table rows (customer data, the
        # ledger) and the partition map: off. The routes a worker serves, and who may
        # call each, are in docs/access.md.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        table_standby_replicas=1,
        # Table keys are the producers' key bytes (so partition routing agrees); values JSON.
        key_serializer="raw",
        value_serializer="json",
        logging_config=None,
        Table=RawKeyTable,
    )
    app.fetch_max_wait_ms = settings.broker_fetch_max_wait_ms
    app.connection_limits = ConnectionLimits.from_settings(settings)
    app.kafka = kafka_connection(settings)
    return app


settings = get_settings()
topology = load_topology(settings.topics_file, settings.topic_prefix)
app = create_app(settings, topology)
