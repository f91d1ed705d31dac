"""`cartloom topics check` against the real broker: retention and cleanup policy compared
with topics.yaml, and a setting the broker does not report named as such.

The embedded broker (Tansu) reports a topic's settings only when the topic was created with
them: `topics apply` sets both, so those topics are compared; a topic created by hand
without settings reports none, and the check says so instead of passing or failing it.
Each test declares its own uniquely named topics in its own topics.yaml.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.stack import StackState

pytestmark = pytest.mark.integration


def cartloom(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTLOOM_")}
    return subprocess.run(
        [sys.executable, "-m", "cartloom", *args],
        capture_output=True,
        text=True,
        env={**base, **env, "COLUMNS": "200"},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def topics_yaml(path: Path, prefix: str, kept_retention: int, compacted_policy: str) -> Path:
    path.write_text(
        "defaults: {partitions: 2, replication_factor: 1, cleanup_policy: delete,"
        " retention_ms: 604800000}\n"
        "topics:\n"
        f"  {prefix}.kept: {{retention_ms: {kept_retention}}}\n"
        f"  {prefix}.compacted: {{cleanup_policy: {compacted_policy}}}\n"
        f"  {prefix}.bare: {{retention_ms: 3600000}}\n"
    )
    return path


async def create_without_settings(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()


def test_retention_and_cleanup_policy_are_checked_and_unreported_settings_named(
    stack: StackState, bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"tc-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_without_settings(bootstrap, f"{prefix}.bare"))
    declared = topics_yaml(tmp_path / "topics.yaml", prefix, 86_400_000, "compact")
    env = {**stack.env, "CARTLOOM_TOPICS_FILE": str(declared)}

    applied = cartloom(env, tmp_path, "topics", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"{prefix}.kept" in applied.stdout and f"{prefix}.bare" not in applied.stdout

    ok = cartloom(env, tmp_path, "topics", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "drift" not in ok.stdout
    lines = ok.stdout.splitlines()
    assert (
        f"not compared: {prefix}.bare: cleanup.policy not reported by the broker "
        "(topics.yaml says delete)" in lines
    )
    assert (
        f"not compared: {prefix}.bare: retention.ms not reported by the broker "
        "(topics.yaml says 3600000)" in lines
    )
    assert not any(f"{prefix}.kept" in line or f"{prefix}.compacted" in line for line in lines)
    assert (
        "3 topics match topics.yaml in what the broker reported (partitions, cleanup.policy, "
        "retention.ms); 2 setting(s) not reported by the broker, not compared" in ok.stdout
    )

    drifted = topics_yaml(tmp_path / "drifted.yaml", prefix, 172_800_000, "delete")
    bad = cartloom({**env, "CARTLOOM_TOPICS_FILE": str(drifted)}, tmp_path, "topics", "check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    drift = {line for line in bad.stdout.splitlines() if line.startswith("drift: ")}
    assert drift == {
        f"drift: {prefix}.kept: retention.ms is 86400000, topics.yaml says 172800000",
        f"drift: {prefix}.compacted: cleanup.policy is compact, topics.yaml says delete",
    }


def test_the_topics_cartloom_creates_match_in_every_setting(
    stack: StackState, tmp_path: Path
) -> None:
    """The shared stack's topics (`python -m devstack up` made them) match every setting."""
    ok = cartloom(stack.env, tmp_path, "topics", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "not compared" not in ok.stdout
    assert "topics match topics.yaml (partitions, cleanup.policy, retention.ms)" in ok.stdout


def test_a_topic_the_broker_created_on_first_use_is_refused_with_the_reason(
    stack: StackState, bootstrap: str, tmp_path: Path
) -> None:
    """A producer that publishes before `topics apply` makes the broker create the topic.

    The broker gives it its default partition count, not the one topics.yaml declares: apply
    still creates the other topics, then exits 1 naming the topic and both counts, so that no
    worker starts on a changelog it cannot write to.
    """
    from confluent_kafka import Producer

    prefix = f"ac-{uuid.uuid4().hex[:8]}"
    declared = tmp_path / "topics.yaml"
    declared.write_text(
        "defaults: {partitions: 6, replication_factor: 1, cleanup_policy: delete,"
        " retention_ms: 604800000}\n"
        f"topics:\n  {prefix}.early: {{}}\n  {prefix}.later: {{}}\n"
    )
    early = Producer({"bootstrap.servers": bootstrap})  # librdkafka's defaults otherwise
    early.produce(f"{prefix}.early", b"an order published before the topics were applied")
    assert early.flush(30) == 0, "the broker did not take the record"

    env = {**stack.env, "CARTLOOM_TOPICS_FILE": str(declared)}
    applied = cartloom(env, tmp_path, "topics", "apply")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    errors = applied.stderr.splitlines()
    assert errors[0].startswith("error: topics exist with another partition count")
    assert f"{prefix}.early: has " in errors[0] and "topics.yaml says 6" in errors[0]
    assert errors[1].startswith("hint: a Kafka client used them before `cartloom topics apply`")

    check = cartloom(env, tmp_path, "topics", "check")
    drift = [line for line in check.stdout.splitlines() if line.startswith("drift: ")]
    assert len(drift) == 1 and drift[0].startswith(f"drift: {prefix}.early: has "), check.stdout
