"""Creates and checks the topics of ``topics.yaml`` on a live broker (``cartloom topics``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cartloom.kafka_clients import KafkaConnection
from cartloom.topology import TopicSpec

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class Drift:
    """A difference between ``topics.yaml`` and the broker."""

    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


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


async def apply_topics(kafka: KafkaConnection, specs: Sequence[TopicSpec]) -> list[str]:
    """Create every declared topic that is missing; return the names created."""
    admin = kafka.admin()
    await admin.start()
    try:
        existing = await observed_partitions(admin)
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    spec.partitions,
                    spec.replication_factor,
                    topic_configs=spec.configs,
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
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def check_topics(kafka: KafkaConnection, specs: Sequence[TopicSpec]) -> list[Drift]:
    """Drift between ``specs`` and the broker."""
    admin = kafka.admin()
    await admin.start()
    try:
        return compare_topics(specs, await observed_partitions(admin))
    finally:
        await admin.close()
