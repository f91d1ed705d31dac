"""``cartloom config show``: every setting, its value and where it came from; secrets masked.

A secret's value never appears: ``SecretStr`` settings (and any whose name says secret or
password) show ``****``, with their last two characters only when they are long enough
for two characters to give nothing useful away (telling rotated secrets apart). A password
inside a URL (``redis://user:password@host``) is masked too.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import SecretStr

from cartloom.core.settings import Settings, env_name

MASK = "****"
#: A secret shorter than this shows no characters at all.
REVEAL_MIN_LENGTH = 16
_URL_PASSWORD = re.compile(r"(?P<head>://[^:/@\s;,]*:)[^@/\s;,]+(?P<at>@)")
_NAMESPACED = frozenset({"app_id", "table_prefix"})


@dataclass(frozen=True)
class SettingRow:
    """One setting as ``config show`` prints it."""

    name: str  #: the environment variable
    value: str  #: masked where secret
    source: str  #: environment, env file, default, or default (from CARTLOOM_NAMESPACE)

    def as_dict(self) -> dict[str, str]:
        """The row for ``--json``."""
        return asdict(self)


def env_file_names(path: Path) -> frozenset[str]:
    """The variables ``path`` sets that the environment does not (those it will provide)."""
    if not path.exists():
        return frozenset()
    return frozenset(name for name in dotenv_values(path) if name not in os.environ)


def setting_rows(
    settings: Settings, from_env_file: frozenset[str] = frozenset()
) -> list[SettingRow]:
    """Every field of ``settings`` in declaration order, masked, with its source."""
    rows = []
    for field in Settings.model_fields:
        name = env_name(field)
        secret = _is_secret(field)
        value = shown(getattr(settings, field), secret=secret)
        rows.append(SettingRow(name, value, _source(field, name, settings, from_env_file)))
    return rows


def _source(field: str, name: str, settings: Settings, from_env_file: frozenset[str]) -> str:
    if name in os.environ:
        return "env file" if name in from_env_file else "environment"
    if field in _NAMESPACED and settings.namespace:
        return f"default (from {env_name('namespace')})"
    return "default"


def _is_secret(field: str) -> bool:
    annotation = str(Settings.model_fields[field].annotation)
    return "SecretStr" in annotation or "secret" in field or "password" in field


def shown(value: Any, *, secret: bool = False) -> str:
    """``value`` as text for the operator; secrets masked, URL passwords too."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return mask(value.get_secret_value())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(shown(item, secret=secret) for item in value)
    if isinstance(value, dict):
        return ",".join(
            f"{key}={shown(item, secret=secret)}"
            for key, items in value.items()
            for item in (items if isinstance(items, list) else [items])
        )
    text = str(value)
    if secret:
        return mask(text)
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", text)


def mask(secret: str) -> str:
    """``****``, and the last two characters of a long secret."""
    if len(secret) >= REVEAL_MIN_LENGTH:
        return f"{MASK}{secret[-2:]}"
    return MASK


def render_text(rows: list[SettingRow]) -> str:
    """``NAME=value  # source`` lines: the format of an env file, sources as comments."""
    width = max(len(f"{row.name}={row.value}") for row in rows)
    return "\n".join(f"{f'{row.name}={row.value}':<{width}}  # {row.source}" for row in rows)
