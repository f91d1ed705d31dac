"""One fault scenario on real processes: its stack, workers, load, observer, checks and report.

A scenario owns a fresh local stack (the saga's internal topics have fixed names, so two
CartLoom apps on one broker would read each other's commands: every scenario gets a
broker of its own), a :class:`~tests.chaos.cluster.Cluster` of workers, a default aiokafka
:class:`~tests.chaos.load.Publisher`, and an :class:`~tests.chaos.observer.Observer` that
reads the tables from their changelogs. The test drives the faults; the scenario gives it
the shared steps: stock first, probes after a fault, drain, wait for idle, judge, audit,
report (one summary line, a JSON results file) and a final assertion listing offenders.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.stack import StackState
from tests.chaos.checks import RESOLVED, Verdict, judge
from tests.chaos.cluster import Cluster
from tests.chaos.load import PARTITIONS, Catalog, Publisher, key_on_partition, make_catalog
from tests.chaos.load import order_bytes as make_order
from tests.chaos.observer import GroupLag, Observer
from tests.harness import eventually

RESULTS_DIR = Path(os.environ.get("CHAOS_RESULTS_DIR", Path(__file__).parent / "results"))
#: One line per scenario run, printed again at the end of the pytest session.
SUMMARIES: list[str] = []
#: orders per kind (stuck, lost) whose records a failed run writes out
TRAILS = 5


@dataclass(frozen=True)
class Scale:
    """How big a scenario runs: ``short`` inside ``make test``, ``full`` in ``make chaos``."""

    name: str
    orders: int  # the steady stream of the SIGKILL and zombie scenarios
    rate: float  # orders per second
    kills: int
    runs: int  # runs of each SIGKILL scenario in a row
    churn_orders: int
    ready_wait: float  # before a fault: wait this long at most for every worker ready
    drain_timeout: float  # after the stream: every order resolved within this
    idle_timeout: float  # then: every group caught up, changelogs quiet
    audit_settle: float

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


SCALES = {
    "short": Scale(
        "short",
        orders=3600,
        rate=150,
        kills=2,
        runs=1,
        churn_orders=4500,
        ready_wait=15,
        drain_timeout=60,
        idle_timeout=45,
        audit_settle=15,
    ),
    "full": Scale(
        "full",
        orders=12_000,
        rate=160,
        kills=3,
        runs=5,
        churn_orders=9000,
        ready_wait=60,
        drain_timeout=180,
        idle_timeout=90,
        audit_settle=30,
    ),
}


@dataclass
class FaultRecord:
    """One fault and how long the worker's partitions took to answer again after it."""

    number: int
    kind: str  # SIGKILL, SIGSTOP, start, SIGTERM
    worker: str
    at_s: float  # since the scenario's start
    stream_at_s: float | None  # since the stream's start (None: before it)
    probes: list[str] = field(default_factory=list)
    answered_s: float | None = None  # kill -> the last probe resolved
    restart_ready_s: float | None = None  # restart -> /readyz 200
    unanswered: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "probes"}


