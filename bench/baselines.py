"""The two yardsticks of bench/orders.py, as a tiny Faust app run as its own worker process.

BENCH_MODE=bare: an agent that only decodes each event (Faust's per-event ceiling).
BENCH_MODE=naive: an agent that decodes each event and writes one table key per event
(one changelog write per event), the way a first Faust agent is usually written.

It writes its progress to BENCH_STATS (JSON): the worker-clock time of the first and the
last backlog event, and the latencies (now - broker timestamp) of the paced events.
Usage: python bench/baselines.py worker  (settings from the BENCH_* environment).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

MODE = os.environ.get("BENCH_MODE", "bare")
TOPIC = os.environ["BENCH_TOPIC"]
BACKLOG = int(os.environ["BENCH_BACKLOG"])
STATS = Path(os.environ["BENCH_STATS"])

app = faust.App(
    os.environ["BENCH_APP_ID"],
    env={},
    broker=os.environ["BENCH_BROKER_URL"],
    store="memory://",
    datadir=os.environ["BENCH_DATA_DIR"],
    processing_guarantee="at_least_once",
    topic_partitions=8,
    topic_replication_factor=1,
    broker_session_timeout=6,
    broker_rebalance_timeout=6,
    broker_heartbeat_interval=1,
    web_enabled=False,
    key_serializer="raw",
    value_serializer="json",
)
topic = app.topic(TOPIC, key_serializer="raw", value_serializer="raw", partitions=8)
table = app.Table("naive_orders", default=None, partitions=8, key_type=bytes)
stats: dict[str, Any] = {"backlog_seen": 0, "first": None, "last": None, "latencies": []}


@app.agent(topic)
async def consume(stream: Any) -> None:
    async for event in stream.events():
        document = orjson.loads(event.value)
        if MODE == "naive":
            table[event.key] = {"order_id": document["order_id"], "status": "received", "v": 1}
        now = time.time()
        if event.key.startswith(b"paced-"):
            stats["latencies"].append(now - event.message.timestamp)
            continue
        stats["backlog_seen"] += 1
        if stats["first"] is None:
            stats["first"] = now
        if stats["backlog_seen"] == BACKLOG:
            stats["last"] = now


def save_stats() -> None:
    STATS.write_bytes(orjson.dumps(stats))


@app.timer(interval=0.5)
async def write_stats() -> None:
    save_stats()


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *sys.argv[1:], "--loglevel", "warn"]
    app.main()
