"""Running the code blocks of the docs as they stand: marked fenced blocks, kcat's library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Example:
    """The fenced block after a ``<!-- {kind}: NAME note -->`` marker."""

    name: str
    note: str
    language: str
    code: str


def marked_examples(text: str, kind: str) -> dict[str, Example]:
    """Every block of ``text`` marked ``<!-- {kind}: NAME ... -->``, by name."""
    marker = re.compile(rf"<!-- {re.escape(kind)}: ([\w-]+)([^>]*)-->\n```(\w+)\n(.*?)```", re.S)
    found = marker.findall(text)
    return {name: Example(name, note.strip(), lang, code) for name, note, lang, code in found}


def kcat_environment(scratch: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with kcat on the wheel's librdkafka.

    Debian 12's librdkafka (2.0.2) cannot read the embedded broker's ApiVersions answer
    ("Read underflow"); the one the confluent-kafka wheel bundles can. Against Kafka itself
    this is not needed.
    """
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*"))
    env = dict(os.environ if base is None else base)
    if bundled:
        shim = scratch / "librdkafka"
        shim.mkdir(exist_ok=True)
        link = shim / "librdkafka.so.1"
        if not link.exists():
            link.symlink_to(bundled[0])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(shim), env.get("LD_LIBRARY_PATH")])
        )
    return env


def run_example(example: Example, cwd: Path, env: dict[str, str], code: str | None = None) -> str:
    """Run the block (Python with this interpreter, anything else with bash); its stdout."""
    source = example.code if code is None else code
    if example.language == "python":
        argv = [sys.executable, "-c", source]
    else:
        assert example.language == "bash", example.language
        if "kcat" in source:
            if shutil.which("kcat") is None:
                pytest.fail(
                    "kcat is not installed: run scripts/system-deps.sh (Debian package kcat)"
                )
            env = kcat_environment(cwd, env)
        argv = ["bash", "-c", source]
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
