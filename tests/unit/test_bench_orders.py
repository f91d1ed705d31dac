"""bench/orders.py is not run by the tests (too heavy); this checks it loads and reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "orders.py"


def load() -> ModuleType:
    # Run as a script, bench/orders.py finds its shared module (bench/benchlib.py) beside it.
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_orders", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_parses_its_arguments() -> None:
    bench = load()
    args = bench.parse_args(["--orders", "500", "--only", "naive", "--only", "cartloom"])
    assert args.orders == 500
    assert args.only == ["naive", "cartloom"]
    assert args.out.name == "orders.json"


def test_bench_report_has_rates_ratios_and_percentiles() -> None:
    bench = load()
    latency = bench.percentiles([0.001 * n for n in range(1, 101)])
    assert 50 <= latency["p50_ms"] <= 51 and 99 <= latency["p99_ms"] <= 100
    results = {
        name: {"events_per_s": rate, "latency": latency, "peak_rss_mib": 100.0}
        for name, rate in (("bare", 12_000.0), ("naive", 4_000.0), ("cartloom", 6_000.0))
    }
    summary = bench.report(results, bench.parse_args([]))
    assert summary["ratios"]["cartloom_vs_naive"] == 1.5
    assert summary["ratios"]["cartloom_vs_bare"] == 0.5
    assert summary["settings"]["orders"] == 40_000
    assert summary["settings"]["rounds"] == 3


def test_each_contender_reports_its_median_round_and_keeps_every_round() -> None:
    bench = load()
    rounds = [{"events_per_s": rate, "seconds": rate / 10} for rate in (7_000.0, 5_000.0, 9_000.0)]
    median = bench.median_round(rounds)
    assert median["events_per_s"] == 7_000.0
    assert median["seconds"] == 700.0  # the whole median round, not a mix of rounds
    assert median["rounds_events_per_s"] == [7_000, 5_000, 9_000]
