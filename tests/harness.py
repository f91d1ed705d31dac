"""Real-server test harness: the local stack and CartLoom workers as processes, with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from devstack.processes import free_port
from devstack.stack import StackState, down, up

T = TypeVar("T")


def in_process_app(group: str, bootstrap: str, datadir: Path, **options: Any) -> Any:
    """A ``CartloomApp`` in the test's own process on the real broker, quick to rebalance.

    For tests that pin the Faust behaviour CartLoom's consumer and tables change; web and
    topic declaration off. ``options`` add Faust settings (``store`` among them).
    """
    from cartloom.stream.app import CartloomApp  # Faust, only for the tests that use it
    from cartloom.stream.kafka_clients import KafkaConnection

    app = CartloomApp(
        group,
        env={},
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        broker_session_timeout=6,
        broker_rebalance_timeout=6,
        broker_heartbeat_interval=1,
        **options,
    )
    app.kafka = KafkaConnection.plaintext(bootstrap)  # create_app sets it from the settings
    return app


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last is not None and last is not False:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last value {last!r})")


def settings_from_env(env: dict[str, str], **overrides: Any) -> Any:
    """The ``Settings`` a process started with ``env`` (``CARTLOOM_*`` variables) reads."""
    from cartloom.core.settings import Settings

    fields = {
        name.removeprefix("CARTLOOM_").lower(): value
        for name, value in env.items()
        if name.startswith("CARTLOOM_")
    }
    return Settings(**{**fields, **overrides})


async def start_local_stack(state_dir: Path, with_prometheus: bool = False) -> StackState:
    """Start the embedded stack (broker, redis-server, moto_server) on free ports.

    Its local AWS credentials go into this process's environment too (without overriding
    real ones), so test clients reach moto_server. Stop it with :func:`stop_local_stack`.
    """
    # No API token: the tests' workers answer queries without one, except where a test
    # sets its own (tests/integration/test_live_queries.py checks the refusals).
    state, _ = await up(state_dir, with_prometheus=with_prometheus, api_token=False)
    for name, value in state.env.items():
        if name.startswith("AWS_"):
            os.environ.setdefault(name, value)
    return state


def stop_local_stack(state_dir: Path) -> None:
    """Stop the servers :func:`start_local_stack` started in ``state_dir`` (by pid)."""
    down(state_dir)


@contextmanager
def local_stack(state_dir: Path) -> Iterator[StackState]:
    """The embedded stack for a synchronous fixture (not inside a running event loop)."""
    state = asyncio.run(start_local_stack(state_dir))
    try:
        yield state
    finally:
        stop_local_stack(state_dir)


@dataclass
class WorkerProcess:
    """A ``cartloom worker`` subprocess and how to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    api_token: str | None = None  #: the worker's CARTLOOM_API_TOKEN, if it was given one

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        """The headers a query to this worker needs (its bearer token, when it has one)."""
        return {} if self.api_token is None else {"Authorization": f"Bearer {self.api_token}"}

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_worker(
    stack_env: dict[str, str],
    log_dir: Path,
    name: str = "worker",
    extra_env: dict[str, str] | None = None,
    command: tuple[str, ...] = ("worker",),
    port_setting: str = "CARTLOOM_WEB_PORT",
) -> WorkerProcess:
    """Start a worker (or another ``cartloom`` server ``command``) against the stack.

    Its settings come only from ``stack_env`` and ``extra_env``; it listens on a free port
    given in ``port_setting``.
    """
    port = free_port()
    data_dir = log_dir / f"{name}-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    env.update(stack_env)
    env.update(
        {
            port_setting: str(port),
            "CARTLOOM_DATA_DIR": str(data_dir),
            "CARTLOOM_LOG_LEVEL": "info",
            **(extra_env or {}),
        }
    )
    log = log_dir / f"{name}.log"
    argv = [sys.executable, "-m", "cartloom", "--env-file", str(log_dir / "none.env"), *command]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return WorkerProcess(process, port, log, env.get("CARTLOOM_API_TOKEN"))


def start_ingress(
    stack_env: dict[str, str],
    log_dir: Path,
    name: str = "ingress",
    extra_env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Start ``cartloom shopify ingress`` (the webhook receiver alone) against the stack."""
    return start_worker(
        stack_env,
        log_dir,
        name,
        extra_env,
        command=("shopify", "ingress"),
        port_setting="CARTLOOM_WEBHOOK_INGRESS_PORT",
    )


@asynccontextmanager
async def serving(process: WorkerProcess) -> AsyncIterator[WorkerProcess]:
    """``process`` once it is ready; stopped on the way out, ready or not."""
    try:
        await wait_ready(process)
        yield process
    finally:
        process.stop()


async def wait_ready(worker: WorkerProcess, timeout: float = 120.0) -> None:
    """Wait until the worker's ``/readyz`` answers 200; fail with its log if it dies."""

    async def probe() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{worker.log_tail()}")
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(probe, timeout=timeout, what="worker ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log_tail()}") from None


def run_cartloom(
    state_dir: Path, env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``cartloom ARGS`` as an operator runs it: the settings in ``env`` and nothing else.

    The test process's own ``CARTLOOM_*`` variables are left out, and ``--env-file`` names
    a file that does not exist, so no ``.cartloom/dev.env`` is read either.
    """
    return _run_module("cartloom", state_dir, env, args, timeout)


def run_devstack(
    state_dir: Path, env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``python -m devstack ARGS``, with the settings in ``env`` only, as :func:`run_cartloom`."""
    return _run_module("devstack", state_dir, env, args, timeout)


def _run_module(
    module: str, state_dir: Path, env: dict[str, str], args: tuple[str, ...], timeout: float
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    return subprocess.run(
        [sys.executable, "-m", module, "--env-file", str(state_dir / "none.env"), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def first_answers(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], wait: float = 1.0
) -> list[bytes | None]:
    """What each raw connection was sent within ``wait`` seconds (None: nothing yet)."""

    async def first(reader: asyncio.StreamReader) -> bytes | None:
        try:  # a refused connection is answered at once; an admitted one waits
            return await asyncio.wait_for(reader.read(200), timeout=wait)
        except TimeoutError:
            return None

    return list(await asyncio.gather(*(first(reader) for reader, _ in connections)))
