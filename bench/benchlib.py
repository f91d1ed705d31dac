"""Shared pieces of the benchmarks that run whole CartLoom processes on the local stack.

Used by bench/orders.py, bench/views.py and bench/scaleout.py:

- a fresh embedded local stack per run (:func:`fresh_stack`: broker, redis-server and
  the DynamoDB endpoint (moto) from :mod:`devstack`), and ``cartloom worker`` /
  ``cartloom sink`` processes started against it (:meth:`Stack.start_worker`,
  :meth:`Stack.start_sink`);
- per-process CPU from ``/proc/<pid>/stat`` (:class:`CpuMeter`): the kernel's accounting,
  read from outside each process;
- orders and stock levels published with confluent-kafka at its defaults (a client CartLoom
  did not write; librdkafka partitions keys by CRC32, not murmur2, so CartLoom forwards the
  records it gets on another partition, as it must for any such producer);
- what the worker produced, read from outside it: the ``order_by_id`` changelog
  (:class:`ChangelogTail`) and the stores themselves (:class:`StoreProbe`: Redis with a
  pipeline, DynamoDB with ``BatchGetItem``);
- a paced load generator, run as its own process so its CPU is its own:
  ``python bench/benchlib.py loadgen --bootstrap HOST:PORT --rate 2000 --seconds 60``.

Readiness (``GET /readyz``) is asked only before a measurement starts; nothing polls a
process under test while it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SKUS = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: An order's view is final once its reservation is decided (no payments are sent here).
FINAL = frozenset({"reserved", "rejected"})


# -- orders --------------------------------------------------------------------------------


def order(order_id: str, rnd: random.Random, created_at: str | None = None) -> dict[str, Any]:
    """A bench order of 1-3 lines over ``SKUS`` SKUs."""
    lines = [
        {"sku": f"bench-sku-{rnd.randrange(SKUS)}", "quantity": rnd.randint(1, 3)}
        for _ in range(rnd.randint(1, 3))
    ]
    return {
        "order_id": order_id,
        "source": "bench",
        "created_at": created_at or datetime.now(UTC).isoformat(),
        "lines": lines,
    }


def stock(on_hand: int) -> Iterator[tuple[str, bytes]]:
    """An absolute level of ``on_hand`` units for every bench SKU (key = SKU)."""
    for n in range(SKUS):
        sku = f"bench-sku-{n}"
        yield sku, orjson.dumps({"sku": sku, "on_hand": on_hand})


def backlog(prefix: str, count: int, seed: str = "bench") -> Iterator[tuple[str, bytes]]:
    """``count`` orders ``{prefix}-{n}``, the same for the same seed."""
    rnd = random.Random(seed)
    for n in range(count):
        order_id = f"{prefix}-{n}"
        yield order_id, orjson.dumps(order(order_id, rnd))


def publish(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[str, bytes]],
    on_sent: Callable[[int], None] = lambda _: None,
) -> int:
    """Publish with confluent-kafka at its defaults; wait until the broker has every record."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    sent = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key.encode(), on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            on_sent(1000)
    if producer.flush(120) != 0 or failures:
        raise RuntimeError(f"confluent-kafka did not deliver everything: {failures[:3]}")
    on_sent(sent % 1000)
    return sent


# -- processes and CPU ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from ``/proc``; nan if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds of named processes, read from ``/proc`` (``self`` is the bench itself)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 3) for name in before if name in after}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def wait_quiet(
    meter: CpuMeter, names: Iterable[str], below: float = 0.1, within: float = 90.0
) -> float:
    """Until ``names`` together use less than ``below`` of a core over a second; the rate."""
    names = list(names)
    deadline = time.monotonic() + within
    rate = float("inf")
    while time.monotonic() < deadline:
        before, started = meter.read(), time.monotonic()
        await asyncio.sleep(1.0)
        after = meter.read()
        rate = sum(after[n] - before[n] for n in names) / (time.monotonic() - started)
        if rate < below:
            return rate
    return rate


