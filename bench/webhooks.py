"""Webhook receiver benchmark: bare aiohttp + HMAC vs CartLoom's receiver, side by side.

    python bench/webhooks.py [--seconds 10] [--connections 64] [--out bench/results/webhooks.json]

Starts a private Tansu broker, then measures with ``wrk`` (one thread, HTTP/1.1 keep-alive,
pre-signed Shopify deliveries) against, taking turns for ``--rounds`` rounds (each
server reports its median round; every round's figure is kept):

1. ``bare``: an aiohttp server that reads the body, checks the HMAC and answers 200;
2. ``ingress``: ``cartloom shopify ingress``, CartLoom's receiver in a process of its own
   (:mod:`cartloom.shopify.ingress`): HMAC, header and JSON checks, resource key, then 200
   only once the broker acknowledged the record (acks=all, batched by linger), with
   deliveries for distinct resources (distinct keys, spread over the partitions);
3. ``ingress_hot`` (unless ``--no-hot``): the same ingress with every delivery for one
   resource (one product, as in a flash sale: one key, one partition), measured right
   after ``ingress`` in each round; the report gives its rate over ``ingress``'s
   (``hot_vs_distinct``, target 0.7);
4. ``worker`` (unless ``--no-worker``): a full ``cartloom worker`` process answering on
   ``/webhooks/shopify`` while its agents consume what it enqueues.

Every contender's answers other than 200 are counted over all its rounds (``wrk``'s
non-2xx count, with a 5 s timeout as Shopify's), and for CartLoom's servers the 503s from
the server's own counter (``cartloom_shopify_webhooks_received_total{outcome="unavailable"}``).

Each server runs in its own process; the machine's cores are shared by wrk, the server
and the broker, as on the 2-core box the figures were taken on. After each receiver run
the records in ``shopify.webhooks`` are counted: every 200 must be there. ``wrk`` keeps
``--connections`` requests in flight, so the latency is mostly the queue it builds: 64
connections keep the server busy without a queue longer than a few milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from cartloom.core.settings import Settings
from cartloom.core.topology import TopicSpec, load_topology
from cartloom.ops.kafka_admin import apply_topics
from cartloom.shopify.signatures import SignatureVerifier
from cartloom.stream.kafka_clients import KafkaConnection
from devstack.processes import free_port, spawn, stop
from devstack.shopify_store import WebhookEvent
from devstack.stack import _broker_ready, broker_argv
from devstack.webhook_deliveries import signed

SECRET = "bench-secret"
SHOP = "bench.myshopify.com"
ROOT = Path(__file__).resolve().parent.parent
LINGER_MS = Settings.model_fields["shopify_producer_linger_ms"].default
#: wrk's wait for an answer: Shopify's (an answer later than this is a failed delivery).
WRK_TIMEOUT = "5s"
#: The ingress on one hot resource over the ingress on distinct ones, at least (issue #16).
HOT_TARGET = 0.7


# -- servers (run as subprocesses of this script) ------------------------------------------


def serve_bare(port: int) -> None:
    verifier = SignatureVerifier([SecretStr(SECRET)])

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        if not verifier.verify(body, request.headers.get("X-Shopify-Hmac-Sha256")):
            return web.json_response({"error": "bad hmac"}, status=401)
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/webhooks/shopify", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wrk_script(count: int, path: Path, hot: bool = False) -> None:
    """A wrk Lua script cycling through ``count`` distinct signed product deliveries.

    Each delivery is of another product, or with ``hot`` all of one product (one Kafka key):
    distinct webhook ids and ``updated_at``, bodies of the same size either way.
    """
    lines = ["local reqs = {}"]
    for number in range(count):
        product = 0 if hot else number
        payload = {
            "id": 7_000_000 + product,
            "title": f"Bench product {number}",
            "status": "active",
            "updated_at": f"2026-11-25T{10 + number // 3600 % 10}:{number // 60 % 60:02d}:"
            f"{number % 60:02d}+00:00",
            "variants": [{"id": 8_000_000 + product, "sku": f"B-{product}", "price": "9.90"}],
        }
        event = WebhookEvent("products/update", payload, f"ev-{number}", "2026-11-25T10:00:00Z")
        delivery = signed(event, SHOP, SECRET, webhook_id=f"wh-{number}")
        headers = ", ".join(
            f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in delivery.headers.items()
        )
        body = json.dumps(delivery.body.decode())
        lines.append(f"reqs[{number + 1}] = {{ {headers} }}; reqs[{number + 1}].__body = {body}")
    lines.append(
        """
