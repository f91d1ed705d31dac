"""The Shopify commands refuse to run without the settings they need, naming them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cartloom.cli.main import cli
from devstack.cli import cli as devstack_cli


@pytest.mark.parametrize(
    "argv",
    [
        ["reconcile"],
        ["shopify", "register-webhooks", "--address", "https://x.example/webhooks/shopify"],
    ],
)
def test_commands_name_the_missing_settings(argv: list[str]) -> None:
    result = CliRunner().invoke(cli, ["--env-file", "/nonexistent.env", *argv])
    assert result.exit_code == 2
    assert "CARTLOOM_SHOPIFY_" in result.output


def test_the_simulator_names_the_missing_settings() -> None:
    result = CliRunner().invoke(devstack_cli, ["--env-file", "/nonexistent.env", "simulate"])
    assert result.exit_code == 2
    assert "CARTLOOM_SHOPIFY_" in result.output
