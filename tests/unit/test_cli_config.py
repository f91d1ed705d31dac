"""``cartloom config show``: masking and sources (pure logic; the command is in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from cartloom.cli.config import (
    MASK,
    env_file_names,
    mask,
    render_text,
    setting_rows,
    shown,
)
from cartloom.core.settings import Settings


def test_short_secrets_show_nothing_long_ones_their_last_two_characters() -> None:
    assert mask("hunter2") == MASK
    assert mask("a" * 15) == MASK
    assert mask("0123456789abcdefXY") == f"{MASK}XY"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://user:pw@host:6379/0", f"redis://user:{MASK}@host:6379/0"),
        ("rediss://:pw@host:6380", f"rediss://:{MASK}@host:6380"),
        ("kafka://a:1;kafka://u:p@b:2", f"kafka://a:1;kafka://u:{MASK}@b:2"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_passwords_in_urls_are_masked(value: str, expected: str) -> None:
    assert shown(value) == expected


def test_values_are_shown_as_they_would_be_set() -> None:
    assert shown(None) == ""
    assert shown(True) == "true"
    assert shown(["a.myshopify.com", "b.myshopify.com"]) == "a.myshopify.com,b.myshopify.com"
    assert shown([SecretStr("x"), SecretStr("y" * 20)]) == f"{MASK},{MASK}yy"
    secrets = {"a.myshopify.com": [SecretStr("one"), SecretStr("two")]}
    assert shown(secrets, secret=True) == f"a.myshopify.com={MASK},a.myshopify.com={MASK}"
    assert shown("plain-text-secret-value", secret=True) == f"{MASK}ue"


def test_no_secret_value_appears_in_any_row(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-value-that-must-not-leak"
    settings = Settings(
        api_token=SecretStr(secret),
        shopify_access_token=SecretStr(secret),
        shopify_webhook_secret=[SecretStr(secret)],
        shopify_shop_secrets={"a.myshopify.com": [SecretStr(secret)]},
        redis_url=f"redis://cartloom:{secret}@127.0.0.1:6379/0",
    )
    text = render_text(setting_rows(settings))
    assert secret not in text
    assert len(text.splitlines()) == len(Settings.model_fields)


def test_rows_say_where_each_value_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "dev.env"
    env_file.write_text("CARTLOOM_NAMESPACE=shop-a\nCARTLOOM_WEB_PORT=7000\n")
    monkeypatch.setenv("CARTLOOM_WEB_PORT", "6099")
    from_file = env_file_names(env_file)
    assert from_file == {"CARTLOOM_NAMESPACE"}  # the environment wins over the file
    monkeypatch.setenv("CARTLOOM_NAMESPACE", "shop-a")  # as load_dotenv sets it
    rows = {row.name: row for row in setting_rows(Settings(), from_file)}
    assert (rows["CARTLOOM_WEB_PORT"].value, rows["CARTLOOM_WEB_PORT"].source) == (
        "6099",
        "environment",
    )
    assert rows["CARTLOOM_NAMESPACE"].source == "env file"
    assert rows["CARTLOOM_APP_ID"].value == "shop-a-cartloom"
    assert rows["CARTLOOM_APP_ID"].source == "default (from CARTLOOM_NAMESPACE)"
    assert rows["CARTLOOM_STORE"].source == "default"
    assert env_file_names(tmp_path / "missing.env") == frozenset()
