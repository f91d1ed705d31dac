"""The ``cartloom`` command line (typer): worker, sinks, ingress, topics, tables and operator tools.

Errors go to stderr as ``error:`` and ``hint:`` lines with documented exit codes
(cartloom/cli/errors.py, docs/cli.md); results go to stdout.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from cartloom.cli.errors import (
    EXIT_USAGE,
    fail,
    invoke,
)
from cartloom.cli.first_options import DEFAULT_STATE_DIR, Debug, EnvFile, load_env_file
from cartloom.cli.log_setup import LEVELS, configure_logging, faust_loglevel, requested_level

if TYPE_CHECKING:  # the commands import what they use, so that `--help` stays fast
    from cartloom.core.settings import Settings
    from cartloom.core.topology import Topology

cli = typer.Typer(
    help="CartLoom: real-time e-commerce backend on Faust and Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
topics_cli = typer.Typer(help="Kafka topics as declared in topics.yaml.", no_args_is_help=True)
cli.add_typer(topics_cli, name="topics")
dynamodb_cli = typer.Typer(help="The DynamoDB tables the sinks write.", no_args_is_help=True)
cli.add_typer(dynamodb_cli, name="dynamodb")
shopify_cli = typer.Typer(
    help="Shopify: webhook registration and the ingress.", no_args_is_help=True
)
cli.add_typer(shopify_cli, name="shopify")
dlq_cli = typer.Typer(help="Dead-letter topics: send what failed back.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")
schemas_cli = typer.Typer(
    help="JSON Schemas of the input topics (orders, order.events, inventory).",
    no_args_is_help=True,
)
cli.add_typer(schemas_cli, name="schemas")
config_cli = typer.Typer(help="CartLoom's settings (CARTLOOM_* variables).", no_args_is_help=True)
cli.add_typer(config_cli, name="config")
console = Console()

StateDir = Annotated[Path, typer.Option(help="Where the local stack keeps pids, logs, dev.env.")]


def package_version() -> str:
    """The installed distribution's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cartloom")
    except PackageNotFoundError:
        from cartloom import __version__

        return __version__


def _print_version(wanted: bool) -> None:
    if wanted:
        print(f"cartloom {package_version()}")
        raise typer.Exit()


@cli.callback()
def _load_env(
    ctx: typer.Context,
    env_file: EnvFile = DEFAULT_STATE_DIR / "dev.env",
    debug: Debug = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Load the local stack's settings (real environment variables win)."""
    from cartloom.cli.config import env_file_names

    from_env_file = env_file_names(env_file)
    level = load_env_file(env_file, debug)  # the env file may set the level
    ctx.obj = from_env_file  # for `config show`: which settings the file provided
    configure_logging(level or "warning")


def _log_level(value: str | None) -> str | None:
    if value is not None and value.lower() not in LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LEVELS)}")
    return value.lower() if value is not None else None


def _create_missing_topics(settings: Settings, topology: Topology) -> None:
    """Create the missing topics before a process subscribes (worker, ``sink``).

    A broker creates a topic a client asks for with its own partition count; the refusal of
    a topic made so is :class:`cartloom.ops.kafka_admin.TopicPartitionsError`.
    """
    from cartloom.ops.kafka_admin import apply_topics
    from cartloom.stream.kafka_clients import kafka_connection

    asyncio.run(apply_topics(kafka_connection(settings), topology.all_topics(settings.app_id)))


@cli.command()
def worker(
    loglevel: Annotated[
        str | None,
        typer.Option(
            callback=_log_level,
            help="debug, info, warning or error (default: CARTLOOM_LOG_LEVEL, else info).",
        ),
    ] = None,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics first.")] = True,
) -> None:
    """Run a CartLoom worker (same as ``faust -A cartloom.stream.app worker``)."""
    from cartloom.core.runtime import tune_garbage_collector
    from cartloom.stream.app import app, settings, topology
    from cartloom.stream.kafka_clients import check_connection, kafka_connection

    # Fail here, with the reason, rather than let Faust retry a refused connection forever.
    if create_topics:
        _create_missing_topics(settings, topology)
    else:
        asyncio.run(check_connection(kafka_connection(settings)))
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust does not create it
    tune_garbage_collector(settings.gc_young_threshold)
    sys.argv = ["cartloom", "worker", "--loglevel", faust_loglevel(loglevel or settings.log_level)]
    app.main()


