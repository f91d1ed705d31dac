"""Starting, probing and stopping the local stack's server processes by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Handles of the servers this process started, kept so they are reaped (not leaked) on stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A server of the local stack could not be started or did not become ready."""


@dataclass(frozen=True)
class ServerProcess:
    """A started server: enough to find it again and stop exactly it."""

    name: str
    pid: int
    port: int
    start_ticks: int  # /proc start time: tells our process from a later one given the same pid
    log: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(name: str, argv: Sequence[str], log_dir: Path, port: int) -> ServerProcess:
    """Start ``argv`` in its own session (it outlives the CLI), output to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - argv is built by CartLoom, not a shell string
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[process.pid] = process
    return ServerProcess(name, process.pid, port, _start_ticks(process.pid) or 0, str(log_path))


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def _start_ticks(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: start time in clock ticks


def is_running(server: ServerProcess) -> bool:
    """True while the recorded process is alive: same pid *and* same start time (no pid reuse)."""
    fields = _proc_stat(server.pid)
    if fields is None or fields[0] == "Z":
        return False
    return int(fields[19]) == server.start_ticks


def stop(server: ServerProcess, timeout: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout``; reap if it is ours."""
    if not is_running(server):
        return
    _signal_group(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(server.pid)
        if not is_running(server):
            return
        time.sleep(0.05)
    _signal_group(server.pid, signal.SIGKILL)
    _reap(server.pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return


class ExitedAtStart(StackError):  # noqa: N818 - a StackError, told as one
    """A server exited before it answered; ``port_taken`` when its port was no longer free."""

    def __init__(self, server: ServerProcess) -> None:
        tail = _log_tail(Path(server.log))
        super().__init__(f"{server.name} exited during start-up; see {server.log}: {tail}")
        # free_port() only promises a port was free when it asked: another process (a
        # client's ephemeral port, say) can take it before the server binds it.
        self.port_taken = "in use" in tail.lower()


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_until(
    server: ServerProcess, probe: Callable[[], Awaitable[bool]], within: float = 30.0
) -> None:
    """Poll ``probe`` until it answers True; fail early if the process died."""
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if not is_running(server):
            raise ExitedAtStart(server)
        try:
            if await probe():
                return
        except Exception as exc:  # not ready yet: connection refused, broker loading...
            last_error = exc
        await asyncio.sleep(0.1)
    raise StackError(
        f"{server.name} not ready after {within:.0f}s ({last_error!r}); see {server.log}"
    )
