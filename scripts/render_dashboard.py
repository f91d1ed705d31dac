"""Render panels of the Grafana dashboard from a live Prometheus into one PNG (for the docs).

Grafana is not packaged for Debian, so this draws the dashboard's own queries
(``deploy/grafana/cartloom-overview.json``) with matplotlib from Prometheus' HTTP API::

    pip install -e '.[docs]'
    python scripts/render_dashboard.py --prometheus http://127.0.0.1:PORT --minutes 15 \
        --out docs/img/dashboard.png

The Prometheus port is in ``python -m devstack status`` after
``python -m devstack up --with-prometheus``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "cartloom-overview.json"
DEFAULT_PANELS = [
    "Messages consumed per topic",
    "End-to-end delay (record produced -> processed)",
    "Consumer lag per consumer group and topic",
    "Reservation outcomes",
    "Sink writes by store and outcome",
    "Sink lag per store (groups {app_id}-sink-{store})",
    "Order transitions",
    "Dead letters by topic and reason",
    "Live queries",
]
UNITS = {"ops": "per second", "reqps": "requests/s", "s": "seconds", "short": ""}


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[Any]:
    """Prometheus' ``/api/v1/query_range`` result for ``expr``."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as answer:  # noqa: S310
        body = json.load(answer)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {body}")
    result: list[Any] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def draw_panel(ax: Any, panel: dict[str, Any], base: str, window: tuple[float, float]) -> None:
    """Plot every target of ``panel`` on ``ax``."""
    start, end = window
    step = max(5.0, (end - start) / 240)
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m")
        for series in query_range(base, expr, start, end, step):
            points = [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
            if not points or not any(v for _, v in points):
                continue  # an all-zero series (e.g. "stale: 0") only clutters the legend
            xs = [datetime.fromtimestamp(t, UTC) for t, _ in points]
            ax.plot(
                xs,
                [v for _, v in points],
                linewidth=1.4,
                label=legend(target.get("legendFormat", ""), series["metric"]) or expr[:30],
            )
    ax.set_title(panel["title"], fontsize=10, loc="left", color="#d8d9da")
    unit = UNITS.get(panel["fieldConfig"]["defaults"]["unit"], "")
    ax.set_ylabel(unit, fontsize=8, color="#9fa7b3")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    ax.tick_params(labelsize=7, colors="#9fa7b3")
    ax.grid(True, color="#2c3235", linewidth=0.6)
    ax.set_facecolor("#181b1f")
    for spine in ax.spines.values():
        spine.set_color("#2c3235")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, loc="upper left", frameon=False, labelcolor="#d8d9da", ncol=2)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", color="#9fa7b3", transform=ax.transAxes)


def render(base: str, minutes: float, out: Path, titles: list[str], note: str) -> None:
    """Draw ``titles`` (panel titles of the dashboard) for the last ``minutes`` into ``out``."""
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    missing = [t for t in titles if t not in panels]
    if missing:
        raise SystemExit(f"no such panels in {DASHBOARD.name}: {missing}")
    end = time.time()
    cols = 3
    rows = -(-len(titles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), squeeze=False)
    fig.patch.set_facecolor("#111217")
    for ax, title in zip(axes.flat, titles, strict=False):
        draw_panel(ax, panels[title], base, (end - minutes * 60, end))
    for ax in list(axes.flat)[len(titles) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"CartLoom overview (deploy/grafana), from Prometheus: {note}",
        color="#d8d9da",
        fontsize=12,
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="Base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    parser.add_argument("--panel", action="append", help="Panel title (repeat); default: nine")
    parser.add_argument("--note", default="local run", help="Text after the title")
    args = parser.parse_args()
    render(
        args.prometheus.rstrip("/"), args.minutes, args.out, args.panel or DEFAULT_PANELS, args.note
    )


if __name__ == "__main__":
    main()