@topics_cli.command("apply")
def topics_apply() -> None:
    """Create every topic of topics.yaml (and table changelogs) that is missing."""
    from cartloom.core.settings import load_settings
    from cartloom.core.topology import load_topology
    from cartloom.ops.kafka_admin import apply_topics
    from cartloom.stream.kafka_clients import kafka_connection

    settings = load_settings()
    specs = load_topology(settings.topics_file, settings.topic_prefix).all_topics(settings.app_id)
    created = asyncio.run(apply_topics(kafka_connection(settings), specs))
    console.print(f"created: {', '.join(created)}" if created else "all topics exist")


@topics_cli.command("check")
def topics_check() -> None:
    """Compare partitions, cleanup.policy and retention.ms with topics.yaml; exit 1 on drift.

    A setting the broker does not report is listed as not compared, and is no drift.
    """
    from cartloom.core.settings import load_settings
    from cartloom.core.topology import load_topology
    from cartloom.ops.kafka_admin import CHECKED_SETTINGS, check_topics
    from cartloom.stream.kafka_clients import kafka_connection

    settings = load_settings()
    specs = load_topology(settings.topics_file, settings.topic_prefix).all_topics(settings.app_id)
    check = asyncio.run(check_topics(kafka_connection(settings), specs))
    for item in check.drift:
        console.print(f"drift: {item}", style="red")
    for unreported in check.unreported:
        console.print(f"not compared: {unreported}", style="yellow")
    if check.drift:
        raise typer.Exit(1)
    compared = "partitions, " + ", ".join(CHECKED_SETTINGS)
    if check.unreported:
        console.print(
            f"{check.topics} topics match topics.yaml in what the broker reported ({compared}); "
            f"{len(check.unreported)} setting(s) not reported by the broker, not compared"
        )
    else:
        console.print(f"{check.topics} topics match topics.yaml ({compared})")


@dynamodb_cli.command("create-tables")
def dynamodb_create_tables(
    within: Annotated[float, typer.Option(min=0, help="Seconds to wait for ACTIVE tables.")] = 60.0,
) -> None:
    """Create the missing {prefix}orders/inventory/products tables and wait until ACTIVE."""
    from cartloom.core.settings import load_settings
    from cartloom.sinks.dynamodb_tables import ensure_tables

    settings = load_settings()
    created = asyncio.run(ensure_tables(settings, within=within))
    console.print(f"created: {', '.join(created)}" if created else "all tables exist")


@cli.command()
def loadgen(
    orders: Annotated[int, typer.Option(min=1, help="How many orders.")] = 10_000,
    skus: Annotated[int, typer.Option(min=1, help="How many distinct SKUs.")] = 50,
    invalid_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of malformed orders (0 to 1).")
    ] = 0.0,
    prefix: Annotated[str, typer.Option(help="Order id prefix.")] = "load",
) -> None:
    """Publish sample orders to the orders topic with a plain Kafka producer."""
    from rich.progress import Progress

    from cartloom.core.settings import load_settings
    from cartloom.ops.loadgen import LoadPlan, publish, sample_orders
    from cartloom.stream.kafka_clients import kafka_connection

    settings = load_settings()
    plan = LoadPlan(orders=orders, skus=skus, invalid_share=invalid_share, prefix=prefix)
    with Progress(console=console) as progress:
        task = progress.add_task("publishing orders", total=orders)
        asyncio.run(
            publish(
                kafka_connection(settings),
                settings.topic_name("orders"),
                sample_orders(plan),
                lambda n: progress.advance(task, n),
            )
        )


