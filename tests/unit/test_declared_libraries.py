"""Declared libraries and docs/libraries.md agree, and the package imports only what it declares.

Every distribution in ``pyproject.toml`` (runtime and every extra) has a row in
docs/libraries.md saying what it is for; every third-party module that ``cartloom/``
imports comes from a distribution it declares (``mode`` once came only through Faust).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LIBRARIES_DOC = ROOT / "docs" / "libraries.md"
#: Imported but rightly not declared: the reason is in docs/libraries.md.
PROVIDED_BY = {
    "botocore": "aiobotocore, which pins botocore's exact range",
    "werkzeug": "moto[server], whose server runs on it (devstack's fallback in moto's image)",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert match, requirement
    return normalise(match.group())


def declared(groups: tuple[str, ...] | None = None) -> set[str]:
    project = PYPROJECT["project"]
    lists = [project["dependencies"]]
    extras = project["optional-dependencies"]
    lists += [extras[g] for g in extras if groups is None or g in groups]
    names = {requirement_name(r) for reqs in lists for r in reqs}
    return names - {normalise(project["name"])}


def documented() -> set[str]:
    names = set()
    for line in LIBRARIES_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[0] in {"library", ""} or set(cells[0]) <= {"-", " "}:
            continue
        for part in cells[0].split(","):
            if match := re.match(r"[A-Za-z0-9._-]+", part.strip()):
                names.add(normalise(match.group()))
    return names


def test_every_declared_library_has_a_row_in_docs_libraries() -> None:
    missing = declared() - documented()
    assert not missing, f"add a row to docs/libraries.md for: {sorted(missing)}"


def test_the_package_imports_only_declared_libraries() -> None:
    runtime = declared(("local", "rocksdb"))  # devstack/ runs on the local extra
    providers = packages_distributions()
    undeclared = {}
    for path in [*(ROOT / "cartloom").rglob("*.py"), *(ROOT / "devstack").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module in sys.stdlib_module_names or module in ("cartloom", "devstack"):
                    continue
                if module in PROVIDED_BY:
                    continue
                dists = {normalise(d) for d in providers.get(module, [])}
                if not dists & runtime:
                    undeclared.setdefault(module, str(path.relative_to(ROOT)))
    assert not undeclared, f"declare in pyproject.toml (module: first importer): {undeclared}"
