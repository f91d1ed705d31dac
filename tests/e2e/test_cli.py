"""The CLI as a user runs it: `dev`, `topics`, `config show`; its errors and exit codes."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from devstack.processes import ServerProcess, is_running
from tests.harness import (
    eventually,
    run_cartloom,
    run_devstack,
    serving,
    start_ingress,
    start_local_stack,
    start_worker,
    stop_local_stack,
)

pytestmark = pytest.mark.integration


def run_module(
    module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` without the test process's ``CARTLOOM_*`` settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def cartloom(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_module("cartloom", *args, env=env, cwd=cwd)


def devstack(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_module("devstack", *args, env=env, cwd=cwd)


def recorded_servers(state_dir: Path) -> list[ServerProcess]:
    raw = json.loads((state_dir / "stack.json").read_text())
    return [ServerProcess(**server) for server in raw["servers"].values()]


def test_dev_up_and_down_twice_in_a_row(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    for _ in range(2):
        first = devstack("up", "--state-dir", str(state_dir))
        assert first.returncode == 0, first.stderr
        assert "started" in first.stdout
        servers = recorded_servers(state_dir)
        assert {s.name for s in servers} == {"broker", "redis", "dynamodb"}
        assert all(is_running(s) for s in servers)
        env_file = (state_dir / "dev.env").read_text()
        assert f"CARTLOOM_BROKER_URL=kafka://127.0.0.1:{servers[0].port}" in env_file
        # The local query API is closed as a deployed one is; dev up says how to call it.
        (token,) = re.findall(r"^CARTLOOM_API_TOKEN=(\S{24,})$", env_file, re.M)
        assert f"Authorization: Bearer {token}" in first.stdout.replace("\n", "")

        again = devstack("up", "--state-dir", str(state_dir))
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout
        assert recorded_servers(state_dir) == servers  # no second copy

        assert devstack("status", "--state-dir", str(state_dir)).returncode == 0
        down = devstack("down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stderr
        assert not any(is_running(s) for s in servers)
        assert not (state_dir / "dev.env").exists()
        assert devstack("status", "--state-dir", str(state_dir)).returncode == 1


def test_down_without_a_stack_stops_nothing(tmp_path: Path) -> None:
    result = devstack("down", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    assert "nothing was running" in result.stdout


def test_topics_apply_then_check_reports_drift(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    assert devstack("up", "--state-dir", str(state_dir)).returncode == 0
    try:
        env_file = str(state_dir / "dev.env")
        ok = cartloom("--env-file", env_file, "topics", "check")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "match topics.yaml" in ok.stdout

        drifted = tmp_path / "topics.yaml"
        drifted.write_text(
            "defaults: {partitions: 8, replication_factor: 1}\n"
            "topics:\n  orders: {partitions: 4}\n  brand.new: {}\n"
        )
        env = {"CARTLOOM_TOPICS_FILE": str(drifted)}
        bad = cartloom("--env-file", env_file, "topics", "check", env=env)
        assert bad.returncode == 1
        assert "orders: has 8 partitions, topics.yaml says 4" in bad.stdout
        assert "brand.new: missing" in bad.stdout

        # apply creates what is missing, and refuses what it cannot mend: a partition count.
        applied = cartloom("--env-file", env_file, "topics", "apply", env=env)
        assert applied.returncode == 1, applied.stdout + applied.stderr
        assert "orders: has 8 partitions, topics.yaml says 4" in applied.stderr
        after = cartloom("--env-file", env_file, "topics", "check", env=env)
        assert "brand.new" not in after.stdout
    finally:
        devstack("down", "--state-dir", str(state_dir))


def test_invalid_setting_is_a_clear_error_not_a_traceback() -> None:
    result = cartloom("topics", "check", env={"CARTLOOM_WEB_PORT": "not-a-port"})
    assert result.returncode == 2
    assert "CARTLOOM_WEB_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    """What `make demo` runs: orders reach DynamoDB and Redis, some reserved, some rejected."""
    state_dir = tmp_path / "stack"
    try:
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "devstack",
                "demo",
                "--orders",
                "300",
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")},
                "COLUMNS": "200",
            },
            cwd=tmp_path,
            timeout=300,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        out = demo.stdout
        assert "6 malformed orders were sent on purpose" in out
        summary = next(line for line in out.splitlines() if line.startswith("orders by status:"))
        parts = summary.split(":", 1)[1].split("(")[0].split(",")
        counts = {status: int(n) for n, status in (part.split() for part in parts)}
        assert counts.get("received", 0) == 0, summary  # every valid order was resolved
        assert counts["reserved"] > 0 and counts["rejected"] > 0, summary  # demand > stock
        assert sum(counts.values()) == 294, summary
    finally:
        devstack("down", "--state-dir", str(state_dir))


# -- what a newcomer sees (issue #14): errors on stderr, hints, exit codes ------------------

SECRET_TOKEN = "shpat_do-not-print-me-0123456789"
REDIS_PASSWORD = "redis-pw-do-not-print"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def nowhere(port: int) -> dict[str, str]:
    """Settings that point every store and API at ``port``, where nothing answers."""
    return {
        "CARTLOOM_BROKER_URL": f"kafka://127.0.0.1:{port}",
        "CARTLOOM_REDIS_URL": f"redis://cartloom:{REDIS_PASSWORD}@127.0.0.1:{port}/0",
        "CARTLOOM_DYNAMODB_ENDPOINT": f"http://127.0.0.1:{port}",
        "CARTLOOM_SHOPIFY_API_URL": f"http://127.0.0.1:{port}",
        "CARTLOOM_SHOPIFY_ACCESS_TOKEN": SECRET_TOKEN,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def assert_clear_error(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """Exit ``code``, one or two lines on stderr naming ``names``, no traceback, no secret."""
    assert result.returncode == code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" not in result.stdout
    assert SECRET_TOKEN not in result.stdout + result.stderr
    assert REDIS_PASSWORD not in result.stdout + result.stderr
    return result.stderr


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    result = run_cartloom(tmp_path, {}, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cartloom {version('cartloom')}"


@pytest.mark.parametrize(
    ("program", "args", "option"),
    [
        ("cartloom", ["loadgen", "--orders", "-5"], "--orders"),
        ("cartloom", ["loadgen", "--skus", "0"], "--skus"),
        ("cartloom", ["loadgen", "--invalid-share", "1.5"], "--invalid-share"),
        ("cartloom", ["dynamodb", "create-tables", "--within", "-1"], "--within"),
        (
            "cartloom",
            ["shopify", "register-webhooks", "--address", "cartloom.example"],
            "--address",
        ),
        ("cartloom", ["worker", "--loglevel", "loud"], "--loglevel"),
        ("python -m devstack", ["demo", "--orders", "0"], "--orders"),
        ("python -m devstack", ["simulate", "--port", "0"], "--port"),
        ("python -m devstack", ["simulate", "--drop-share", "2"], "--drop-share"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    tmp_path: Path, closed_port: int, program: str, args: list[str], option: str
) -> None:
    run = run_cartloom if program == "cartloom" else run_devstack
    result = run(tmp_path, nowhere(closed_port), *args)
    said = assert_clear_error(result, 2, option, "--help")
    assert f"{program} {args[0]}" in said  # the hint names the command's help


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    assert_clear_error(run_cartloom(tmp_path, {}, "lodgen"), 2, "lodgen", "cartloom --help")


@pytest.mark.parametrize("command", ["loadgen --orders 5", "worker", "topics check"])
def test_an_unreachable_broker_names_the_setting_and_dev_up(
    tmp_path: Path, closed_port: int, command: str
) -> None:
    env = {**nowhere(closed_port), "CARTLOOM_DATA_DIR": str(tmp_path / "data")}
    result = run_cartloom(tmp_path, env, *command.split())
    said = assert_clear_error(result, 3, "CARTLOOM_BROKER_URL", "`python -m devstack up`")
    assert f"127.0.0.1:{closed_port}" in said


def test_an_unreachable_redis_names_the_setting_without_its_password(
    tmp_path: Path, closed_port: int
) -> None:
    result = run_cartloom(tmp_path, nowhere(closed_port), "reconcile")
    said = assert_clear_error(result, 3, "CARTLOOM_REDIS_URL", "`python -m devstack up`")
    assert f"Redis at 127.0.0.1:{closed_port}" in said


def test_an_unreachable_dynamodb_endpoint_names_the_setting(
    tmp_path: Path, closed_port: int
) -> None:
    result = run_cartloom(tmp_path, nowhere(closed_port), "dynamodb", "create-tables")
    assert_clear_error(result, 3, "CARTLOOM_DYNAMODB_ENDPOINT", "`python -m devstack up`")


def test_a_missing_aws_region_says_which_variable_to_set(tmp_path: Path, closed_port: int) -> None:
    env = {
        k: v
        for k, v in nowhere(closed_port).items()
        if k not in ("CARTLOOM_DYNAMODB_ENDPOINT", "AWS_DEFAULT_REGION")
    }
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")  # no region from a profile
    result = run_cartloom(tmp_path, env, "dynamodb", "create-tables")
    assert_clear_error(result, 2, "AWS_REGION", "CARTLOOM_DYNAMODB_ENDPOINT")


def test_an_unreachable_admin_api_names_the_setting(tmp_path: Path, closed_port: int) -> None:
    result = run_cartloom(
        tmp_path,
        nowhere(closed_port),
        "shopify",
        "register-webhooks",
        "--address",
        "https://cartloom.example/webhooks/shopify",
    )
    assert_clear_error(result, 3, "CARTLOOM_SHOPIFY_API_URL", "CARTLOOM_SHOPIFY_ACCESS_TOKEN")


def test_missing_shopify_settings_are_a_configuration_error(tmp_path: Path) -> None:
    result = run_cartloom(
        tmp_path, {}, "shopify", "register-webhooks", "--address", "https://x.example/webhooks"
    )
    assert_clear_error(result, 2, "CARTLOOM_SHOPIFY_API_URL", "CARTLOOM_SHOPIFY_ACCESS_TOKEN")


def test_an_invalid_setting_goes_to_stderr_with_a_hint(tmp_path: Path) -> None:
    result = run_cartloom(tmp_path, {"CARTLOOM_LOG_LEVEL": "loud"}, "config", "show")
    assert_clear_error(result, 2, "CARTLOOM_LOG_LEVEL", ".env.example")


@pytest.mark.parametrize(
    ("flag", "env"), [(["--debug"], {}), ([], {"CARTLOOM_LOG_LEVEL": "debug"})]
)
def test_debug_shows_the_traceback_too(
    tmp_path: Path, closed_port: int, flag: list[str], env: dict[str, str]
) -> None:
    result = run_cartloom(tmp_path, {**nowhere(closed_port), **env}, *flag, "reconcile")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert "error: cannot reach Redis" in result.stderr


def test_config_show_masks_every_secret_and_says_where_values_came_from(
    tmp_path: Path, closed_port: int
) -> None:
    webhook_secret = "whsec-do-not-print-0123456789"
    env_file = tmp_path / "dev.env"
    env_file.write_text("CARTLOOM_NAMESPACE=shop-a\nCARTLOOM_WEB_PORT=7000\n")
    env = {
        **nowhere(closed_port),
        "CARTLOOM_WEB_PORT": "6099",  # the environment wins over the file
        "CARTLOOM_SHOPIFY_WEBHOOK_SECRET": f"old-secret,{webhook_secret}",
        "CARTLOOM_SHOPIFY_SHOP_SECRETS": f"a.myshopify.com={webhook_secret}",
        "CARTLOOM_API_TOKEN": "api-token-do-not-print",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    text = subprocess.run(
        [sys.executable, "-m", "cartloom", "--env-file", str(env_file), "config", "show"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert text.returncode == 0, text.stderr
    for secret in (webhook_secret, "old-secret", "api-token-do-not-print", SECRET_TOKEN):
        assert secret not in text.stdout
    assert REDIS_PASSWORD not in text.stdout
    lines = {line.split("=", 1)[0]: line for line in text.stdout.splitlines()}
    assert "CARTLOOM_REDIS_URL=redis://cartloom:****@127.0.0.1:" in lines["CARTLOOM_REDIS_URL"]
    assert lines["CARTLOOM_SHOPIFY_WEBHOOK_SECRET"].split()[0].endswith("=****,****89")
    assert lines["CARTLOOM_WEB_PORT"].startswith("CARTLOOM_WEB_PORT=6099 ")
    assert lines["CARTLOOM_WEB_PORT"].endswith("# environment")
    assert lines["CARTLOOM_NAMESPACE"].endswith("# env file")
    assert lines["CARTLOOM_APP_ID"].endswith("# default (from CARTLOOM_NAMESPACE)")
    assert lines["CARTLOOM_STORE"].endswith("# default")

    as_json = run_cartloom(tmp_path, env, "config", "show", "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert rows["CARTLOOM_API_TOKEN"] == {
        "name": "CARTLOOM_API_TOKEN",
        "value": "****nt",
        "source": "environment",
    }
    assert rows["CARTLOOM_WEB_PORT"]["value"] == "6099"
    assert webhook_secret not in as_json.stdout and SECRET_TOKEN not in as_json.stdout


async def test_the_servers_honour_cartloom_log_level(tmp_path: Path) -> None:
    """`cartloom worker` (Faust's own logging) and `cartloom shopify ingress` use the setting."""
    state = await start_local_stack(tmp_path / "stack")
    try:
        env = {**state.env, "CARTLOOM_SHOPIFY_WEBHOOK_SECRET": "s"}
        quiet = start_worker(env, tmp_path, "quiet", {"CARTLOOM_LOG_LEVEL": "warning"})
        async with serving(quiet):
            pass
        assert "[INFO]" not in quiet.log.read_text(), quiet.log_tail()

        chatty = start_worker(env, tmp_path, "chatty", {"CARTLOOM_LOG_LEVEL": "debug"})
        async with serving(chatty):
            said = chatty.log.read_text()
            assert "[DEBUG]" in said and "[INFO]" in said, chatty.log_tail()

        for level, seen in (("debug", " DEBUG "), ("info", " INFO ")):
            extra = {"CARTLOOM_LOG_LEVEL": level}
            ingress = start_ingress(env, tmp_path, f"ingress-{level}", extra)
            async with serving(ingress):
                await eventually(
                    logged(ingress.log, seen), timeout=30, what=f"{seen.strip()} lines"
                )
            if level == "info":
                assert " DEBUG " not in ingress.log.read_text(), ingress.log_tail()
    finally:
        stop_local_stack(tmp_path / "stack")


def logged(log: Path, text: str) -> Callable[[], Awaitable[bool]]:
    """A probe for :func:`eventually`: whether ``log`` has ``text`` yet."""

    async def probe() -> bool:
        return text in log.read_text(errors="replace")

    return probe


def test_a_taken_port_names_the_setting(tmp_path: Path, closed_port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **nowhere(closed_port),
            "CARTLOOM_WEB_BIND": "127.0.0.1",
            "CARTLOOM_WEBHOOK_INGRESS_PORT": str(taken.getsockname()[1]),
            "CARTLOOM_SHOPIFY_WEBHOOK_SECRET": "s",
        }
        result = run_cartloom(tmp_path, env, "shopify", "ingress", timeout=60)
    assert_clear_error(result, 1, "address already in use", "CARTLOOM_WEBHOOK_INGRESS_PORT")
