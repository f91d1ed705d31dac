"""Reads ``topics.yaml``: the single declaration of every Kafka topic CartLoom uses.

Pure data loading, no Kafka client: the CLI (``topics apply|check``), the Faust topic
declarations and the deployment checks all read the same :class:`Topology`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_PACKAGED = Path(__file__).resolve().parents[1] / "topics.yaml"  # cartloom/topics.yaml in a wheel
_CHECKOUT = Path(__file__).resolve().parents[2] / "topics.yaml"


class TopologyError(ValueError):
    """``topics.yaml`` is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it must exist on the broker."""

    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str
    retention_ms: int | None
    description: str = ""

    @property
    def configs(self) -> dict[str, str]:
        """Broker-side topic configuration for CreateTopics."""
        configs = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None and self.cleanup_policy != "compact":
            configs["retention.ms"] = str(self.retention_ms)
        return configs


@dataclass(frozen=True)
class TableSpec:
    """A changelog-backed Faust table, co-partitioned with its source topic."""

    name: str
    source: str
    entity: str | None = None
    description: str = ""

    def changelog_topic(self, app_id: str) -> str:
        """Name Faust gives this table's changelog topic."""
        return f"{app_id}-{self.name}-changelog"


@dataclass(frozen=True)
class Topology:
    """All topics and tables from ``topics.yaml``.

    ``topics`` is keyed by the name ``topics.yaml`` declares (what the code says); each
    spec's ``name`` is the topic's name on the broker, which carries the deployment's
    ``prefix`` (``CARTLOOM_NAMESPACE``; empty by default).
    """

    topics: dict[str, TopicSpec]
    tables: dict[str, TableSpec]
    default_partitions: int
    default_replication_factor: int
    prefix: str = ""

    def topic(self, name: str) -> TopicSpec:
        """The spec of ``name`` (declared or broker name); :class:`TopologyError` if undeclared."""
        spec = self.topics.get(name)
        if spec is None and self.prefix and name.startswith(self.prefix):
            spec = self.topics.get(name[len(self.prefix) :])
        if spec is None:
            raise TopologyError(f"topic {name!r} is not declared in topics.yaml")
        return spec

    def name(self, declared: str) -> str:
        """The broker name of the topic ``topics.yaml`` declares as ``declared``."""
        return self.topic(declared).name

    def declared(self, name: str) -> str:
        """The ``topics.yaml`` name of the broker topic ``name`` (prefix removed)."""
        if self.prefix and name.startswith(self.prefix):
            return name[len(self.prefix) :]
        return name

    def table_partitions(self, table: str) -> int:
        """Partitions of ``table``: those of its source topic, so they are co-partitioned."""
        return self.topic(self.tables[table].source).partitions

    def changelog_specs(self, app_id: str) -> list[TopicSpec]:
        """Each table's compacted changelog topic, as ``topics apply`` must create it."""
        return [
            TopicSpec(
                name=table.changelog_topic(app_id),
                partitions=self.table_partitions(table.name),
                replication_factor=self.default_replication_factor,
                cleanup_policy="compact",
                retention_ms=None,
                description=f"Changelog of table {table.name}. {table.description}",
            )
            for table in self.tables.values()
        ]

    def all_topics(self, app_id: str) -> list[TopicSpec]:
        """Declared topics plus table changelogs: everything ``topics apply`` manages."""
        return [*self.topics.values(), *self.changelog_specs(app_id)]


def default_path() -> Path:
    """The bundled ``topics.yaml`` (installed wheel) or the checkout's copy (editable install)."""
    return _PACKAGED if _PACKAGED.exists() else _CHECKOUT


def load_topology(path: Path | None = None, prefix: str = "") -> Topology:
    """Parse and validate ``topics.yaml``; broker names get ``prefix`` (the namespace's)."""
    source = path or default_path()
    try:
        raw: dict[str, Any] = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"cannot read {source}: {exc}") from exc
    defaults = raw.get("defaults", {})
    topics = {
        name: _topic(f"{prefix}{name}", spec or {}, defaults)
        for name, spec in raw.get("topics", {}).items()
    }
    tables = {
        name: TableSpec(
            name=name,
            source=spec["source"],
            entity=spec.get("materialise_as"),
            description=spec.get("description", ""),
        )
        for name, spec in raw.get("tables", {}).items()
    }
    for table in tables.values():
        if table.source not in topics:
            raise TopologyError(f"table {table.name!r} names unknown source {table.source!r}")
    return Topology(
        topics=topics,
        tables=tables,
        default_partitions=int(defaults.get("partitions", 8)),
        default_replication_factor=int(defaults.get("replication_factor", 1)),
        prefix=prefix,
    )


def _topic(name: str, spec: dict[str, Any], defaults: dict[str, Any]) -> TopicSpec:
    merged = {**defaults, **spec}
    partitions = int(merged.get("partitions", 0))
    if partitions < 1:
        raise TopologyError(f"topic {name!r} needs partitions >= 1")
    policy = str(merged.get("cleanup_policy", "delete"))
    if policy not in {"delete", "compact", "compact,delete"}:
        raise TopologyError(f"topic {name!r} has unknown cleanup_policy {policy!r}")
    retention = merged.get("retention_ms")
    return TopicSpec(
        name=name,
        partitions=partitions,
        replication_factor=int(merged.get("replication_factor", 1)),
        cleanup_policy=policy,
        retention_ms=int(retention) if retention is not None else None,
        description=str(merged.get("description", "")).strip(),
    )
