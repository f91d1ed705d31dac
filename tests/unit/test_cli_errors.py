"""Which exit code and hint each known failure gets (pure logic: exceptions built here).

The commands themselves, with closed ports and bad arguments, are in tests/e2e/test_cli.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaConnectionError
from botocore.exceptions import ClientError, EndpointConnectionError, NoRegionError
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from cartloom.cli.errors import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    explain,
    report,
)
from cartloom.cli.log_setup import faust_loglevel
from cartloom.core.settings import SettingsError
from cartloom.core.topology import TopologyError
from cartloom.ops.loadgen import LoadPlan
from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable


@pytest.fixture(autouse=True)
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CARTLOOM_BROKER_URL", "kafka://127.0.0.1:1")
    monkeypatch.setenv("CARTLOOM_REDIS_URL", "redis://u:pw-not-shown@127.0.0.1:2/0")
    monkeypatch.setenv("CARTLOOM_DYNAMODB_ENDPOINT", "http://127.0.0.1:3")
    monkeypatch.setenv("CARTLOOM_SHOPIFY_API_URL", "http://127.0.0.1:4")
    yield


def explained(exc: BaseException, causes: list[BaseException] | None = None) -> CliError:
    error = explain(exc, causes or [])
    assert error is not None
    assert "pw-not-shown" not in f"{error.message} {error.hint}"
    return error


def test_a_refused_broker_names_the_setting_and_dev_up() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed")
    error = explained(KafkaConnectionError("Unable to bootstrap"), [refused])
    assert error.exit_code == EXIT_UNAVAILABLE
    assert "127.0.0.1:1" in error.message and "CARTLOOM_BROKER_URL" in error.message
    assert error.hint is not None and "`python -m devstack up`" in error.hint


def test_a_tls_refusal_gets_no_dev_up_hint() -> None:
    import ssl

    refused = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused.verify_code = 19  # self-signed certificate in chain
    error = explained(KafkaConnectionError("boot"), [refused])
    assert error.exit_code == EXIT_UNAVAILABLE and error.hint is None


def test_redis_errors_name_the_address_not_the_password() -> None:
    error = explained(RedisConnectionError("Error 111 connecting"))
    assert error.exit_code == EXIT_UNAVAILABLE
    assert "cannot reach Redis at 127.0.0.1:2 (CARTLOOM_REDIS_URL)" in error.message
    refused = explained(AuthenticationError("invalid password"))
    assert "refused the credentials" in refused.message


def test_dynamodb_errors() -> None:
    region = explained(NoRegionError())
    assert region.exit_code == EXIT_USAGE and "AWS_REGION" in (region.hint or "")
    down = explained(EndpointConnectionError(endpoint_url="http://127.0.0.1:3"))
    assert down.exit_code == EXIT_UNAVAILABLE
    assert "http://127.0.0.1:3 (CARTLOOM_DYNAMODB_ENDPOINT)" in down.message
    missing = ClientError({"Error": {"Code": "ResourceNotFoundException"}}, "GetItem")
    assert "`cartloom dynamodb create-tables`" in (explained(missing).hint or "")
    denied = ClientError({"Error": {"Code": "UnrecognizedClientException"}}, "ListTables")
    assert explained(denied).exit_code == EXIT_UNAVAILABLE
    throttled = ClientError({"Error": {"Code": "ThrottlingException"}}, "PutItem")
    assert explain(throttled) is None  # not a configuration problem: a bug or an outage


def test_admin_api_errors() -> None:
    down = explained(AdminApiUnavailable("HTTP 401 Unauthorized"))
    assert down.exit_code == EXIT_UNAVAILABLE
    assert "CARTLOOM_SHOPIFY_ACCESS_TOKEN" in (down.hint or "")
    refused = explained(AdminApiError("orders/create: [{'message': 'no'}]"))
    assert refused.exit_code == EXIT_FAILED


def test_configuration_errors_are_usage_errors() -> None:
    assert explained(SettingsError("invalid settings: CARTLOOM_X")).exit_code == EXIT_USAGE
    assert explained(TopologyError("topic 'x' is not declared")).exit_code == EXIT_USAGE


def test_unknown_exceptions_are_left_to_their_traceback() -> None:
    assert explain(KeyError("bug")) is None
    assert explain(ValueError("bug")) is None


def test_report_writes_error_and_hint_lines(capsys: pytest.CaptureFixture[str]) -> None:
    report(CliError("it broke", "set CARTLOOM_X", EXIT_FAILED))
    report(CliError("no hint"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: it broke\nhint: set CARTLOOM_X\nerror: no hint\n"


def test_faust_spells_warning_warn() -> None:
    assert [faust_loglevel(v) for v in ("debug", "INFO", "warning", "error")] == [
        "debug",
        "info",
        "warn",
        "error",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"orders": -5},
        {"skus": 0},
        {"max_lines": 0},
        {"invalid_share": 1.5},
        {"invalid_share": -0.1},
    ],
)
def test_a_load_plan_that_cannot_be_published_is_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        LoadPlan(**{"orders": 10, **changes})  # type: ignore[arg-type]


def test_a_taken_port_is_explained() -> None:
    import errno

    taken = OSError(errno.EADDRINUSE, "address already in use")
    assert explained(taken).exit_code == EXIT_FAILED
    assert explain(OSError(errno.EACCES, "permission denied")) is None
