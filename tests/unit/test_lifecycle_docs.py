"""The state machine drawn in docs/orders.md is the one in the code, edge for edge."""

from __future__ import annotations

import re
from pathlib import Path

from cartloom.domain.lifecycle import TERMINAL, TRANSITIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "orders.md"


def diagram_edges() -> tuple[set[tuple[str, str, str]], set[str]]:
    text = DOC.read_text()
    block = text.split("```mermaid\nstateDiagram-v2\n", 1)[1].split("```", 1)[0]
    edges = set()
    finals = set()
    for line in block.splitlines():
        match = re.fullmatch(r"\s*(\S+) --> (\S+?)(?:: (\S+))?\s*", line)
        assert match, f"unexpected diagram line {line!r}"
        source, target, trigger = match.groups()
        if source == "[*]":
            continue
        if target == "[*]":
            finals.add(source)
            continue
        edges.add((source, trigger, target))
    return edges, finals


def test_diagram_matches_the_transition_table() -> None:
    edges, finals = diagram_edges()
    expected = {(src.value, trig.value, dst.value) for (src, trig), dst in TRANSITIONS.items()}
    assert edges == expected
    assert finals == {status.value for status in TERMINAL}
