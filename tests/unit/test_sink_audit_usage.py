"""``cartloom audit`` refuses bad usage before touching any server (exit 2)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cartloom.cli.main import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "mongodb"], "unknown store"),
        (["--sample", "-1"], "must not be negative"),
        (["--settle", "-5"], "must not be negative"),
    ],
)
def test_bad_usage_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--env-file", "/nonexistent", "audit", *args])
    assert result.exit_code == 2
    assert message in result.output
