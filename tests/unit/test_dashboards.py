"""The Grafana dashboard and the Prometheus rules only name metrics that exist, by convention.

Grafana is not installable here, so the dashboard JSON is checked as data: its layout, its
datasource, and every metric its queries (and the alert and recording rules) name must be
one the worker really exports. The conventions of ``cartloom/core/metrics.py`` are checked on the
live registry: ``_total`` counters, histograms in base units, bounded label names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import cartloom.web.views  # noqa: F401 - registers Faust's sensor metrics with CartLoom's

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
METRIC_NAME = re.compile(r"\b((?:cartloom|faust)_[a-z0-9_]+)\b")
RECORDED_NAME = re.compile(r"\b(cartloom:[a-z0-9_:]+)\b")
#: Label names that would carry unbounded values (ids, SKUs, customers).
UNBOUNDED_LABELS = {"order_id", "sku", "product_id", "id", "key", "customer", "email", "shop"}
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}


def exported_names() -> set[str]:
    """Every series name the worker's registry can expose (samples or not yet)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for suffix in SUFFIXES.get(family.type, []):
            names.add(family.name + suffix)
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            found += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel["targets"]]
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                found.append((f"{path.name}: {name}", rule["expr"]))
    return found


def test_there_is_a_dashboard_and_rules() -> None:
    assert [p.name for p in DASHBOARDS] == ["cartloom-overview.json"]
    assert {p.name for p in RULE_FILES} == {"cartloom-alerts.yml", "cartloom-recording.yml"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_layout_and_datasource(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == "cartloom-overview"
    assert dashboard["templating"]["list"][0]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"])
        assert panel["fieldConfig"]["defaults"]["unit"]
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_covers_what_an_operator_asks() -> None:
    text = " ".join(p["title"].lower() for p in panels(json.loads(DASHBOARDS[0].read_text())))
    for topic in (
        "consumed",  # throughput
        "end-to-end",
        "consumer lag per consumer group",
        "sink lag",
        "reservation outcomes",
        "sink writes",
        "sink failures",
        "webhook outcomes",
        "drift",
        "dead letters",
        "ready",
    ):
        assert topic in text, topic


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: str(v)[:60])
def test_queries_name_only_exported_metrics(where: str, expr: str) -> None:
    unknown = set(METRIC_NAME.findall(expr)) - exported_names()
    assert not unknown, f"{where} names metrics no worker exports: {sorted(unknown)}"


def test_alerts_use_only_recorded_series_that_are_recorded() -> None:
    recorded = {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    used = {name for _, expr in expressions() for name in RECORDED_NAME.findall(expr)}
    assert used <= recorded, sorted(used - recorded)


def cartloom_families() -> list[Any]:
    return [f for f in REGISTRY.collect() if f.name.startswith(("cartloom_", "faust_"))]


def test_metric_conventions_hold_for_every_family() -> None:
    families = cartloom_families()
    assert len(families) > 30
    for family in families:
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
            assert not family.name.endswith("_ms"), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"


def test_no_metric_has_an_unbounded_label() -> None:
    for collector in list(REGISTRY._names_to_collectors.values()):
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & UNBOUNDED_LABELS, (collector, labels)


def test_metrics_are_declared_only_in_metrics_and_observability() -> None:
    allowed = {"metrics.py", "observability.py"}
    constructor = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\n?\s*\"")
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "cartloom").rglob("*.py")
        if path.name not in allowed and constructor.search(path.read_text())
    ]
    assert not offenders, offenders
