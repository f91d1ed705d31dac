"""The README's file map and docs/architecture.md's "Where things live" match the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cartloom"


def table_under(doc: Path, heading: str) -> str:
    text = doc.read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return section.split("\n## ", 1)[0]


#: Where a path named from the repository's root starts (others in a row are relative to
#: the row's folder, or routes such as ``/healthz``).
ROOTS = ("cartloom/", "devstack/", "tests/", "scripts/", "bench/", "deploy/", "docs/")


def named_paths(table: str) -> set[str]:
    """Paths in backticks named from the repository's root."""
    return {name for name in re.findall(r"`([^`\s]+)`", table) if name.startswith(ROOTS)}


def subpackages() -> set[str]:
    return {
        f"{path.parent.relative_to(ROOT)}/"
        for path in PACKAGE.rglob("__init__.py")
        if path.parent != PACKAGE and "__pycache__" not in path.parts
    }


def test_every_path_the_readme_names_exists() -> None:
    table = table_under(ROOT / "README.md", "Where things live")
    missing = [name for name in named_paths(table) if not (ROOT / name).exists()]
    assert not missing, f"README.md names paths that are not in the tree: {missing}"


def test_the_readme_names_every_subpackage() -> None:
    table = table_under(ROOT / "README.md", "Where things live")
    unnamed = sorted(package for package in subpackages() if f"`{package}`" not in table)
    assert not unnamed, f"README.md's file map leaves out {unnamed}"


def test_architecture_names_every_module_of_the_package() -> None:
    table = table_under(ROOT / "docs" / "architecture.md", "Where things live")
    rows = {
        row.split("|")[1].strip().strip("`"): row
        for row in table.splitlines()
        if row.startswith("| `")
    }
    unnamed = []
    for module in sorted(PACKAGE.rglob("*.py")):
        if module.name == "__init__.py" or "__pycache__" in module.parts:
            continue
        folder = f"{module.parent.relative_to(ROOT)}/"
        row = rows.get(folder, "")
        if f"`{module.name}`" not in row and f"`{module.relative_to(ROOT)}`" not in table:
            unnamed.append(str(module.relative_to(ROOT)))
    assert not unnamed, f"docs/architecture.md's file map leaves out {unnamed}"
    paths = named_paths(table)
    missing = [name for name in paths if not (ROOT / name).exists()]
    assert not missing, f"docs/architecture.md names paths not in the tree: {missing}"
