"""docs/architecture.md's dataflow diagram is the one topology_diagram draws from topics.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cartloom.core.topology import TopicSpec, Topology, TopologyError, load_topology
from cartloom.ops import topology_diagram

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def topology() -> Topology:
    return load_topology(ROOT / "topics.yaml")


def with_topic(topology: Topology, name: str) -> Topology:
    extra = TopicSpec(name, 8, 3, "delete", None)
    return dataclasses.replace(topology, topics={**topology.topics, name: extra})


def test_the_architecture_doc_holds_the_generated_diagram(topology: Topology) -> None:
    readme = (ROOT / "docs" / "architecture.md").read_text()
    assert topology_diagram.readme_block(readme) == topology_diagram.mermaid(topology), (
        "docs/architecture.md's dataflow diagram is out of date: "
        "run `python -m cartloom.ops.topology_diagram --write docs/architecture.md`"
    )


def test_every_topic_and_table_but_the_dead_letter_topics_is_drawn(topology: Topology) -> None:
    diagram = topology_diagram.mermaid(topology)
    for name in [*topology.topics, *topology.tables]:
        assert (f'"{name}"' in diagram) is not name.endswith(".dlq"), name
    for table in topology.tables.values():
        if table.entity:  # materialised: its changelog feeds the materialisers
            changelog = f"cl_{table.name}"
            assert f"tb_{table.name} --> {changelog}" in diagram
            assert f"{changelog} --> n_materialisers" in diagram


@pytest.mark.parametrize(
    ("node", "flow", "undeclared"),
    [
        ("reconcile", ("shopify", "orders order.event"), "order.event"),
        ("web_views", ("table:order_by_sku", ""), "order_by_sku"),
        ("writeback", ("changelog:ledger_by_line", "shopify_stock"), "ledger_by_line"),
    ],
)
def test_a_name_topics_yaml_does_not_declare_raises(
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
    node: str,
    flow: tuple[str, str],
    undeclared: str,
) -> None:
    monkeypatch.setitem(topology_diagram.FLOWS, node, flow)
    with pytest.raises(TopologyError, match=undeclared):
        topology_diagram.mermaid(topology)


def test_a_declared_topic_nobody_reads_or_writes_raises(topology: Topology) -> None:
    with pytest.raises(TopologyError, match="not in the diagram: returns"):
        topology_diagram.mermaid(with_topic(topology, "returns"))
    topology_diagram.mermaid(with_topic(topology, "returns.dlq"))  # dead letters are not drawn


def test_write_replaces_only_the_marked_block() -> None:
    readme = f"# T\n\n{topology_diagram.MARKER}\n```mermaid\nold\n```\n\n```mermaid\nkept\n```\n"
    updated = topology_diagram.with_diagram(readme, "flowchart TB\n  a --> b\n")
    assert topology_diagram.readme_block(updated) == "flowchart TB\n  a --> b\n"
    assert updated.endswith("```mermaid\nkept\n```\n")
    with pytest.raises(ValueError, match="mermaid"):
        topology_diagram.readme_block(f"{topology_diagram.MARKER}\n\ntext\n")