local formatted = {}
init = function(args)
  for i, h in ipairs(reqs) do
    local body = h.__body
    h.__body = nil
    formatted[i] = wrk.format("POST", "/webhooks/shopify", h, body)
  end
end
local n = 0
request = function()
  n = n + 1
  return formatted[(n % #formatted) + 1]
end
"""
    )
    path.write_text("\n".join(lines))


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    """Run wrk and parse requests/s, latency percentiles and non-2xx answers."""
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={WRK_TIMEOUT}"),
            *("--latency", "-s", str(script), url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    percentiles = {
        p: _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", out, re.MULTILINE)
    }
    return {
        "requests_per_second": round(rps),
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "latency_ms": {f"p{p}": v for p, v in percentiles.items()},
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return round(float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


async def wait_http(port: int, path: str = "/healthz") -> None:
    """Until the server answers ``path`` below 500 (a worker: ``/readyz`` 200)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port}")


async def topic_count(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic("shopify.webhooks") or set()
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic("shopify.webhooks") or set()
        tps = [TopicPartition("shopify.webhooks", p) for p in partitions]
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        await consumer.stop()


async def unavailable_answers(port: int) -> int:
    """The deliveries a CartLoom server answered 503 so far, from its own counter."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cartloom_shopify_webhooks_received_total{")
            and 'outcome="unavailable"' in line
        )
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (from /proc), to compare cost per request under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )


async def measure(
    name: str, argv: list[str], port: int, args: argparse.Namespace, script: Path, **kw: Any
) -> dict[str, Any]:
    bootstrap: str | None = kw.pop("bootstrap", None)
    process = start(argv, kw.pop("env", None))
    try:
        await wait_http(port, kw.pop("ready_path", "/healthz"))
        # warm up (connections, producer metadata, first batches)
        run_wrk(f"http://127.0.0.1:{port}/webhooks/shopify", script, 2, args.connections)
        after_warmup = await topic_count(bootstrap) if bootstrap else 0
        unavailable_before = await unavailable_answers(port) if bootstrap else 0
        cpu_before = cpu_seconds(process.pid)
        result = run_wrk(
            f"http://127.0.0.1:{port}/webhooks/shopify", script, args.seconds, args.connections
        )
        used = cpu_seconds(process.pid) - cpu_before
        result["server_cpu_us_per_request"] = round(used / max(1, result["requests"]) * 1e6, 1)
        if bootstrap:
            result["answered_503"] = await unavailable_answers(port) - unavailable_before
    finally:
        process.terminate()
        process.wait(timeout=30)
    if bootstrap:
        result["records_enqueued"] = await topic_count(bootstrap) - after_warmup
        result["every_200_enqueued"] = (
            result["records_enqueued"] >= result["requests"] - result["non_2xx"]
        )
    print(f"{name:>8}: {result}", flush=True)
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="cartloom-bench-"))
    script, hot_script = workdir / "deliveries.lua", workdir / "hot-deliveries.lua"
    wrk_script(args.deliveries, script)
    wrk_script(args.deliveries, hot_script, hot=True)
    broker_port = free_port()
    broker = spawn("bench-broker", broker_argv(broker_port), workdir, broker_port)
    bootstrap = f"127.0.0.1:{broker_port}"
    results: dict[str, Any] = {}
    try:
        for _ in range(100):
            try:
                if await _broker_ready(broker_port):
                    break
            except Exception:
                await asyncio.sleep(0.1)
        spec = load_topology().topics
        partitions = {n: s.partitions for n, s in spec.items()}
        if args.webhook_partitions:
            partitions["shopify.webhooks"] = args.webhook_partitions
        await apply_topics(
            KafkaConnection.plaintext(bootstrap),
            [TopicSpec(n, partitions[n], 1, s.cleanup_policy, None) for n, s in spec.items()],
        )
        me = [sys.executable, __file__]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
        env.update(
            CARTLOOM_BROKER_URL=f"kafka://{bootstrap}",
            CARTLOOM_SHOPIFY_WEBHOOK_SECRET=SECRET,
            CARTLOOM_LOG_LEVEL="warning",
            CARTLOOM_SHOPIFY_PRODUCER_LINGER_MS=str(args.linger_ms),
        )
        cartloom = [sys.executable, "-m", "cartloom", "--env-file", "/nonexistent"]
        worker_env = {
            **env,
            "CARTLOOM_SINKS_ENABLED": "false",
            "CARTLOOM_DATA_DIR": str(workdir / "worker-data"),
            "CARTLOOM_BROKER_SESSION_TIMEOUT": "6",
            "CARTLOOM_BROKER_REBALANCE_TIMEOUT": "6",
            "CARTLOOM_BROKER_HEARTBEAT_INTERVAL": "1",
        }
        rounds: dict[str, list[dict[str, Any]]] = {}
        for turn in range(1, args.rounds + 1):
            print(f"round {turn}/{args.rounds}", flush=True)
            # (name, argv, environment, the setting that takes the port, readiness path, script)
            ingress = [*cartloom, "shopify", "ingress"]
            servers = [
                ("bare", [*me, "serve-bare"], None, None, "/healthz", script),
                ("ingress", ingress, env, "WEBHOOK_INGRESS", "/readyz", script),
            ]
            if not args.no_hot:
                servers.append(
                    ("ingress_hot", ingress, env, "WEBHOOK_INGRESS", "/readyz", hot_script)
                )
            if not args.no_worker:
                servers.append(
                    ("worker", [*cartloom, "worker"], worker_env, "WEB", "/readyz", script)
                )
            for name, argv, server_env, port_setting, ready_path, deliveries in servers:
                port = free_port()
                kw: dict[str, Any] = {"ready_path": ready_path}
                if server_env is None:
                    argv = [*argv, str(port)]
                else:
                    kw.update(
                        bootstrap=bootstrap,
                        env={**server_env, f"CARTLOOM_{port_setting}_PORT": str(port)},
                    )
                result = await measure(name, argv, port, args, deliveries, **kw)
                rounds.setdefault(name, []).append(result)
        results.update({name: median_round(each) for name, each in rounds.items()})
        for name, each in rounds.items():
            results[name]["non_200_all_rounds"] = sum(
                r["non_2xx"] + r["socket_errors"] for r in each
            )
            if "answered_503" in each[0]:
                results[name]["answered_503_all_rounds"] = sum(r["answered_503"] for r in each)
        if "ingress_hot" in rounds:
            results["hot_vs_distinct"] = hot_vs_distinct(rounds["ingress"], rounds["ingress_hot"])
    finally:
        stop(broker)
    return results


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median webhooks/s, and every round's webhooks/s beside it."""
    ordered = sorted(results, key=lambda result: result["requests_per_second"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "rounds_requests_per_second": [result["requests_per_second"] for result in results],
    }


def hot_vs_distinct(distinct: list[dict[str, Any]], hot: list[dict[str, Any]]) -> dict[str, Any]:
    """The ingress's rate on one hot resource over its rate on distinct ones, and the verdict."""
    median = (
        median_round(hot)["requests_per_second"] / median_round(distinct)["requests_per_second"]
    )
    answered_503 = sum(r.get("answered_503", 0) for r in hot)
    failed = sum(r["non_2xx"] + r["socket_errors"] for r in hot)
    return {
        "ratio": round(median, 3),
        "rounds_ratio": [
            round(h["requests_per_second"] / d["requests_per_second"], 3)
            for d, h in zip(distinct, hot, strict=True)
        ],
        "target": HOT_TARGET,
        "hot_answered_503": answered_503,
        "hot_non_200": failed,
        "met": median >= HOT_TARGET and answered_503 == 0 and failed == 0,
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    hot = results.pop("hot_vs_distinct", None)
    return {
        "what": "verified webhooks/s and latency, wrk -t1, keep-alive, signed deliveries "
        "(ingress_hot: all for one resource, the others: distinct resources)",
        "note": "server_cpu_us_per_request is the server process's CPU per answered request: "
        "less sensitive than requests/s to other load on the machine",
        "machine": {
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_average_before": args.load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "wrk_timeout": WRK_TIMEOUT,
        "linger_ms": args.linger_ms,
        "webhook_partitions": args.webhook_partitions or "topics.yaml",
        "target": {"requests_per_second": 10_000, "p99_ms": 20},
        "results": results,
        "hot_vs_distinct": hot,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Webhooks/s per server (bars: median round, dots: each round), p99 and non-200s on
    each bar, the hot/distinct ratio in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    names = list(results)
    rates = [results[name]["requests_per_second"] for name in names]
    colours = {"bare": "#999999", "ingress": "#3b7dd8", "ingress_hot": "#1d4f91"}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(names, rates, color=[colours.get(name, "#d98c4a") for name in names])
    labels = [
        f"{rate:,}/s\np99 {results[n]['latency_ms']['p99']:.0f} ms"
        f"\n{results[n].get('non_200_all_rounds', 0):,} non-200"
        for n, rate in zip(names, rates, strict=True)
    ]
    ax.bar_label(bars, labels=labels, label_type="center", color="white", fontweight="bold")
    for index, name in enumerate(names):
        each = results[name].get("rounds_requests_per_second", [])
        ax.scatter([index] * len(each), each, color="#222222", s=9, zorder=3)
    target = summary["target"]["requests_per_second"]
    ax.axhline(target, color="#3b7dd8", linestyle="--", linewidth=1)
    ax.annotate(
        f"target {target / 1000:g}k/s, p99 < {summary['target']['p99_ms']} ms",
        (len(names) - 1, target),
        ha="center",
        va="bottom",
    )
    ax.set_ylim(
        0,
        max(
            [
                *rates,
                target,
                *(max(results[n].get("rounds_requests_per_second", [0])) for n in names),
            ]
        )
        * 1.18,
    )
    ax.set_ylabel("verified, enqueued webhooks/s")
    title = (
        f"wrk -c{summary['connections']}, median of {summary.get('rounds', 1)} rounds"
        " (dots: each round)"
    )
    hot = summary.get("hot_vs_distinct")
    if hot:
        title += (
            f"\ningress on one hot resource / on distinct ones: {hot['ratio']:.2f}"
            f" (target >= {hot['target']:g}), {hot['hot_answered_503']} answered 503"
        )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-bare":
        serve_bare(int(sys.argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--seconds", type=int, default=10)
        parser.add_argument("--connections", type=int, default=64)
        parser.add_argument("--rounds", type=int, default=3, help="turns of every server")
        parser.add_argument("--deliveries", type=int, default=20_000)
        parser.add_argument("--no-worker", action="store_true")
        parser.add_argument("--no-hot", action="store_true", help="no one-resource ingress run")
        parser.add_argument("--linger-ms", type=int, default=LINGER_MS)
        parser.add_argument("--webhook-partitions", type=int, default=0, help="0: topics.yaml")
        parser.add_argument("--out", type=Path, default=ROOT / "bench/results/webhooks.json")
        parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/webhooks.png")
        arguments = parser.parse_args()
        arguments.load_before = [round(x, 2) for x in os.getloadavg()]
        output = report(asyncio.run(main(arguments)), arguments)
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_bytes(orjson.dumps(output, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"written to {arguments.out}")
        if arguments.plot:
            plot(output, arguments.plot)
            print(f"written to {arguments.plot}")
