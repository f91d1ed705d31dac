"""Settings come from CARTLOOM_* only; topics.yaml is the one declaration of topics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cartloom.core.settings import Settings, SettingsError, load_settings
from cartloom.core.topology import TopologyError, load_topology
from cartloom.ops.kafka_admin import compare_topics

ROOT = Path(__file__).resolve().parents[2]


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTLOOM_WEB_PORT", "eighty")
    with pytest.raises(SettingsError, match="CARTLOOM_WEB_PORT"):
        load_settings()


def test_webhook_secrets_are_comma_separated_and_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARTLOOM_SHOPIFY_WEBHOOK_SECRET", "old-secret, new-secret")
    settings = load_settings()
    assert [s.get_secret_value() for s in settings.shopify_webhook_secret] == [
        "old-secret",
        "new-secret",
    ]
    assert "new-secret" not in repr(settings)


def test_dynamodb_tables_use_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTLOOM_TABLE_PREFIX", "shop1-")
    assert load_settings().dynamodb_table("orders") == "shop1-orders"


def test_faust_environment_variables_do_not_override_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cartloom.stream.app import create_app

    monkeypatch.setenv("BROKER_URL", "kafka://wrong-host:1")
    monkeypatch.setenv("STORE", "rocksdb://")
    monkeypatch.setenv("WEB_PORT", "1")
    settings = Settings(broker_url="kafka://right-host:9092", web_port=7001)
    app = create_app(settings, load_topology())
    assert [str(url) for url in app.conf.broker] == ["kafka://right-host:9092"]
    assert str(app.conf.store) == "memory:"
    assert app.conf.web_port == 7001


@pytest.mark.parametrize("check", [True, False])
def test_the_recovery_consistency_check_reaches_faust(check: bool) -> None:
    from cartloom.stream.app import create_app

    app = create_app(Settings(recovery_consistency_check=check), load_topology())
    assert app.conf.recovery_consistency_check is check


def test_the_local_stack_turns_the_recovery_consistency_check_off() -> None:
    from devstack.stack import LOCAL_TUNING_ENV

    assert LOCAL_TUNING_ENV["CARTLOOM_RECOVERY_CONSISTENCY_CHECK"] == "false"


def test_env_example_lists_every_setting() -> None:
    documented = set(
        re.findall(r"^#?\s*(CARTLOOM_[A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    expected = {f"CARTLOOM_{name.upper()}" for name in Settings.model_fields}
    assert expected == documented


def test_tables_are_co_partitioned_with_their_source_topics() -> None:
    from cartloom.stream import tables as declared
    from cartloom.stream.app import app, topology

    tables = {
        table.name: table
        for table in vars(declared).values()
        if isinstance(table, declared.faust.Table)
    }
    assert set(tables) == set(topology.tables), "every table in topics.yaml exists in code"
    for name, table in tables.items():
        source = topology.tables[name].source
        assert table.partitions == topology.topic(source).partitions
        assert table.changelog_topic.get_topic_name() == topology.tables[name].changelog_topic(
            app.conf.id
        )


def test_faust_topics_take_partitions_from_topics_yaml() -> None:
    from cartloom.stream import topics
    from cartloom.stream.app import topology

    declared = [v for v in vars(topics).values() if hasattr(v, "get_topic_name")]
    assert declared
    for topic in declared:
        for name in topic.topics:  # a co-partitioned subscription names several
            assert topic.partitions == topology.topic(name).partitions


def test_topology_rejects_tables_on_unknown_topics(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics: {a: {partitions: 2}}\ntables: {t: {source: b}}\n")
    with pytest.raises(TopologyError, match="unknown source"):
        load_topology(path)


def test_compare_topics_reports_missing_and_wrong_partitions() -> None:
    specs = load_topology().all_topics("cartloom")
    observed = {spec.name: spec.partitions for spec in specs}
    observed["orders"] = 3
    del observed["orders.dlq"]
    drift = {str(d) for d in compare_topics(specs, observed)}
    assert drift == {"orders: has 3 partitions, topics.yaml says 8", "orders.dlq: missing"}
