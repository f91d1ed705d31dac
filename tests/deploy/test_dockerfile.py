"""The Dockerfile: lint-clean, pinned, non-root, with a healthcheck and no secrets inside."""

from __future__ import annotations

import re
import subprocess

from cartloom.core.settings import Settings
from tests.deploy.manifests import ROOT, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """Arguments of every ``keyword`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return re.findall(rf"^{keyword}\s+(.+)$", joined, re.M)


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_is_multi_stage_from_a_pinned_base() -> None:
    stages = instructions("FROM")
    assert len(stages) >= 2
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert all(stage.split()[0] in {"${PYTHON_IMAGE}", "$PYTHON_IMAGE"} for stage in stages)


def test_the_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    (user,) = re.findall(r"^USER (\S+)$", runtime, re.M)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000


def test_the_cli_is_the_entry_point_and_worker_the_default_command() -> None:
    assert instructions("ENTRYPOINT") == ['["cartloom"]']
    assert instructions("CMD") == ['["worker"]']


def test_healthcheck_probes_healthz_on_the_web_port() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "/healthz" in check
    assert "CARTLOOM_WEB_PORT" in check
    default_port = Settings.model_fields["web_port"].default
    assert instructions("EXPOSE") == [str(default_port)]


def test_no_secret_is_baked_in() -> None:
    names = [line.split("=", 1)[0] for line in " ".join(instructions("ENV")).split()]
    names += [arg.split("=", 1)[0] for arg in instructions("ARG")]
    for name in names:
        assert not re.search(r"SECRET|TOKEN|PASSWORD|AWS_", name), name


def test_the_build_context_leaves_local_state_and_secrets_out() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :], "an allow-list: everything out by default"
    assert {"**/.env", "**/.cartloom"} <= set(ignore)
    # What the build copies from the context is allowed back in.
    copied_sources = [
        source
        for line in instructions("COPY")
        if not line.startswith("--from")
        for source in line.split()[:-1]
    ]
    assert "constraints.txt" in copied_sources, "the image installs the versions CI tested"
    for copied in copied_sources:
        assert f"!{copied}" in ignore, copied
        assert (ROOT / copied).exists()