@cli.command()
def audit(
    store: Annotated[
        list[str] | None, typer.Option(help="dynamodb or redis; repeat for both (default).")
    ] = None,
    sample: Annotated[int, typer.Option(help="Check N random keys (0 = every key).")] = 0,
    settle: Annotated[
        float, typer.Option(help="Seconds to re-check differing keys while changes land.")
    ] = 10.0,
    strict: Annotated[bool, typer.Option(help="Count in-flight differences too.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show: Annotated[int, typer.Option(min=0, help="Differences listed per store.")] = 20,
) -> None:
    """Compare the tables (from their changelogs) with DynamoDB and Redis; exit 1 on divergence.

    Exits 2 when it cannot audit (bad usage, a missing changelog topic or table, a store
    failing mid-audit); --sample and --settle must not be negative.
    """
    from cartloom.ops.audit import audit_command

    code = audit_command(store or [], sample, settle, strict, json_output, show)
    if code:
        raise typer.Exit(code)


@cli.command()
def reconcile(
    since: Annotated[
        str | None, typer.Option(help="ISO-8601; default: the stored cursor (first run: all).")
    ] = None,
) -> None:
    """Compare Shopify's orders and stock with CartLoom's views and publish corrections."""
    from cartloom.core.settings import load_settings
    from cartloom.shopify.reconcile import reconcile as run
    from cartloom.sinks.redis import redis_client

    async def once() -> None:
        settings = load_settings()
        redis = redis_client(settings)
        try:
            report = await run(settings, redis, since)
        finally:
            await redis.aclose()
        drift = report.drift
        console.print(
            f"orders: {drift.orders_checked} checked, {drift.orders_missing} missing, "
            f"{drift.orders_behind} behind; SKUs: {drift.skus_checked} checked, "
            f"{drift.skus_drifted} drifted by {drift.units} units; "
            f"{len(drift.corrections)} corrections published; cursor {report.cursor}"
        )

    try:
        asyncio.run(once())
    except ValueError as exc:
        hint = "--since takes an ISO-8601 time, e.g. 2026-01-31T00:00:00Z"
        if "CARTLOOM_" in str(exc):
            hint = "set them in the environment or in .cartloom/dev.env"
        fail(str(exc), hint, EXIT_USAGE)


def _http_url(value: str) -> str:
    """An http(s) URL with a host, or a usage error naming the option."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(f"{value!r} is not an http(s) URL with a host")
    return value


@shopify_cli.command("register-webhooks")
def shopify_register_webhooks(
    address: Annotated[
        str,
        typer.Option(callback=_http_url, help="Public URL of POST /webhooks/shopify."),
    ],
) -> None:
    """Subscribe the shop (CARTLOOM_SHOPIFY_API_URL) to every topic CartLoom normalises.

    Safe to run again: topics already sent to ADDRESS are left alone, and a topic sent
    to another address is moved to ADDRESS.
    """
    from cartloom.core.settings import load_settings
    from cartloom.shopify.registration import sync

    settings = load_settings()
    if not settings.shopify_api_url or settings.shopify_access_token is None:
        fail(
            "register-webhooks needs CARTLOOM_SHOPIFY_API_URL and CARTLOOM_SHOPIFY_ACCESS_TOKEN",
            "set CARTLOOM_SHOPIFY_API_URL and CARTLOOM_SHOPIFY_ACCESS_TOKEN (a custom app's"
            " Admin API token, with the read scopes of the topics)",
            EXIT_USAGE,
        )
    token = settings.shopify_access_token.get_secret_value()
    done = asyncio.run(sync(settings.shopify_api_url, token, settings.shopify_api_version, address))
    if done.created:
        print(f"created {len(done.created)} subscription(s) for {address}")
    for topic, before in sorted(done.updated.items()):
        print(f"updated {topic}: {before or 'another endpoint'} -> {address}")
    if done.unchanged:
        print(f"already registered: {len(done.unchanged)} subscription(s) for {address}")
    print("privacy topics: set the app's compliance webhook URLs to the same address")


@shopify_cli.command("ingress")
def shopify_ingress() -> None:
    """Receive webhooks in a process of their own (CARTLOOM_WEBHOOK_INGRESS_PORT, 6067).

    The same receiver as every worker's POST /webhooks/shopify, without the agents on its
    event loop: see cartloom/shopify/ingress.py. Stops on SIGTERM after the requests in hand.
    """
    import uvloop

    from cartloom.core.runtime import tune_garbage_collector
    from cartloom.core.settings import load_settings
    from cartloom.shopify.ingress import serve
    from cartloom.shopify.receiver import build_receiver
    from cartloom.stream.web_guards import ConnectionLimits

    settings = load_settings()
    configure_logging(settings.log_level)  # a server: info unless CARTLOOM_LOG_LEVEL says
    receiver = build_receiver(settings)
    receiver.enqueuer.autostart = True  # a broker that is not up yet is tried again per delivery
    tune_garbage_collector(settings.gc_young_threshold)
    limits = ConnectionLimits.from_settings(settings)
    uvloop.run(serve(receiver, settings.web_bind, settings.webhook_ingress_port, limits))


@cli.command()
def sink(
    store: Annotated[
        list[str] | None,
        typer.Option(help="dynamodb or redis; repeat for both (default: both)."),
    ] = None,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics first.")] = True,
) -> None:
    """Run the DynamoDB and Redis sinks in a process of their own (CARTLOOM_SINK_PORT, 6069).

    The same materialisers a worker runs with CARTLOOM_SINKS_ENABLED, scaled apart from the
    order workers: see cartloom/sinks/process.py. Stops on SIGTERM once each store's batch
    in hand is written and committed.
    """
    from cartloom.core.runtime import tune_garbage_collector
    from cartloom.core.settings import load_settings
    from cartloom.core.topology import load_topology
    from cartloom.sinks.process import serve_sinks
    from cartloom.sinks.runner import STORES

    chosen = list(dict.fromkeys(store or STORES))
    unknown = sorted(set(chosen) - set(STORES))
    if unknown:
        fail(
            f"unknown store {', '.join(unknown)}",
            f"--store takes {' or '.join(STORES)} (see cartloom sink --help)",
            EXIT_USAGE,
        )
    settings = load_settings()
    configure_logging(settings.log_level)  # a server: info unless CARTLOOM_LOG_LEVEL says
    topology = load_topology(settings.topics_file, settings.topic_prefix)
    if create_topics:
        _create_missing_topics(settings, topology)
    tune_garbage_collector(settings.gc_young_threshold)
    asyncio.run(serve_sinks(settings, topology, chosen))


@dlq_cli.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="Source topic, e.g. orders (reads orders.dlq).")],
) -> None:
    """Send TOPIC.dlq's records back to TOPIC once (a consumer group remembers progress).

    Exits 1, committing nothing of the batch in hand, when the broker does not acknowledge
    a record sent back: running it again sends that batch again.
    """
    from cartloom.core.settings import load_settings
    from cartloom.core.topology import load_topology
    from cartloom.ops.dlq import replay_dead_letters
    from cartloom.stream.deadletter import dead_letter_topic_name
    from cartloom.stream.deliveries import DeliveryFailed
    from cartloom.stream.kafka_clients import kafka_connection

    settings = load_settings()
    topology = load_topology(settings.topics_file, settings.topic_prefix)
    topology.topic(dead_letter_topic_name(topic))  # both must be declared
    topology.topic(topic)
    group = f"{settings.app_id}-dlq-replay"
    try:
        source = settings.topic_name(topic)
        replay = replay_dead_letters(kafka_connection(settings), source, group_id=group)
        report = asyncio.run(replay)
    except DeliveryFailed as exc:
        fail(
            f"replay of {topic}.dlq stopped, its last batch not committed: {exc}",
            f"run `cartloom dlq replay {topic}` again once the broker accepts the records:"
            " it sends that batch again",
        )
    console.print(f"replayed {report.replayed} record(s) from {topic}.dlq to {topic}")


SchemaDir = Annotated[Path, typer.Option(help="Directory of the schema files.")]
SchemaDoc = Annotated[
    Path, typer.Option(help="The producers' guide whose field tables are generated too.")
]
DEFAULT_SCHEMA_DIR = Path("docs/schemas")
DEFAULT_SCHEMA_DOC = Path("docs/producers.md")


@schemas_cli.command("write")
def schemas_write(
    directory: SchemaDir = DEFAULT_SCHEMA_DIR, doc: SchemaDoc = DEFAULT_SCHEMA_DOC
) -> None:
    """Write {topic}.schema.json per input topic, and the guide's field tables, from the code."""
    from cartloom.web.schema_files import write_schemas

    for path in write_schemas(directory, doc if doc.exists() else None):
        console.print(f"wrote {path}")


@schemas_cli.command("check")
def schemas_check(
    directory: SchemaDir = DEFAULT_SCHEMA_DIR, doc: SchemaDoc = DEFAULT_SCHEMA_DOC
) -> None:
    """Exit 1 if a schema file or the guide's field tables differ from what the code generates."""
    from cartloom.web.schema_files import stale_schemas

    stale = stale_schemas(directory, doc if doc.exists() else None)
    for path in stale:
        console.print(f"stale: {path} (run `cartloom schemas write`)", style="red")
    if stale:
        raise typer.Exit(1)
    console.print(f"the schemas in {directory} match the validators")


@config_cli.command("show")
def config_show(
    ctx: typer.Context,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the settings as JSON.")
    ] = False,
) -> None:
    """Every CARTLOOM_* setting, its value and where it came from; secrets masked."""
    import orjson

    from cartloom.cli.config import render_text, setting_rows
    from cartloom.core.settings import load_settings

    from_env_file = ctx.find_root().obj or frozenset()
    rows = setting_rows(load_settings(), from_env_file)
    if json_output:
        print(orjson.dumps([row.as_dict() for row in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(rows))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: the process's); return the exit code.

    Known failures become ``error:``/``hint:`` lines on stderr (cartloom/cli/errors.py);
    an unknown exception is a bug and propagates with its traceback.
    """
    from cartloom.stream.kafka_clients import ConnectionFailures

    # The handler prints nothing: it keeps why a connection failed (a refused certificate,
    # a failed SASL handshake), which aiokafka's exception does not say.
    failures = ConnectionFailures()
    logging.getLogger("aiokafka").addHandler(failures)
    configure_logging(requested_level() or "warning")
    try:
        return invoke(cli, argv, "cartloom", kafka_causes=failures.causes)
    finally:
        logging.getLogger("aiokafka").removeHandler(failures)


def main() -> None:
    """Entry point of the ``cartloom`` console script."""
    raise SystemExit(run())