class Scenario:
    """Shared steps of the fault scenarios (use as ``async with``)."""

    def __init__(
        self,
        name: str,
        stack: StackState,
        log_dir: Path,
        scale: Scale,
        seed: int,
        extra_env: dict[str, str] | None = None,
        raw_topics: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.scale = scale
        self.seed = seed
        self.log_dir = log_dir
        self.env = dict(stack.env)
        self.bootstrap = stack.env["CARTLOOM_BROKER_URL"].split("://", 1)[1]
        self.rng = random.Random(f"{seed}-faults")  # the fault schedule
        self.order_rng = random.Random(f"{seed}-orders")  # the orders
        self.cluster = Cluster(stack.env, log_dir, extra_env or {})
        self.observer = Observer(self.bootstrap, raw_topics=raw_topics)
        self.lag = GroupLag(self.bootstrap, self.observer)
        self.publisher = Publisher(self.bootstrap)
        self.catalog: Catalog = make_catalog(f"{name[:8]}{seed % 1000}")
        self.faults: list[FaultRecord] = []
        self._fault_times: dict[int, float] = {}
        self._workers: dict[str, Any] | None = None
        self._offenders: dict[str, Any] | None = None
        self._positions: dict[tuple[str, str, int], tuple[int, int]] = {}
        self.figures: dict[str, Any] = {
            "scenario": name,
            "scale": scale.name,
            "seed": seed,
            "store": (extra_env or {}).get("CARTLOOM_STORE", "memory://"),
        }
        self.problems: list[str] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[Any]] = []
        self.stream_started: float | None = None
        print(f"\n[chaos] {name} ({scale.name}) seed={seed} logs={log_dir}", flush=True)

    async def __aenter__(self) -> Scenario:
        try:
            await self.observer.start()
            await self.lag.start()
            await self.publisher.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for task in [self._supervisor, *self._background]:
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in [self._supervisor, *self._background] if t), return_exceptions=True
            )
            await self.publisher.stop()
            await self.lag.stop()
            await self.observer.stop()
        finally:
            self.cluster.close()

    # ---- workers -------------------------------------------------------------------

    def supervise(self, restart: bool = True) -> None:
        """Record (and restart) workers that exit on their own, from now on."""
        self._supervisor = asyncio.create_task(self.cluster.supervise(restart))

    async def start_workers(self, slots: list[str]) -> None:
        for slot in slots:
            self.cluster.start(slot)
        await self.cluster.all_ready()

    async def ready_for_fault(self) -> None:
        """Wait until every running worker is ready, so each fault hits a working cluster.

        Checked again after each wait (a worker may have crashed and been restarted
        meanwhile), for at most the scale's ``ready_wait``: a cluster that does not recover
        is still faulted on schedule (the fault lands during the stream), and reported.
        """
        deadline = time.monotonic() + self.scale.ready_wait
        while True:
            before = {s: self.cluster.current(s).name for s in self.cluster.running()}
            try:
                await self.cluster.all_ready(max(1.0, deadline - time.monotonic()))
            except AssertionError as exc:
                if time.monotonic() >= deadline:
                    first = str(exc).splitlines()[0]
                    self.problems.append(
                        f"not every worker was ready {self.scale.ready_wait:.0f}s after the "
                        f"fault was due (faulted anyway): {first}"
                    )
                    return
                await asyncio.sleep(0.5)  # poll period while the supervisor restarts it
                continue
            after = {s: self.cluster.current(s).name for s in self.cluster.running()}
            if after == before or time.monotonic() >= deadline:
                return

    def background(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine)
        self._background.append(task)
        return task

    def stream_time(self) -> float | None:
        if self.stream_started is None:
            return None
        return round(time.monotonic() - self.stream_started, 2)

    async def until_stream_time(self, at: float) -> None:
        """Pause the fault schedule until the stream has run ``at`` seconds."""
        assert self.stream_started is not None
        delay = self.stream_started + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # a schedule, not a wait for a condition

    async def kill_and_restart(self, number: int, slot: str, restart_delay: float) -> FaultRecord:
        """SIGKILL ``slot``, publish probes at once, restart it after ``restart_delay`` s."""
        record = await self.fault(number, "SIGKILL", slot, self.cluster.kill)
        await asyncio.sleep(restart_delay)  # the supervisor's restart delay: a schedule
        self.cluster.start(slot)
        self.background(self._restarted(record, slot))
        return record

    async def fault(
        self, number: int, kind: str, slot: str, act: Callable[[str], Any]
    ) -> FaultRecord:
        """Do ``act(slot)`` (a signal, a start...) and publish a probe order per partition."""
        worker = self.cluster.current(slot).name if slot in self.cluster.incarnations else slot
        at = time.monotonic()
        result = act(slot)
        if asyncio.iscoroutine(result):
            await result
        self._fault_times[number] = at
        record = FaultRecord(
            number,
            kind,
            worker,
            at_s=round(at - self.cluster.t0, 2),
            stream_at_s=self.stream_time(),
        )
        self.faults.append(record)
        record.probes = await self.probes(f"f{number}")
        return record

    async def _restarted(self, record: FaultRecord, slot: str) -> None:
        restarted = self.cluster.current(slot)
        try:
            record.restart_ready_s = round(await self.cluster.ready(slot, timeout=180), 1)
        except AssertionError as exc:
            first = str(exc).splitlines()[0].rstrip(":")
            code = restarted.worker.process.returncode
            self.problems.append(
                f"{record.worker}'s restart {restarted.name} never became ready: {first}"
                + ("" if code is None else f" (exit code {code})")
            )

    # ---- load ----------------------------------------------------------------------

    async def stock(self, levels: dict[str, int] | None = None) -> None:
        """Publish the stock levels and wait until ``inventory_by_sku`` holds every one."""
        levels = levels if levels is not None else self.catalog.levels()
        await self.publisher.stock(levels)

        async def stocked() -> bool:
            table = self.observer.tables["inventory_by_sku"]
            return all((table.get(s) or {}).get("on_hand") == n for s, n in levels.items())

        await eventually(stocked, timeout=90, what="stock levels in inventory_by_sku")

    async def probes(self, tag: str) -> list[str]:
        """One plentiful one-line order per partition of ``orders`` (and of the SKU topics)."""
        ids = []
        for p in range(PARTITIONS):
            order_id = key_on_partition(f"{self.name[:8]}{self.seed % 1000}-{tag}-probe", p)
            line = [{"sku": self.catalog.probes[p], "quantity": 1}]
            await self.publisher.order(order_id, make_order(order_id, line))
            ids.append(order_id)
        await self.publisher.flush()
        return ids

    def answer_times(self) -> None:
        """Fill each kill's ``answered_s`` from when its probes were seen resolved."""
        for record in self.faults:
            at = self._fault_times[record.number]
            resolved = [self.observer.resolved_at.get(p) for p in record.probes]
            record.unanswered = [
                p for p, t in zip(record.probes, resolved, strict=True) if t is None
            ]
            done = [t for t in resolved if t is not None]
            if done and not record.unanswered:
                record.answered_s = round(max(done) - at, 1)

    def latency(self) -> dict[str, Any]:
        """Seconds from publishing an order to seeing it resolved.

        Before the first fault (what an answer takes anyway on this machine, the yardstick
        for ``answered_again_s``) and over the whole stream.
        """
        sent = self.publisher.published.sent_at
        first = min(self._fault_times.values(), default=None)
        every, before = [], []
        for order_id, at in sent.items():
            done = self.observer.resolved_at.get(order_id)
            if done is None:
                continue
            every.append(done - at)
            if first is not None and done < first:
                before.append(done - at)
        return {"before_fault": percentiles(before), "all": percentiles(every)}

    # ---- after the faults ----------------------------------------------------------

    async def drain(self, timeout: float) -> float | None:
        """Wait until every published order left ``received``; seconds, or None on timeout."""
        started = time.monotonic()
        ids = list(self.publisher.published.sent_at)

        async def resolved() -> bool:
            return not self.observer.unresolved(ids)

        try:
            await eventually(resolved, timeout=timeout, interval=0.5, what="every order resolved")
        except AssertionError:
            left = len(self.observer.unresolved(ids))
            self.problems.append(f"{left} orders not resolved within {timeout:.0f}s of the stream")
            return None
        return round(time.monotonic() - started, 1)

    async def settle(self) -> None:
        """Wait until the groups have committed everything and the changelogs are quiet."""
        started = time.monotonic()
        left = await self.lag.wait_idle(timeout=self.scale.idle_timeout)
        self.figures["idle_after_s"] = round(time.monotonic() - started, 1)
        self._positions = await self.lag.positions()
        if left:
            self.figures["lag_left"] = left
            self.figures["lag_left_partitions"] = {
                f"{group} {topic}[{partition}]": {"committed": done, "end": end}
                for (group, topic, partition), (done, end) in (await self.lag.positions()).items()
                if done < end
            }
            self.problems.append(
                f"workers still behind after {self.scale.idle_timeout:.0f}s: {left}"
            )
        await self.observer.read_to_end()

    def judge(
        self, *, expected: frozenset[str] = RESOLVED, reject_plentiful: bool = False
    ) -> Verdict:
        plentiful = frozenset(self.catalog.plentiful) | frozenset(self.catalog.probes)
        verdict = judge(
            list(self.publisher.published.sent_at),
            self.observer.tables,
            expected=expected,
            plentiful=plentiful,
        )
        self.figures.update(verdict.figures())
        self.figures["stale_records_left_out"] = self.observer.stale
        self.problems.extend(verdict.problems(reject_plentiful=reject_plentiful))
        self._offenders = verdict.offenders()
        # A SKU whose stock and ledger part: every record about it (stock, ledger entries,
        # commands, answers), so where they parted can be read off the results file.
        skus = list(verdict.ledger_mismatches)[:TRAILS]
        if verdict.lost or verdict.stuck or skus:
            self.write_trails([*verdict.stuck[:TRAILS], *verdict.lost[:TRAILS], *skus])
        return verdict

    def write_trails(self, order_ids: list[str]) -> None:
        """For a failed run: every record about each order (or SKU), and the groups' commits.

        Written to ``results/<name>-trails.json`` so a run that failed once can be
        explained without running it again.
        """
        since = self.stream_started or 0.0
        trails = {oid: self.observer.trail(oid, since) for oid in order_ids}
        touched = {r["tp"].split("@")[0] for records in trails.values() for r in records}
        commits = {
            f"{group} {topic}[{partition}]": {"committed": done, "end": end}
            for (group, topic, partition), (done, end) in self._positions.items()
            if f"{topic}[{partition}]" in touched
        }
        faults = [
            {"kind": f.kind, "worker": f.worker, "stream_at_s": f.stream_at_s} for f in self.faults
        ]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"{self.name}-trails.json"
        body = {"faults": faults, "commits": commits, "orders": trails}
        out.write_text(json.dumps(body, indent=1, default=str))
        self.figures["trails"] = str(out)

    async def audit(self) -> int | None:
        """``cartloom audit --strict`` against the stack; its exit code (0 = clean)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
        env.update(self.env)
        out = RESULTS_DIR / f"{self.name}-audit.json"
        argv = [
            sys.executable,
            "-m",
            "cartloom",
            "--env-file",
            str(self.log_dir / "none.env"),
            "audit",
            "--strict",
            "--settle",
            str(self.scale.audit_settle),
            "--json",
        ]
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), self.scale.audit_settle + 180)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.problems.append("cartloom audit did not finish in time")
            self.figures["audit"] = {"exit": None}
            return None
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out.write_bytes(stdout)
        summary: dict[str, Any] = {"exit": process.returncode, "report": str(out)}
        summary["seconds"] = round(time.monotonic() - started, 1)
        try:
            report = json.loads(stdout)
        except ValueError:
            summary["output"] = stdout.decode(errors="replace")[-500:]
        else:
            for store, body in report.get("stores", {}).items():
                kinds = Counter(d.get("kind") for d in body.get("differences", []))
                summary[store] = dict(kinds)
            # Records older than the one before them (a zombie's late writes): reported,
            # not a failure. Recovery and standbys leave them out (RawKeyTable, pinned by
            # tests/integration/test_changelog_stale_records.py), the sinks refuse them
            # (the audit's comparison holds the stores to that), and so does the observer.
            regressions = report.get("changelog", {}).get("regressions") or 0
            summary["changelog_regressions"] = regressions
            self.figures["changelog_regressions"] = regressions
        self.figures["audit"] = summary
        if process.returncode != 0:
            self.problems.append(f"cartloom audit --strict exited {process.returncode}: {summary}")
        return process.returncode

    def workers(self, unkilled: set[str] | None = None) -> dict[str, Any]:
        """Crash figures of the cluster (and the problems they are)."""
        report = self.cluster.report(unkilled)
        self.figures["crashes_unkilled"] = report["crashes_unkilled"]
        self.figures["unexpected_exits"] = report["unexpected_exits"]
        self.figures["crash_lines"] = report["crash_lines_any"]
        for item in report["incarnations"]:
            if item["name"] in report["crashed"] or item["crash_lines"]:
                lines = "; ".join(item["first_crash_lines"]) or f"exit code {item['returncode']}"
                self.problems.append(f"worker {item['name']} ({item['how']}) crashed: {lines}")
        self._workers = report
        return report

    def finish(self, **extra: Any) -> None:
        """Write the results file, print the summary line, then fail listing every problem."""
        self.answer_times()
        self.figures.update(extra)
        self.figures["kills"] = sum(1 for f in self.faults if f.kind == "SIGKILL")
        self.figures["faults"] = [f.as_dict() for f in self.faults]
        self.figures["answered_again_s"] = [f.answered_s for f in self.faults]
        self.figures["latency_s"] = self.latency()
        published = self.publisher.published
        if published.started_at is not None and published.finished_at is not None:
            self.figures["stream_s"] = round(published.finished_at - published.started_at, 1)
            self.figures["rate_per_s"] = round(
                published.orders / max(0.1, self.figures["stream_s"])
            )
        self.figures["published_messages"] = self.publisher.published.messages
        self.figures["duplicates_published"] = self.publisher.published.duplicates
        self.figures["problems"] = self.problems
        self.figures["passed"] = not self.problems
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        body = {
            **self.figures,
            "timeline": self.cluster.timeline,
            "workers": self._workers,
            "offenders": self._offenders,
        }
        (RESULTS_DIR / f"{self.name}.json").write_text(json.dumps(body, indent=2, default=str))
        line = summary_line(self.figures)
        SUMMARIES.append(line)
        print(line, flush=True)
        if self.problems:
            listed = "\n  - ".join(self.problems)
            raise AssertionError(f"{line}\n  - {listed}\nresults: {RESULTS_DIR / self.name}.json")


def summary_line(f: dict[str, Any]) -> str:
    """``chaos NAME [scale] seed=S: orders=... lost=0 ... -> PASS``."""
    fields = [
        ("orders", f.get("orders")),
        ("kills", f.get("kills") or None),
        ("faults", "+".join(x["kind"] for x in f.get("faults", [])) or None),
        ("lost", f.get("lost")),
        ("stuck", f.get("stuck")),
        ("oversold", f.get("oversold_units")),
        ("leaked", f.get("leaked_units")),
        ("rejected", (f.get("statuses") or {}).get("rejected")),
        ("crashes_unkilled", f.get("crashes_unkilled")),
        ("audit", (f.get("audit") or {}).get("exit")),
        ("answered_again_s", f.get("answered_again_s") or None),
        ("p99_before_fault_s", (f.get("latency_s") or {}).get("before_fault", {}).get("p99")),
    ]
    shown = " ".join(f"{k}={v}" for k, v in fields if v is not None)
    verdict = "PASS" if f.get("passed") else f"FAIL ({len(f.get('problems', []))} problems)"
    return f"chaos {f['scenario']} [{f['scale']}] seed={f['seed']}: {shown} -> {verdict}"


def percentiles(values: list[float]) -> dict[str, float | int]:
    """Count, p50, p99 and max of ``values`` (seconds, one decimal)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 1)}
