"""Nothing in the repository cites a file outside it: a fresh clone must hold every source.

Code comments and docs once cited notes kept beside the repository (``FACTS.md``,
``../shared/...``); the facts now live in docs/facts.md. This keeps it that way: no
mention of those outside files, and no relative Markdown link that leaves the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {
    ".git",
    ".venv",
    ".hypothesis",
    ".cartloom",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".import_linter_cache",
    "__pycache__",
    "node_modules",
}
TEXT_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".sh", ".cfg", ".ini", ".env"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".env.example", ".gitignore", ".dockerignore"}
#: Notes that lived outside the repository; cited by name, they would be dangling in a clone.
OUTSIDE = re.compile(r"\b(FACTS|DESIGN|STYLE)\.md\b|\.\./shared\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]+)[^)]*\)")
THIS_FILE = Path(__file__).resolve()


def text_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES):
            found.append(path)
    return found


def test_no_file_cites_a_note_outside_the_repository() -> None:
    hits = []
    for path in text_files():
        if path == THIS_FILE:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite the in-repo doc (e.g. docs/facts.md) instead:\n" + "\n".join(hits)


def test_no_markdown_link_leaves_the_repository() -> None:
    escaping = []
    for path in text_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text(errors="replace")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/"):
                continue  # a URL (https:, mailto:) or a site-absolute path
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(ROOT):
                escaping.append(f"{path.relative_to(ROOT)}: {target}")
    assert not escaping, "links outside the repository:\n" + "\n".join(escaping)
