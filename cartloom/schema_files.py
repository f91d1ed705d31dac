"""The published JSON Schemas of the input topics as files: ``cartloom schemas write|check``.

The schemas are generated from the validators' field declarations
(:mod:`cartloom.domain.schemas`); ``docs/schemas/{topic}.schema.json`` holds the committed
copy that the docs link to, and ``tests/unit/test_contract_schemas.py`` fails while it
differs from what the code generates. Regenerate with ``cartloom schemas write``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cartloom.domain.schemas import input_schemas

#: Where a checkout keeps the committed schemas.
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def file_name(topic: str) -> str:
    """The schema file of ``topic``."""
    return f"{topic}.schema.json"


def schema_texts() -> dict[str, str]:
    """File name -> the schema as committed (2-space JSON, ASCII, final newline)."""
    return {
        file_name(topic): json.dumps(schema, indent=2, ensure_ascii=True) + "\n"
        for topic, schema in input_schemas().items()
    }


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created if needed); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """The schema files in ``directory`` that are missing or differ from the code's."""
    stale = []
    for name, text in schema_texts().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale
