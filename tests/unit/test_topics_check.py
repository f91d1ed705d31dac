"""`cartloom topics check` beyond partitions: cleanup.policy and retention.ms, and what the
broker does not report (pure comparison; tests/integration/test_topics_check.py runs the
command against the real broker)."""

from __future__ import annotations

import pytest

from cartloom.core.topology import TopicSpec, load_topology
from cartloom.ops.kafka_admin import Unreported, compare_settings

SPECS = load_topology().all_topics("cartloom")
BY_NAME = {spec.name: spec for spec in SPECS}


def as_reported() -> dict[str, dict[str, str | None]]:
    """What a broker holding exactly topics.yaml reports (as strings, like Kafka)."""
    return {spec.name: dict(spec.configs) for spec in SPECS}


def test_a_broker_reporting_what_topics_yaml_says_shows_no_drift() -> None:
    assert compare_settings(SPECS, as_reported()) == ([], [])


def test_retention_and_cleanup_policy_that_differ_are_drift() -> None:
    reported = as_reported()
    reported["orders"]["retention.ms"] = "86400000"
    reported["orders.dlq"]["cleanup.policy"] = "compact"
    drift, unreported = compare_settings(SPECS, reported)
    assert {str(d) for d in drift} == {
        "orders: retention.ms is 86400000, topics.yaml says 604800000",
        "orders.dlq: cleanup.policy is compact, topics.yaml says delete",
    }
    assert unreported == []


def test_a_changelogs_retention_is_not_declared_so_not_compared() -> None:
    changelog = "cartloom-order_by_id-changelog"
    assert BY_NAME[changelog].configs == {"cleanup.policy": "compact"}
    reported = as_reported()
    reported[changelog]["retention.ms"] = "1"
    assert compare_settings(SPECS, reported) == ([], [])
    reported[changelog]["cleanup.policy"] = "delete"
    drift, _ = compare_settings(SPECS, reported)
    assert [str(d) for d in drift] == [
        f"{changelog}: cleanup.policy is delete, topics.yaml says compact"
    ]


@pytest.mark.parametrize(("declared", "reported"), [("compact,delete", "delete, compact")])
def test_cleanup_policy_is_compared_as_a_set(declared: str, reported: str) -> None:
    spec = TopicSpec("t", 1, 1, declared, 1000)
    assert compare_settings(
        [spec], {"t": {"cleanup.policy": reported, "retention.ms": "1000"}}
    ) == (
        [],
        [],
    )


def test_a_setting_the_broker_does_not_report_is_named_not_passed_or_failed() -> None:
    reported = as_reported()
    del reported["orders"]["retention.ms"]
    reported["inventory"]["cleanup.policy"] = None  # reported without a value
    reported["order.events"] = {}  # a broker that reports nothing for the topic
    drift, unreported = compare_settings(SPECS, reported)
    assert drift == []
    assert set(unreported) == {
        Unreported("orders", "retention.ms", "604800000"),
        Unreported("inventory", "cleanup.policy", "delete"),
        Unreported("order.events", "cleanup.policy", "delete"),
        Unreported("order.events", "retention.ms", "604800000"),
    }
    assert str(Unreported("orders", "retention.ms", "604800000")) == (
        "orders: retention.ms not reported by the broker (topics.yaml says 604800000)"
    )


def test_a_missing_topic_is_left_to_the_partition_check() -> None:
    reported = as_reported()
    del reported["orders"]
    assert compare_settings(SPECS, reported) == ([], [])
