"""Creates and checks the topics of ``topics.yaml`` on a live broker (``cartloom topics``).

``topics check`` compares each declared topic's partition count and the settings
``topics.yaml`` gives it (``cleanup.policy``, and ``retention.ms`` where it is set and the
topic is not compacted) with what the broker reports. A broker need not report a setting
(the embedded Tansu broker reports only those a topic was created with): such a setting
is listed as "not reported by the broker", neither drift nor a match.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from cartloom.core.topology import TopicSpec
from cartloom.stream.kafka_clients import KafkaConnection

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
#: The topic settings ``topics check`` compares, besides the partition count.
CHECKED_SETTINGS = ("cleanup.policy", "retention.ms")


@dataclass(frozen=True)
class Drift:
    """A difference between ``topics.yaml`` and the broker."""

    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


@dataclass(frozen=True)
class Unreported:
    """A setting ``topics.yaml`` declares that the broker did not report: not compared."""

    topic: str
    setting: str
    expected: str

    def __str__(self) -> str:
        return (
            f"{self.topic}: {self.setting} not reported by the broker "
            f"(topics.yaml says {self.expected})"
        )


@dataclass(frozen=True)
class TopicCheck:
    """What ``topics check`` found: drift, and the settings it could not compare."""

    topics: int
    drift: list[Drift] = field(default_factory=list)
    unreported: list[Unreported] = field(default_factory=list)


def _same_setting(name: str, reported: str, expected: str) -> bool:
    if name == "cleanup.policy":  # a list: "compact,delete" is "delete, compact"
        return _policies(reported) == _policies(expected)
    try:
        return int(reported) == int(expected)
    except ValueError:
        return reported.strip() == expected


def _policies(value: str) -> set[str]:
    return {part.strip().lower() for part in value.strip("[]").split(",") if part.strip()}


def compare_settings(
    specs: Sequence[TopicSpec], reported: Mapping[str, Mapping[str, str | None]]
) -> tuple[list[Drift], list[Unreported]]:
    """Drift and unreported settings of the topics in ``reported`` (topic -> name -> value).

    Each spec's declared settings (:attr:`TopicSpec.configs`) are compared with what the
    broker reported; a topic absent from ``reported`` is skipped (it is missing, which
    :func:`compare_topics` says), and a setting the broker left out, or reported without
    a value, is :class:`Unreported`.
    """
    drift: list[Drift] = []
    unreported: list[Unreported] = []
    for spec in specs:
        settings = reported.get(spec.name)
        if settings is None:
            continue
        for name, expected in spec.configs.items():
            value = settings.get(name)
            if value is None:
                unreported.append(Unreported(spec.name, name, expected))
            elif not _same_setting(name, value, expected):
                drift.append(Drift(spec.name, f"{name} is {value}, topics.yaml says {expected}"))
    return drift, unreported


def compare_topics(specs: Sequence[TopicSpec], observed: dict[str, int]) -> list[Drift]:
    """Drift between the declared specs and ``observed`` (topic -> partition count)."""
    drift = []
    for spec in specs:
        partitions = observed.get(spec.name)
        if partitions is None:
            drift.append(Drift(spec.name, "missing"))
        elif partitions != spec.partitions:
            drift.append(
                Drift(spec.name, f"has {partitions} partitions, topics.yaml says {spec.partitions}")
            )
    return drift


async def observed_partitions(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Partition count of every topic on the broker."""
    names = list(await admin.list_topics())
    if not names:
        return {}
    described = await admin.describe_topics(names)
    return {
        entry["topic"]: len(entry["partitions"])
        for entry in described
        if entry.get("error_code", 0) == 0
    }


class TopicPartitionsError(Exception):
    """Topics that already exist with another partition count than ``topics.yaml`` gives.

    A broker creates a topic on a client's first metadata request for it (Kafka's
    ``auto.create.topics.enable``, on by default, and the embedded broker alike), with the
    broker's default partition count. A worker cannot use such a topic: a table's changelog
    must have the partitions of the topic it is keyed by, or a write to the changelog names a
    partition that does not exist.
    """

    def __init__(self, drift: Sequence[Drift]) -> None:
        super().__init__("; ".join(str(item) for item in drift))
        self.drift = list(drift)


async def apply_topics(kafka: KafkaConnection, specs: Sequence[TopicSpec]) -> list[str]:
    """Create every declared topic that is missing; return the names created.

    Raises :class:`TopicPartitionsError` when a declared topic exists with another partition
    count, the others created first. The counts are read again after creating: a client may
    have had the broker create a topic between the first look and the creation, which then
    answers "already exists".
    """
    admin = kafka.admin()
    await admin.start()
    try:
        existing = await observed_partitions(admin)
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await _create(admin, missing)
            existing = await observed_partitions(admin)
        present = [spec for spec in specs if spec.name in existing]
        differing = compare_topics(present, existing)
        if differing:
            raise TopicPartitionsError(differing)
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, missing: Sequence[TopicSpec]) -> None:
    response = await admin.create_topics(
        [
            NewTopic(
                spec.name, spec.partitions, spec.replication_factor, topic_configs=spec.configs
            )
            for spec in missing
        ]
    )
    failed = [
        f"{topic}: {message or code}"
        for topic, code, message in response.topic_errors
        if code not in (0, _TOPIC_ALREADY_EXISTS)
    ]
    if failed:
        raise RuntimeError("could not create topics: " + "; ".join(failed))


async def reported_settings(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> dict[str, dict[str, str | None]]:
    """The settings the broker reports per topic (DescribeConfigs): topic -> name -> value.

    A topic the broker answered with an error, or a broker that does not answer
    DescribeConfigs at all, reports nothing (an empty mapping), which the comparison shows
    as "not reported by the broker", not as drift.
    """
    settings: dict[str, dict[str, str | None]] = {topic: {} for topic in topics}
    if not topics:
        return settings
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    try:
        responses = await admin.describe_configs(resources)
    except KafkaError as exc:
        log.warning("the broker did not describe the topics' settings: %r", exc)
        return settings
    for response in responses:
        answer: dict[str, Any] = response.to_object()
        for resource in answer.get("resources", []):
            topic = resource.get("resource_name")
            if topic not in settings or resource.get("error_code", 0) != 0:
                continue
            for entry in resource.get("config_entries", []):
                settings[topic][entry["config_names"]] = entry.get("config_value")
    return settings


async def check_topics(kafka: KafkaConnection, specs: Sequence[TopicSpec]) -> TopicCheck:
    """Drift between ``specs`` and the broker, and the settings the broker did not report."""
    admin = kafka.admin()
    await admin.start()
    try:
        partitions = await observed_partitions(admin)
        present = [spec.name for spec in specs if spec.name in partitions]
        drift, unreported = compare_settings(specs, await reported_settings(admin, present))
        return TopicCheck(len(specs), compare_topics(specs, partitions) + drift, unreported)
    finally:
        await admin.close()