@dataclass
class Proc:
    """A CartLoom process started by a bench: its handle, readiness port and log."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Stack:
    """A fresh local stack and the settings that reach it."""

    env: dict[str, str]
    pids: dict[str, int]
    work: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.env["CARTLOOM_BROKER_URL"].split("://", 1)[1]

    def settings(self) -> Any:
        from cartloom.core.settings import Settings

        return Settings(
            broker_url=self.env["CARTLOOM_BROKER_URL"],
            redis_url=self.env["CARTLOOM_REDIS_URL"],
            dynamodb_endpoint=self.env["CARTLOOM_DYNAMODB_ENDPOINT"],
        )

    def cartloom_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
        env.update(self.env)
        env.update(
            CARTLOOM_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
            # A backlog waits longer than the default 30 s saga deadline; the benches
            # measure the order path and the views, not the deadline rejecting a backlog.
            CARTLOOM_SAGA_DEADLINE_SECONDS="3600",
        )
        # BENCH_CARTLOOM_X=v sets CARTLOOM_X=v for every CartLoom process the bench starts
        # (to compare a setting, e.g. BENCH_CARTLOOM_SINK_BATCH_MAX=5000).
        env.update(
            {
                k.removeprefix("BENCH_"): v
                for k, v in os.environ.items()
                if k.startswith("BENCH_CARTLOOM_")
            }
        )
        env.update(extra)
        return env

    def _start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Proc:
        log = self.work / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cartloom",
                    "--env-file",
                    str(self.work / "none.env"),
                    *argv,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, popen, port, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str, sinks: bool) -> Proc:
        """``cartloom worker`` with its sinks on or off, its own data dir and web port."""
        from devstack.processes import free_port

        port = free_port()
        env = self.cartloom_env(
            CARTLOOM_SINKS_ENABLED="true" if sinks else "false",
            CARTLOOM_WEB_PORT=str(port),
            CARTLOOM_DATA_DIR=str(self.work / f"{name}-data"),
        )
        return self._start(name, ["worker"], env, port)

    def start_sink(self, name: str, store: str | None = None) -> Proc:
        """``cartloom sink``: both stores, or only ``store``'s (``--store``)."""
        from devstack.processes import free_port

        port = free_port()
        argv = ["sink", *(["--store", store] if store else [])]
        return self._start(name, argv, self.cartloom_env(CARTLOOM_SINK_PORT=str(port)), port)

    def start(self, form: Form) -> None:
        """The processes of ``form``: its workers, then its sink processes."""
        for n in range(1, form.workers + 1):
            self.start_worker(f"worker-{n}", sinks=form.sinks == "worker")
        for n in range(1, form.sink_processes + 1):
            if form.per_store:
                self.start_sink(f"sink-dynamodb-{n}", "dynamodb")
                self.start_sink(f"sink-redis-{n}", "redis")
            else:
                self.start_sink(f"sink-{n}")

    async def ready(self, within: float = 180.0) -> None:
        """Until every started process answers ``GET /readyz`` 200 (before measuring only)."""
        import aiohttp

        deadline = time.monotonic() + within
        waiting = list(self.procs)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while waiting:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready within {within:.0f}s: {waiting[0].log}")
                for proc in list(waiting):
                    if proc.popen.poll() is not None:
                        raise RuntimeError(f"{proc.name} exited; see {proc.log}")
                    try:
                        async with http.get(f"http://127.0.0.1:{proc.port}/readyz") as answer:
                            if answer.status == 200:
                                waiting.remove(proc)
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                await asyncio.sleep(0.5)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; {proc.log}")

    def meter(self) -> CpuMeter:
        """CPU of the stack's servers, every started process, and this bench (``bench``)."""
        pids = {**self.pids, **{proc.name: proc.pid for proc in self.procs}}
        return CpuMeter({**pids, "bench": os.getpid()})

    def stop_procs(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()


@asynccontextmanager
async def fresh_stack(work: Path, name: str) -> AsyncIterator[Stack]:
    """A new local stack in ``work/name`` (stopped on exit): no topic of an earlier run."""
    from devstack.stack import LOCAL_AWS_ENV, down, up

    for key, value in LOCAL_AWS_ENV.items():
        os.environ.setdefault(key, value)
    state_dir = work / name
    state, _ = await up(state_dir, api_token=False)
    pids = {
        "broker": state.servers["broker"].pid,
        "redis-server": state.servers["redis"].pid,
        "dynamodb-server": state.servers["dynamodb"].pid,
    }
    stack = Stack(state.env, pids, state_dir)
    try:
        yield stack
    finally:
        stack.stop_procs()
        down(state_dir)


# -- what the processes produced, read from outside them -----------------------------------


class ChangelogTail:
    """Newest value per key of a table changelog, read incrementally.

    Polled every half second while the worker runs: reading the whole changelog from the
    start each time would take a growing share of the machine's two cores from the worker.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer

        self.topic = topic
        self.latest: dict[bytes, Any] = {}
        self.resolved: set[bytes] = set()
        # Short metadata age: the changelog topic appears only once the worker creates it.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, metadata_max_age_ms=500
        )
        self._assigned = False

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        """Read what was appended since the last poll."""
        from aiokafka import TopicPartition

        if not self._assigned:
            await self._consumer.topics()
            partitions = self._consumer.partitions_for_topic(self.topic) or ()
            if not partitions:  # the worker has not created it yet
                return
            tps = [TopicPartition(self.topic, p) for p in partitions]
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
            self._assigned = True
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=50_000)
            if not batch:
                return
            for records in batch.values():
                for record in records:
                    if record.key is None or not record.value:
                        continue
                    view = orjson.loads(record.value)
                    self.latest[record.key] = view
                    if view["status"] != "received":
                        self.resolved.add(record.key)

    def views(self, prefix: bytes) -> dict[bytes, Any]:
        return {k: self.latest[k] for k in self.resolved if k.startswith(prefix)}


class StoreProbe:
    """Reads orders' views from DynamoDB (``BatchGetItem``) and Redis (one pipeline)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.calls = {"dynamodb_batch_get": 0, "dynamodb_keys": 0, "redis_keys": 0}

    async def __aenter__(self) -> StoreProbe:
        from aiobotocore.session import get_session

        from cartloom.core.redis_keys import RedisKeys
        from cartloom.sinks.dynamodb import dynamodb_client_config
        from cartloom.sinks.redis import redis_client

        self._dynamo_cm = get_session().create_client(
            "dynamodb",
            endpoint_url=self.settings.dynamodb_endpoint,
            config=dynamodb_client_config(self.settings),
        )
        self._dynamo = await self._dynamo_cm.__aenter__()
        self._redis = redis_client(self.settings)
        self._keys = RedisKeys(self.settings.namespace)
        self._table = self.settings.dynamodb_table("orders")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._redis.aclose()
        await self._dynamo_cm.__aexit__(None, None, None)

    async def dynamodb(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """``order_id -> (status, created_at)`` of the ids DynamoDB holds (consistent reads)."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 100):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": [{"order_id": {"S": i}} for i in ids[start : start + 100]],
                    "ProjectionExpression": "order_id, #s, created_at",
                    "ExpressionAttributeNames": {"#s": "status"},
                    "ConsistentRead": True,
                }
            }
            while request:
                answer = await self._dynamo.batch_get_item(RequestItems=request)
                self.calls["dynamodb_batch_get"] += 1
                for item in answer["Responses"].get(self._table, []):
                    found[item["order_id"]["S"]] = (
                        item.get("status", {}).get("S", "?"),
                        item.get("created_at", {}).get("S", ""),
                    )
                request = answer.get("UnprocessedKeys") or {}
        self.calls["dynamodb_keys"] += len(ids)
        return found

    async def redis(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        """``order_id -> (status, created_at)`` of the ids Redis holds (``HGET doc``)."""
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            pipe = self._redis.pipeline(transaction=False)
            for order_id in chunk:
                pipe.hget(self._keys.view("orders", order_id), "doc")
            for order_id, doc in zip(chunk, await pipe.execute(), strict=True):
                if doc:
                    view = orjson.loads(doc)
                    found[order_id] = (view.get("status", "?"), view.get("created_at", ""))
        self.calls["redis_keys"] += len(ids)
        return found


class GroupLag:
    """Records of ``topic`` not yet committed by consumer groups (the broker's view).

    Asked with one consumer per group id, kept open between questions, that never joins its
    group (``committed`` only fetches the group's offsets), so the group's members are not
    disturbed. Close it with :meth:`close`.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self._consumers: dict[str, Any] = {}

    async def __call__(self, group: str) -> int | None:
        """The group's lag on the topic; None if the broker could not say."""
        from aiokafka import TopicPartition

        try:
            consumer = await self._consumer(group)
            partitions = consumer.partitions_for_topic(self.topic) or ()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            ends = await consumer.end_offsets(tps)
            lag = 0
            for tp in tps:
                committed = await consumer.committed(tp)
                # the embedded broker may report an end a record short of a commit: never < 0
                lag += max(0, ends[tp] - (committed or 0))
            return lag
        except Exception:
            return None

    async def _consumer(self, group: str) -> Any:
        from aiokafka import AIOKafkaConsumer

        if group not in self._consumers:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
            )
            try:
                await consumer.start()
                await consumer.topics()
            except Exception:
                await consumer.stop()
                raise
            self._consumers[group] = consumer
        return self._consumers[group]

    async def close(self) -> None:
        for consumer in self._consumers.values():
            await consumer.stop()
        self._consumers.clear()


async def group_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Once: records of ``topic`` not yet committed by ``group`` (see :class:`GroupLag`)."""
    lag = GroupLag(bootstrap, topic)
    try:
        return await lag(group)
    finally:
        await lag.close()


async def topic_records(bootstrap: str) -> dict[str, int]:
    """Records per topic (end - beginning offsets, every partition), from the broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        counts: dict[str, int] = {}
        for topic in sorted(await consumer.topics()):
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not tps:
                continue
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            counts[topic] = sum(end[tp] - begin[tp] for tp in tps)
        return counts
    finally:
        await consumer.stop()


# -- figures and display -------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50 and p99 of ``samples`` (seconds) in milliseconds."""
    if len(samples) < 2:
        return {"p50_ms": None, "p99_ms": None, "samples": len(samples)}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "samples": len(samples)}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(
    report: dict[str, Any], out: Path, plot_path: Path | None, plot: Callable[[Path], None]
) -> None:
    """Write ``report`` as JSON to ``out``, then the plot (matplotlib, the docs extra)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")
    if plot_path is None:
        return
    try:
        plot(plot_path)
        print(f"written {plot_path}")
    except ImportError:
        print("no plot: matplotlib is in the docs extra (pip install -e '.[docs]')")


def progress() -> Any:
    """A rich progress display (bars while a run goes on; plain lines when not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )


def workdir(prefix: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def cleanup(work: Path, failed: bool) -> None:
    if failed or os.environ.get("BENCH_KEEP"):
        print(f"process logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- a backlog run: N orders through one form of deployment, measured from outside ---------


@dataclass(frozen=True)
class Form:
    """How the processes under test are laid out.

    ``sinks``: ``off`` (workers only, views not materialised), ``worker`` (each worker runs
    the sinks, the local stack's default) or ``split`` (workers without sinks and
    ``sink_processes`` ``cartloom sink`` processes).
    """

    workers: int = 1
    sinks: str = "off"
    sink_processes: int = 0
    #: split: each sink process is two, ``cartloom sink --store dynamodb`` and ``--store redis``
    per_store: bool = False

    @property
    def label(self) -> str:
        if self.sinks == "split" and self.per_store:
            return (
                f"{self.workers} worker(s) + {self.sink_processes} sink process(es)"
                " per store (--store dynamodb, --store redis)"
            )
        if self.sinks == "split":
            return f"{self.workers} worker(s) + {self.sink_processes} sink process(es)"
        where = "in the worker" if self.sinks == "worker" else "off"
        return f"{self.workers} worker(s), sinks {where}"

    @property
    def stores(self) -> bool:
        return self.sinks != "off"


def _resolved_at(view: dict[str, Any]) -> float | None:
    for entry in reversed(view["history"]):
        if entry["status"] in FINAL:
            return datetime.fromisoformat(entry["at"]).timestamp()
    return None


def _per_order(cpu: dict[str, float], orders: int) -> dict[str, float]:
    return {name: round(seconds / orders * 1e6, 1) for name, seconds in cpu.items()}


async def backlog_run(
    stack: Stack,
    form: Form,
    orders: int,
    limit: float = 1800.0,
    sample_every: int = 50,
    display: Any = None,
) -> dict[str, Any]:
    """Start ``form``'s processes, wait until they are ready and quiet, publish ``orders``.

    The orders go out at once (confluent-kafka, defaults) to processes that are ready
    and idle, so their start-up is not counted; from the first order published:

    - resolved: every order reserved or rejected in the ``order_by_id`` changelog (read
      by this bench), the time from the views' own timestamps;
    - stored (sinks on): DynamoDB and Redis hold every order in its final state. Every
      ``sample_every``-th order is read each second (progress). Once the orders are
      resolved, the store's sink consumer group is asked twice a second for its committed
      offsets of the ``order_by_id`` changelog (the broker's answer, from outside): a sink
      commits a batch only after its store took every change of it, so with nothing left
      uncommitted the store holds the final version of every order. That moment is the
      time, and the CPU is read then. Then every order is read from the store (not timed)
      to check it; any order not found final there is read again each second until it is,
      and then that later moment is the time (``"checked"`` in the result says which);
    - CPU of every process (workers, sinks, broker, redis-server, the DynamoDB server, this bench)
      from ``/proc``, at each of those two moments.
    """
    from cartloom.sinks.materialiser import sink_group_id

    on_hand = 10 * orders  # every order can be reserved
    publish(stack.bootstrap, "inventory", stock(on_hand))
    stack.start(form)
    await stack.ready()
    meter = stack.meter()
    under_test = [proc.name for proc in stack.procs]
    idle = await wait_quiet(meter, under_test)
    tail = ChangelogTail(stack.bootstrap, "cartloom-order_by_id-changelog")
    await tail.start()
    sink_lag = GroupLag(stack.bootstrap, tail.topic)
    ids = [f"o-{n}" for n in range(orders)]
    sample = ids[::sample_every]
    pending = {store: list(sample) for store in ("dynamodb", "redis")} if form.stores else {}
    sweeping: dict[str, bool] = dict.fromkeys(pending, False)
    checked: dict[str, dict[str, int]] = {}
    done_at: dict[str, float] = {}
    cpu_at: dict[str, dict[str, float]] = {}
    tasks: dict[str, Any] = {}
    if display is not None:
        tasks["published"] = display.add_task("  published", total=orders)
        tasks["resolved"] = display.add_task("  resolved (changelog)", total=orders)
        for store in pending:
            tasks[store] = display.add_task(
                f"  final in {store} (1 in {sample_every})", total=len(sample)
            )

    def advance(task: str, count: int) -> None:
        if display is not None:
            display.advance(tasks[task], count)

    timed_out = False
    try:
        async with StoreProbe(stack.settings()) as probe:
            cpu0 = meter.read()
            wall0, mono0 = time.time(), time.monotonic()
            publish(
                stack.bootstrap, "orders", backlog("o", orders), lambda n: advance("published", n)
            )
            published_s = time.monotonic() - mono0
            last_store_check = 0.0
            while True:
                stack.check_alive()
                await asyncio.sleep(0.5)
                now = time.monotonic()
                if "resolved" not in done_at:
                    await tail.poll()
                    count = sum(1 for k in tail.resolved if k.startswith(b"o-"))
                    if display is not None:
                        display.update(tasks["resolved"], completed=count)
                    if count >= orders:
                        done_at["resolved"], cpu_at["resolved"] = time.monotonic(), meter.read()
                if "resolved" in done_at:
                    for store, waiting in pending.items():
                        if store in done_at or sweeping[store]:
                            continue
                        group = sink_group_id(stack.settings().app_id, store)
                        if await sink_lag(group) != 0:
                            continue
                        committed_at, committed_cpu = time.monotonic(), meter.read()
                        seen = await (probe.dynamodb if store == "dynamodb" else probe.redis)(ids)
                        missing = [i for i in ids if seen.get(i, ("?",))[0] not in FINAL]
                        checked[store] = {"orders": len(ids), "not_final": len(missing)}
                        advance(store, len(sample) - len(waiting))
                        if missing:  # read them again each second below, until final
                            sweeping[store], pending[store] = True, missing
                        else:
                            done_at[store], cpu_at[store] = committed_at, committed_cpu
                if now - last_store_check >= 1.0:
                    last_store_check = now
                    for store, waiting in pending.items():
                        if store in done_at:
                            continue
                        chunk = waiting[: 2000 if sweeping[store] else len(waiting)]
                        read = probe.dynamodb if store == "dynamodb" else probe.redis
                        seen = await read(chunk)
                        final = {i for i, (status, _) in seen.items() if status in FINAL}
                        if not sweeping[store]:
                            advance(store, len(final))
                        pending[store] = waiting[len(chunk) :] + [
                            i for i in chunk if i not in final
                        ]
                        if pending[store] and not sweeping[store]:
                            continue
                        if not pending[store] and sweeping[store]:
                            done_at[store], cpu_at[store] = time.monotonic(), meter.read()
                if all(key in done_at for key in ("resolved", *pending)):
                    break
                if now - mono0 > limit:
                    timed_out = True
                    break
            await tail.poll()
    finally:
        await sink_lag.close()
        await tail.stop()
    views = tail.views(b"o-")
    statuses = [v["status"] for v in views.values()]
    resolved_times = [t for t in (_resolved_at(v) for v in views.values()) if t is not None]
    result: dict[str, Any] = {
        "form": form.label,
        "workers": form.workers,
        "sinks": form.sinks,
        "sink_processes": form.sink_processes,
        "sink_process_per_store": form.per_store,
        "orders": orders,
        "publish_seconds": round(published_s, 3),
        "idle_cores_before": round(idle, 3),
        "timed_out": timed_out,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "peak_rss_mib": {p.name: round(peak_rss_mib(p.pid)) for p in stack.procs},
        "store_reads": dict(probe.calls),
        "checked": checked,
    }
    try:
        records = await topic_records(stack.bootstrap)
        result["kafka_records"] = records
        result["kafka_records_per_order"] = round(sum(records.values()) / orders, 2)
    except Exception as exc:  # a figure for the model, not worth failing the run over
        result["kafka_records"] = f"not read: {exc!r}"
    if "resolved" in done_at and resolved_times:
        seconds = max(resolved_times) - wall0
        cpu = CpuMeter.used(cpu0, cpu_at["resolved"])
        result["resolved"] = {
            "seconds": round(seconds, 3),
            "orders_per_s": round(orders / seconds, 1),
            "cpu_seconds": cpu,
            "cpu_us_per_order": _per_order(cpu, orders),
        }
    if form.stores and all(store in done_at for store in pending):
        last = max(pending, key=lambda store: done_at[store])
        seconds = done_at[last] - mono0
        cpu = CpuMeter.used(cpu0, cpu_at[last])
        result["stored"] = {
            "seconds": round(seconds, 3),
            "orders_per_s": round(orders / seconds, 1),
            "seconds_per_store": {s: round(done_at[s] - mono0, 3) for s in pending},
            # when each store was done: a store's sink process measured until its own end
            "cpu_us_per_order_when_each_store_was_done": {
                s: _per_order(CpuMeter.used(cpu0, cpu_at[s]), orders) for s in pending
            },
            "cpu_seconds": cpu,
            "cpu_us_per_order": _per_order(cpu, orders),
        }
    return result


# -- the paced load generator (its own process) --------------------------------------------


def loadgen(argv: list[str]) -> None:
    """Publish ``--rate`` orders/s for ``--seconds`` with confluent-kafka at its defaults.

    Each order's ``created_at`` is the moment it is handed to the producer. Prints
    ``sent N`` twice a second, then one JSON line with what was achieved.
    """
    from confluent_kafka import Producer

    parser = argparse.ArgumentParser(prog="benchlib.py loadgen")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--prefix", default="lag")
    args = parser.parse_args(argv)
    producer = Producer({"bootstrap.servers": args.bootstrap})
    rnd = random.Random(args.prefix)
    total = int(args.rate * args.seconds)
    sent, started = 0, time.monotonic()
    next_report = started + 0.5
    while sent < total:
        now = time.monotonic()
        due = min(total, int((now - started) * args.rate) + 1)
        while sent < due:
            order_id = f"{args.prefix}-{sent}"
            value = orjson.dumps(order(order_id, rnd))
            try:
                producer.produce(args.topic, value, order_id.encode())
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        if now >= next_report:
            print(f"sent {sent}", flush=True)
            next_report += 0.5
        pause = started + (sent + 1) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, 0.01))
    publishing = time.monotonic() - started
    left = producer.flush(60)
    print(f"sent {sent}", flush=True)
    print(
        orjson.dumps(
            {
                "sent": sent,
                "seconds": round(publishing, 3),
                "achieved_per_s": round(sent / publishing, 1),
                "undelivered": left,
            }
        ).decode(),
        flush=True,
    )
    sys.stdin.readline()  # stay until the bench has read this process's CPU from /proc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "loadgen":
        loadgen(sys.argv[2:])
    else:
        raise SystemExit("usage: python bench/benchlib.py loadgen --bootstrap HOST:PORT ...")
