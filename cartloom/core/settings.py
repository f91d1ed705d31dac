"""CartLoom's settings: the one home of every ``CARTLOOM_*`` environment variable.

Values come from the process environment only. ``python -m devstack up`` writes the local
stack's addresses to ``.cartloom/dev.env`` and the CLI loads that file into the
environment before reading settings (real environment variables win), so the same
class serves the local stack, the tests and production.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CARTLOOM_"

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
#: The protocols that speak TLS to the brokers, and those that authenticate with SASL.
KAFKA_TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
KAFKA_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


class SettingsError(ValueError):
    """A ``CARTLOOM_*`` variable holds a value CartLoom cannot use; the message names it."""


class Settings(BaseSettings):
    """Every CartLoom setting, typed and defaulted; ``.env.example`` lists them all."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    namespace: str = Field(
        "",
        description="Sets one CartLoom deployment apart from others on the same Kafka, Redis"
        " and DynamoDB: prefixes every topic of topics.yaml ({namespace}.), every Redis key"
        " ({namespace}:) and, unless set, the app id ({namespace}-cartloom) and the DynamoDB"
        " table prefix ({namespace}-cartloom-). Empty: the plain names.",
        pattern=r"^([a-z0-9][a-z0-9-]{0,39})?$",
    )
    app_id: str = Field(
        "cartloom",
        description="Faust app id: consumer groups and table changelogs"
        " (default cartloom, or {namespace}-cartloom).",
    )
    broker_url: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap URL(s).")
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT",
        description="How every Kafka client (Faust and the plain ones) talks to the brokers:"
        " PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; see docs/deploy.md, Secured clusters.",
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates; unset ="
        " the system's trust store (SSL, SASL_SSL).",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (chain), for brokers that require one."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the client certificate (unset: in the certfile)."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key."
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that each broker's certificate names the host connected to."
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        None,
        description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL): PLAIN, SCRAM-SHA-256,"
        " SCRAM-SHA-512 or OAUTHBEARER.",
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (PLAIN, SCRAM).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (PLAIN, SCRAM).")
    kafka_sasl_oauth_token_provider: str | None = Field(
        None,
        description="OAUTHBEARER: module:attribute of a callable returning an aiokafka"
        " AbstractTokenProvider (e.g. an MSK IAM signer).",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the cache views.")
    dynamodb_endpoint: str | None = Field(None, description="DynamoDB endpoint; unset = AWS.")
    table_prefix: str = Field(
        "cartloom-",
        description="Prefix of the DynamoDB table names (default cartloom-, or"
        " {namespace}-cartloom-).",
    )
    web_host: str = Field("127.0.0.1", description="Host name other workers use to reach this one.")
    web_bind: str = Field("0.0.0.0", description="Address the web server listens on.")  # noqa: S104
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the web views.")
    web_header_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection's request head must arrive within this; else closed."
    )
    web_max_connections: int = Field(
        1024, ge=1, description="Open connections per process (worker, ingress); more get 503."
    )
    webhook_ingress_port: int = Field(
        6067, ge=1, le=65535, description="Port of `cartloom shopify ingress` (webhooks only)."
    )
    sink_port: int = Field(
        6069, ge=1, le=65535, description="Port of `cartloom sink` (health and metrics only)."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token the live-query endpoints require; unset = open."
    )
    query_wait_max_seconds: float = Field(
        5.0, gt=0, le=60, description="Longest ?min_version= wait of a live query."
    )
    prometheus_targets_dir: Path | None = Field(
        None, description="Directory where the worker registers itself for Prometheus file_sd."
    )
    store: str = Field("memory://", description="Faust table store: memory:// or rocksdb://.")
    data_dir: Path = Field(Path(".cartloom/data"), description="Faust data directory.")
    topics_file: Path | None = Field(None, description="Override the bundled topics.yaml.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    broker_session_timeout: float = Field(60.0, gt=0, description="Seconds; tests use ~6.")
    broker_rebalance_timeout: float = Field(60.0, gt=0, description="Seconds; tests use ~6.")
    broker_heartbeat_interval: float = Field(3.0, gt=0, description="Seconds; tests use 1.")
    broker_fetch_max_wait_ms: int = Field(
        500,
        ge=1,
        le=30_000,
        description="Longest a fetch waits for new records (the embedded broker always waits"
        " this long on a quiet partition; the local stack uses 50).",
    )
    recovery_consistency_check: bool = Field(
        True,
        description="Faust's check that a changelog's offsets read or persisted are not past its"
        " reported end; the local stack turns it off (the embedded broker reports the end of a"
        " partition short: docs/crash-safety.md).",
    )
    group_instance_id: str | None = Field(
        None, description="Kafka static membership id, unique per worker (a StatefulSet pod name)."
    )
    stream_buffer_maxsize: int = Field(4096, ge=1, description="Events buffered per partition.")
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Allocations between young garbage collections (Python's default is 700;"
        " 0 keeps it); see cartloom/core/runtime.py.",
    )

    reservation_ttl_seconds: float = Field(
        1800.0, ge=0, description="Unpaid channel reservations are released after this (0 = never)."
    )
    saga_deadline_seconds: float = Field(
        30.0,
        gt=0,
        description="After this (on the answers' clock), an order with unanswered lines asks"
        " the stock side to confirm them: docs/orders.md, Deadline.",
    )
    saga_scan_interval_seconds: float = Field(
        1.0, gt=0, description="How often each worker looks for overdue orders."
    )
    early_event_hold_seconds: float = Field(
        3600.0,
        gt=0,
        description="An order.events event for an order not yet known is held this long for its"
        " order, then sent to order.events.dlq (reason unknown_order).",
    )
    early_events_max_per_order: int = Field(
        20,
        ge=1,
        description="Most events held for one order not yet known; over it the oldest goes to"
        " order.events.dlq (reason held_over_limit).",
    )
    saga_clock_grace_seconds: float = Field(
        1.0,
        ge=0,
        description="Deadlines and expiries wait this long past their input's clock (a record"
        " stamped just before may still be on its way); docs/orders.md, Deadline.",
    )
    order_batch_max: int = Field(
        1000, ge=1, description="Most events the order and stock agents handle per batch."
    )
    order_batch_within_seconds: float = Field(
        0.05, gt=0, description="Longest wait to fill a batch of the order and stock agents."
    )

    sinks_enabled: bool = Field(True, description="Run the DynamoDB and Redis sinks in the worker.")
    sink_batch_max: int = Field(1000, ge=1, description="Most changes read per sink batch.")
    sink_batch_within_seconds: float = Field(
        0.0, ge=0, le=5, description="Longest wait to fill a sink batch (0 = write what came)."
    )
    sink_concurrency: int = Field(32, ge=1, description="Conditional writes in flight per store.")
    dynamodb_write_group: int = Field(
        100,
        ge=1,
        le=100,
        description="Conditional writes per TransactWriteItems call (1 = one PutItem each).",
    )
    sink_retry_max_seconds: float = Field(30.0, gt=0, description="Longest back-off on an outage.")
    sink_max_attempts: int = Field(
        5, ge=1, description="Attempts a change failing on its own gets before sinks.dlq."
    )
    redis_closed_order_ttl_seconds: int = Field(
        604_800, ge=0, description="TTL of closed orders in Redis (0 = keep); see docs/sinks.md."
    )
    dynamodb_closed_order_ttl_seconds: int = Field(
        0, ge=0, description="DynamoDB deletes closed orders this long after (0 = keep)."
    )

    shopify_webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated; several allow rotation."
    )
    shopify_api_url: str | None = Field(None, description="Admin API base URL or a simulator.")
    shopify_access_token: SecretStr | None = Field(None, description="Admin API access token.")
    shopify_api_version: str = Field("2025-10", description="Pinned Admin API version.")
    shopify_shop_secrets: Annotated[dict[str, list[SecretStr]], NoDecode] = Field(
        default_factory=dict,
        description="Per-shop webhook secrets: shop.myshopify.com=secret, comma-separated.",
    )
    shopify_shop_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Shops served (shop.myshopify.com, comma-separated); others get 401."
        " Empty: any shop signed with the shared secret, and those of the per-shop secrets.",
    )
    shopify_webhook_max_bytes: int = Field(1_048_576, ge=1024, description="Larger bodies: 413.")
    shopify_webhook_body_timeout_seconds: float = Field(
        10.0, gt=0, description="A webhook body must arrive within this after its head; else 408."
    )
    shopify_webhook_enqueue_timeout: float = Field(
        4.0, gt=0, le=4.5, description="Seconds to get a delivery into Kafka before 503."
    )
    shopify_producer_linger_ms: int = Field(
        0, ge=0, description="Receiver batching window (0: what one event-loop pass read)."
    )
    shopify_dedupe_window_seconds: int = Field(
        172_800, ge=172_800, description="Webhook/event id dedupe window (>= 48 h)."
    )
    shopify_reconcile_interval_seconds: float = Field(
        300.0, ge=0, description="Periodic reconciliation; 0 disables it in workers."
    )
    shopify_api_bucket_size: float = Field(1000.0, gt=0, description="Query cost bucket.")
    shopify_api_restore_rate: float = Field(50.0, gt=0, description="Cost points per second.")
    shopify_writeback_enabled: bool = Field(False, description="Push channel orders' stock.")
    shopify_writeback_location_id: str | None = Field(
        None, description="Location (GraphQL id) whose stock write-back adjusts."
    )
    shopify_writeback_max_attempts: int = Field(
        5, ge=1, description="Attempts a failing write-back gets before shopify.writeback.dlq."
    )

    @model_validator(mode="before")
    @classmethod
    def _namespaced_defaults(cls, data: Any) -> Any:
        """A namespace gives the app id and the DynamoDB prefix their defaults.

        One setting then sets a deployment apart everywhere: its consumer groups and
        changelogs (app id), topics, Redis keys and tables. Either may still be set.
        """
        if not isinstance(data, dict):
            return data
        namespace = str(data.get("namespace") or "").strip()
        if namespace:
            data = {**data, "namespace": namespace}
            data.setdefault("app_id", f"{namespace}-cartloom")
            data.setdefault("table_prefix", f"{namespace}-cartloom-")
        return data

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kafka_ssl_key_password",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_sasl_oauth_token_provider",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (``CARTLOOM_KAFKA_SSL_CAFILE=``) means unset, not the path ``.``."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file (missing, or not mounted?)")
        return value

    @field_validator("kafka_sasl_oauth_token_provider")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None:
            module, sep, attribute = value.partition(":")
            if not sep or not module.strip() or not attribute.strip():
                raise ValueError(
                    "expected module:attribute, e.g. mycompany.kafka_auth:TokenProvider"
                )
        return value

    @model_validator(mode="after")
    def _kafka_security_fits_together(self) -> Settings:
        """The Kafka security settings make sense together (each error names the variables).

        Settings that the chosen protocol would ignore are refused, so a half-configured
        cluster fails at start rather than connecting without the TLS or SASL meant for it.
        The two passwords are the exception: a Secret shared by several deployments may
        hold one that this deployment does not use.
        """
        problems = _kafka_security_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("shopify_webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("shopify_shop_domains", mode="before")
    @classmethod
    def _split_shop_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("shopify_shop_secrets", mode="before")
    @classmethod
    def _split_shop_secrets(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        secrets: dict[str, list[str]] = {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            shop, sep, secret = part.partition("=")
            if not sep or not shop.strip() or not secret.strip():
                raise ValueError("expected shop.myshopify.com=secret pairs")  # no secret in it
            secrets.setdefault(shop.strip().lower(), []).append(secret.strip())
        return secrets

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as ``host:port[,host:port]`` for plain Kafka clients."""
        return ",".join(
            part.split("://", 1)[-1] for part in self.broker_url.split(";") if part.strip()
        )

    @property
    def topic_prefix(self) -> str:
        """What every topic name of ``topics.yaml`` is prefixed with on the broker."""
        return f"{self.namespace}." if self.namespace else ""

    def topic_name(self, declared: str) -> str:
        """The broker name of the topic ``topics.yaml`` declares as ``declared``."""
        return f"{self.topic_prefix}{declared}"

    def dynamodb_table(self, entity: str) -> str:
        """Name of the DynamoDB table that holds ``entity`` (orders, inventory, products)."""
        return f"{self.table_prefix}{entity}"


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def _kafka_security_problems(settings: Settings) -> list[str]:
    """What is wrong with the combination of ``CARTLOOM_KAFKA_*`` settings (empty: nothing)."""
    protocol = settings.kafka_security_protocol
    mechanism = settings.kafka_sasl_mechanism
    names = {field: env_name(field) for field in Settings.model_fields}
    problems = []
    if protocol not in KAFKA_TLS_PROTOCOLS:
        tls_set = [
            names[field]
            for field in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
            if getattr(settings, field) is not None
        ]
        if not settings.kafka_ssl_check_hostname:
            tls_set.append(names["kafka_ssl_check_hostname"])
        if tls_set:
            problems.append(
                f"{', '.join(tls_set)} apply to TLS only, but {names['kafka_security_protocol']}"
                f" is {protocol}: use SSL or SASL_SSL (or unset them)"
            )
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        problems.append(
            f"{names['kafka_ssl_keyfile']} is set without {names['kafka_ssl_certfile']}:"
            " a client key needs its certificate"
        )
    if protocol in KAFKA_SASL_PROTOCOLS:
        if mechanism is None:
            problems.append(
                f"{names['kafka_security_protocol']}={protocol} needs"
                f" {names['kafka_sasl_mechanism']} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or"
                " OAUTHBEARER)"
            )
        elif mechanism == "OAUTHBEARER":
            if settings.kafka_sasl_oauth_token_provider is None:
                problems.append(
                    f"{names['kafka_sasl_mechanism']}=OAUTHBEARER needs"
                    f" {names['kafka_sasl_oauth_token_provider']} (module:attribute of a token"
                    " provider factory)"
                )
            if settings.kafka_sasl_username is not None:
                problems.append(
                    f"{names['kafka_sasl_username']} is not used by OAUTHBEARER (the token"
                    " provider authenticates): unset it"
                )
        else:
            missing = [
                names[field]
                for field in ("kafka_sasl_username", "kafka_sasl_password")
                if getattr(settings, field) is None
            ]
            if missing:
                problems.append(
                    f"{names['kafka_sasl_mechanism']}={mechanism} needs {' and '.join(missing)}"
                )
    else:
        sasl_set = [
            names[field]
            for field in ("kafka_sasl_mechanism", "kafka_sasl_username")
            if getattr(settings, field) is not None
        ]
        if sasl_set:
            problems.append(
                f"{', '.join(sasl_set)} apply to SASL only, but {names['kafka_security_protocol']}"
                f" is {protocol}: use SASL_SSL or SASL_PLAINTEXT (or unset them)"
            )
    provider = settings.kafka_sasl_oauth_token_provider
    if provider is not None and (
        protocol not in KAFKA_SASL_PROTOCOLS or mechanism != "OAUTHBEARER"
    ):
        problems.append(
            f"{names['kafka_sasl_oauth_token_provider']} is used only with"
            f" {names['kafka_sasl_mechanism']}=OAUTHBEARER and a SASL protocol: unset it"
        )
    return problems


def _holds_secret(annotation: Any) -> bool:
    """Whether a field's type has a ``SecretStr`` anywhere (``list[SecretStr]``, ``... | None``)."""
    if annotation is SecretStr:
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))


def _is_secret(field: str) -> bool:
    """Whether ``field`` holds secrets, whose values never appear in error messages."""
    info = Settings.model_fields.get(field)
    if info is not None and _holds_secret(info.annotation):
        return True
    return "secret" in field or "password" in field


def load_settings() -> Settings:
    """Read the settings from the environment; raise :class:`SettingsError` naming bad ones."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule over several settings: its message names them
                problems.append(error["msg"].removeprefix("Value error, "))
                continue
            field = str(error["loc"][0])
            given = "hidden" if _is_secret(field) else repr(error.get("input"))
            problems.append(f"{env_name(field)}: {error['msg']} (got {given})")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
