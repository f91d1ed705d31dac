"""CartLoom workers as a small supervised cluster: start, SIGKILL, SIGTERM, SIGSTOP, restart.

Each worker has a *slot* (``w1``, ``w2``...) that keeps its data directory across restarts
(what a StatefulSet's volume does), and each start of a slot is an *incarnation* with a
log of its own (``w2.3.log``: slot w2, third start). The cluster remembers how every
incarnation ended: ``killed`` (SIGKILL by the scenario), ``stopped`` (SIGTERM by the
scenario, with its exit code), ``exited`` (on its own: a crash), or still ``running``.

:meth:`Cluster.supervise` plays Kubernetes: an incarnation that exits on its own is
recorded and its slot started again (a bounded number of times), so one crash does not
hide what else the scenario would find. Every process is stopped by :meth:`close`, which
the fixtures call in ``finally``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import WorkerProcess, start_worker, wait_ready

#: Log lines that mean a worker crashed (or its recovery failed): a scenario fails on them.
CRASH = re.compile(r"ConsistencyError|Crashed reason=|Error in recovery|Worker crashed|\bFatal\b")
#: Log records worth counting (errors): reported, not failed on.
ERROR = re.compile(r"\[ERROR\]|\[CRITICAL\]")
CRASH_LINES_KEPT = 5


def dump_stacks(pid: int, out: Path) -> str:
    """Every thread's Python stack of a stuck process into ``out``, with py-spy if installed.

    A worker that does not stop on SIGTERM is killed; its stacks say where it hung.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "no py-spy to dump its stacks"
    try:
        dumped = subprocess.run(
            [spy, "dump", "--pid", str(pid), "--locals"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed: {exc}"
    out.write_text(dumped.stdout + dumped.stderr)
    return f"stacks in {out}"


@dataclass
class Incarnation:
    slot: str
    number: int
    worker: WorkerProcess
    started: float
    ended: float | None = None
    how: str = "running"  # running | paused | stopping | stopped | killed | exited
    returncode: int | None = None
    ready_after: float | None = None  # seconds from start to /readyz 200

    @property
    def name(self) -> str:
        return f"{self.slot}.{self.number}"

    def _lines(self, pattern: re.Pattern[str]) -> list[str]:
        try:
            text = self.worker.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        # Log records only (they start with "[time]"), not the traceback lines under them.
        lines = text.splitlines()
        return [line.strip()[:300] for line in lines if line[:1] == "[" and pattern.search(line)]

    def crash_lines(self) -> list[str]:
        """The log lines that mean a crash (ConsistencyError, a crashed service...)."""
        return self._lines(CRASH)

    def error_lines(self) -> list[str]:
        """Tracebacks and error lines (counted in the report, not failed on)."""
        return self._lines(ERROR)

    def describe(self) -> dict[str, Any]:
        lines = self.crash_lines()
        return {
            "name": self.name,
            "how": self.how,
            "returncode": self.returncode,
            "ready_after_s": None if self.ready_after is None else round(self.ready_after, 1),
            "crash_lines": len(lines),
            "first_crash_lines": lines[:CRASH_LINES_KEPT],
            "error_lines": len(self.error_lines()),
            "log": str(self.worker.log),
        }


@dataclass
class Cluster:
    """The workers of one scenario; ``t0`` is the scenario's clock origin (monotonic)."""

    env: dict[str, str]
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 6
    t0: float = field(default_factory=time.monotonic)
    incarnations: dict[str, list[Incarnation]] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, event: str, slot: str, **extra: Any) -> None:
        entry = {"t": self.now(), "event": event, "worker": self.current(slot).name, **extra}
        self.timeline.append(entry)
        print(f"[chaos {entry['t']:7.2f}s] {event} {entry['worker']} {extra or ''}", flush=True)

    def slots(self) -> list[str]:
        return list(self.incarnations)

    def running(self) -> list[str]:
        return [s for s in self.incarnations if self.current(s).how in ("running", "paused")]

    def current(self, slot: str) -> Incarnation:
        return self.incarnations[slot][-1]

    def start(self, slot: str) -> Incarnation:
        """Start (or restart) ``slot``; it keeps the slot's data directory."""
        history = self.incarnations.setdefault(slot, [])
        if history and history[-1].how in ("running", "paused"):
            raise AssertionError(f"{slot} is already running")
        number = len(history) + 1
        env = {"CARTLOOM_DATA_DIR": str(self.log_dir / f"{slot}-data"), **self.extra_env}
        worker = start_worker(self.env, self.log_dir, f"{slot}.{number}", env)
        history.append(Incarnation(slot, number, worker, time.monotonic()))
        self.note("start", slot)
        return history[-1]

    async def ready(self, slot: str, timeout: float = 120.0) -> float:
        """Wait until ``slot``'s current incarnation answers /readyz; seconds since its start."""
        incarnation = self.current(slot)
        try:
            await wait_ready(incarnation.worker, timeout=timeout)
        except AssertionError:
            # Another waiter saw it ready and the scenario's next fault ended it before this
            # waiter's poll came round: it did become ready.
            if incarnation.ready_after is not None:
                return incarnation.ready_after
            raise
        if incarnation.ready_after is None:  # noted the first time only
            incarnation.ready_after = time.monotonic() - incarnation.started
            self.note("ready", slot, after_s=round(incarnation.ready_after, 1))
        return incarnation.ready_after

    async def all_ready(self, timeout: float = 120.0) -> None:
        await asyncio.gather(*(self.ready(s, timeout) for s in self.running()))

    def _end(self, incarnation: Incarnation, how: str) -> None:
        incarnation.ended = time.monotonic()
        incarnation.how = how
        incarnation.returncode = incarnation.worker.process.returncode

    def kill(self, slot: str) -> float:
        """SIGKILL ``slot`` and reap it; the monotonic time of the kill."""
        incarnation = self.current(slot)
        at = time.monotonic()
        incarnation.worker.process.send_signal(signal.SIGKILL)
        incarnation.worker.process.wait(timeout=30)
        self._end(incarnation, "killed")
        self.note("SIGKILL", slot)
        return at

    async def terminate(self, slot: str, timeout: float = 60.0) -> int | None:
        """SIGTERM ``slot`` and wait (without blocking the loop) for its exit code."""
        incarnation = self.current(slot)
        process = incarnation.worker.process
        incarnation.how = "stopping"  # not a crash when it exits: the supervisor leaves it
        self.note("SIGTERM", slot)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # polling the process's exit, bounded by the deadline
        if process.poll() is None:
            stacks = dump_stacks(process.pid, incarnation.worker.log.with_suffix(".stacks.txt"))
            process.kill()
            process.wait(timeout=30)
            self._end(incarnation, f"stopped (SIGKILL after SIGTERM timed out; {stacks})")
            return None
        self._end(incarnation, "stopped")
        self.note("exited", slot, returncode=process.returncode)
        return process.returncode

    def pause(self, slot: str) -> float:
        """SIGSTOP ``slot`` (a zombie: alive, silent); the monotonic time of the stop."""
        incarnation = self.current(slot)
        at = time.monotonic()
        incarnation.worker.process.send_signal(signal.SIGSTOP)
        incarnation.how = "paused"
        self.note("SIGSTOP", slot)
        return at

    def resume(self, slot: str) -> None:
        incarnation = self.current(slot)
        incarnation.worker.process.send_signal(signal.SIGCONT)
        incarnation.how = "running"
        self.note("SIGCONT", slot)

    def reap_exits(self) -> list[Incarnation]:
        """Incarnations that exited on their own since the last call (crashes)."""
        exited = []
        for slot in self.slots():
            incarnation = self.current(slot)
            if incarnation.how == "running" and incarnation.worker.process.poll() is not None:
                self._end(incarnation, "exited")
                self.note("EXITED", slot, returncode=incarnation.returncode)
                exited.append(incarnation)
        return exited

    async def supervise(self, restart: bool = True) -> None:
        """Until cancelled: record workers that exit on their own and start them again."""
        waiting: set[asyncio.Task[Any]] = set()
        try:
            while True:
                for incarnation in self.reap_exits():
                    if restart and self.restarts < self.max_restarts:
                        self.restarts += 1
                        self.start(incarnation.slot)
                        task = asyncio.create_task(self._note_ready(incarnation.slot))
                        waiting.add(task)
                        task.add_done_callback(waiting.discard)
                await asyncio.sleep(0.5)  # a supervisor's poll period, not a condition wait
        finally:
            for task in waiting:
                task.cancel()

    async def _note_ready(self, slot: str) -> None:
        try:
            await self.ready(slot, timeout=180)
        except AssertionError:
            return  # it exited again: the next reap records it

    def all_incarnations(self) -> list[Incarnation]:
        return [i for history in self.incarnations.values() for i in history]

    def report(self, unkilled: set[str] | None = None) -> dict[str, Any]:
        """How every incarnation ended; crashes of incarnations the scenario did not end.

        ``unkilled`` names incarnations that must have survived (default: every one that
        was not killed or stopped by the scenario).
        """
        self.reap_exits()
        every = self.all_incarnations()
        must_live = [i for i in every if i.how != "killed" and not i.how.startswith("stopped")]
        if unkilled is not None:
            must_live = [i for i in every if i.name in unkilled]
        crashed = [i for i in must_live if i.how == "exited" or i.crash_lines()]
        return {
            "incarnations": [i.describe() for i in every],
            "crashes_unkilled": len(crashed),
            "crashed": [i.name for i in crashed],
            "unexpected_exits": sum(1 for i in every if i.how == "exited"),
            "crash_lines_any": sum(len(i.crash_lines()) for i in every),
            "restarts_by_supervisor": self.restarts,
        }

    def close(self) -> None:
        """Stop every process this cluster started: SIGCONT, SIGTERM, then SIGKILL."""
        live = [i for i in self.all_incarnations() if i.worker.process.poll() is None]
        for incarnation in live:
            incarnation.worker.process.send_signal(signal.SIGCONT)
            incarnation.worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for incarnation in live:
            try:
                incarnation.worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                incarnation.worker.process.kill()
                incarnation.worker.process.wait(timeout=30)
