"""``python -m devstack``: the embedded local stack and the Shopify simulator, for a checkout.

Not part of what ``pip install cartloom`` ships: the local stack (a Kafka-protocol broker,
``redis-server``, a DynamoDB endpoint, Prometheus) and the simulated shop exist for
development, the demo and the tests. Errors are reported as the ``cartloom`` command reports
them (``error:``/``hint:`` lines, the documented exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cartloom.cli.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    fail,
    invoke,
)
from cartloom.cli.first_options import DEFAULT_STATE_DIR, Debug, EnvFile, load_env_file
from cartloom.cli.log_setup import configure_logging, requested_level
from devstack.processes import StackError

cli = typer.Typer(
    help="The embedded local stack (broker, redis-server, a DynamoDB endpoint) and the Shopify"
    " simulator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

StateDir = Annotated[Path, typer.Option(help="Where the local stack keeps pids, logs, dev.env.")]


@cli.callback()
def _options(env_file: EnvFile = DEFAULT_STATE_DIR / "dev.env", debug: Debug = False) -> None:
    """The local stack for a checkout of CartLoom."""
    load_env_file(env_file, debug)


@cli.command("up")
def dev_up(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    with_prometheus: Annotated[
        bool, typer.Option(help="Also run Debian's Prometheus, scraping every local worker.")
    ] = False,
) -> None:
    """Start the local stack on free loopback ports (no-op if it already runs)."""
    from devstack.stack import API_TOKEN_ENV, ENV_FILE, up

    state, started = asyncio.run(up(state_dir, with_prometheus=with_prometheus))
    console.print("started" if started else "already running", style="bold")
    for name, server in state.servers.items():
        console.print(f"  {name:<10} pid {server.pid:<7} 127.0.0.1:{server.port}")
    console.print(f"settings written to {state_dir / ENV_FILE}:")
    for name, value in state.env.items():
        console.print(f"  {name}={value}")
    if API_TOKEN_ENV in state.env:
        console.print(
            "the query API wants the token: curl -H "
            f"'Authorization: Bearer {state.env[API_TOKEN_ENV]}' 127.0.0.1:6066/orders/<id>"
        )


@cli.command("down")
def dev_down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop exactly the servers ``dev up`` started."""
    from devstack.stack import down

    stopped = down(state_dir)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cli.command("status")
def dev_status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Show the local stack's servers; exit 1 if it is not running."""
    from devstack.processes import is_running
    from devstack.stack import load_state

    state = load_state(state_dir)
    if state is None:
        console.print("not running")
        raise typer.Exit(1)
    for name, server in state.servers.items():
        alive = "running" if is_running(server) else "DEAD"
        console.print(f"  {name:<10} pid {server.pid:<7} 127.0.0.1:{server.port}  {alive}")
    if not state.running():
        raise typer.Exit(1)


@cli.command("demo")
def dev_demo(
    orders: Annotated[int, typer.Option(min=1, help="How many orders to publish.")] = 2000,
    state_dir: StateDir = DEFAULT_STATE_DIR,
) -> None:
    """Start stack and worker, publish orders, and watch them land in DynamoDB and Redis."""
    from devstack.demo import run_demo

    if not asyncio.run(run_demo(state_dir, orders, console)):
        fail(
            "not every order arrived in time",
            f"see the worker's and servers' logs in {state_dir / 'logs'}",
        )
    console.print("every valid order is in DynamoDB and Redis", style="bold green")


@cli.command("simulate")
def simulate(
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port of the simulated Admin API.")
    ] = 6070,
    products: Annotated[int, typer.Option(min=1, help="Products (two SKUs each).")] = 20,
    orders: Annotated[int, typer.Option(min=0, help="Orders in varied states.")] = 200,
    deliver_to: Annotated[
        str | None, typer.Option(help="Deliver the store's webhooks to this URL.")
    ] = None,
    drop_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of webhooks never sent (0 to 1).")
    ] = 0.0,
    duplicate_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share sent twice (0 to 1).")
    ] = 0.0,
    shuffle: Annotated[bool, typer.Option(help="Deliver out of order.")] = False,
    bind: Annotated[str, typer.Option(help="Listen address (0.0.0.0 in Docker).")] = "127.0.0.1",
) -> None:
    """Run a simulated shop: Admin API on --bind:--port and signed webhooks to CartLoom."""
    from cartloom.core.settings import load_settings
    from devstack.shopify_simulator import ShopSimulator, serve_simulation
    from devstack.shopify_store import SimulatedStore, populate
    from devstack.webhook_deliveries import DeliveryPlan

    settings = load_settings()
    secrets = settings.shopify_webhook_secret
    if not secrets or settings.shopify_access_token is None:
        fail(
            "the simulator needs CARTLOOM_SHOPIFY_WEBHOOK_SECRET and CARTLOOM_SHOPIFY_ACCESS_TOKEN",
            "set CARTLOOM_SHOPIFY_WEBHOOK_SECRET (signs the webhooks) and"
            " CARTLOOM_SHOPIFY_ACCESS_TOKEN (the API accepts it), to any values",
            EXIT_USAGE,
        )
    token = settings.shopify_access_token.get_secret_value()
    store = SimulatedStore()
    populate(store, products, orders)
    secret = secrets[-1].get_secret_value()
    simulator = ShopSimulator(store, access_token=token, webhook_secret=secret)
    plan = DeliveryPlan(duplicate_share=duplicate_share, drop_share=drop_share, shuffle=shuffle)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_simulation(simulator, port, deliver_to, plan, console.print, bind))


def _stack_error(exc: BaseException) -> CliError | None:
    if isinstance(exc, StackError):
        hint = (
            "see the servers' logs in .cartloom/logs/; `python -m devstack down` stops what started"
        )
        return CliError(str(exc), hint, EXIT_FAILED)
    return None


def run(argv: list[str] | None = None) -> int:
    """Run the command on ``argv`` (default: the process's); return the exit code."""
    configure_logging(requested_level() or "warning")
    return invoke(cli, argv, "python -m devstack", explain_first=_stack_error)


def main() -> None:
    """Entry point of ``python -m devstack``."""
    logging.captureWarnings(True)
    raise SystemExit(run())
