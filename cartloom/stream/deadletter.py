"""Dead-letter topics: where an event goes, with its reason and origin, instead of being lost.

Faust acknowledges an event whose agent raises and never processes it again; CartLoom's
agents catch every failure per event and call :func:`send_to_dead_letter`, so the
partition keeps moving and nothing disappears silently. The sends return their
deliveries, which the caller awaits before the input is acknowledged.

The plain aiokafka loops (order intake, materialisers, Shopify write-back) queue their
dead letters with :func:`queue_dead_letter` on a :class:`~cartloom.stream.deliveries.Deliveries`
and commit only once the broker acknowledged them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import cache
from typing import Any

import faust

from cartloom.core import metrics
from cartloom.domain.errors import RejectReason
from cartloom.stream.deliveries import Deliveries

REASON_HEADER = "cartloom-reason"
DETAIL_HEADER = "cartloom-detail"
ORIGIN_TOPIC_HEADER = "cartloom-origin-topic"
ORIGIN_PARTITION_HEADER = "cartloom-origin-partition"
ORIGIN_OFFSET_HEADER = "cartloom-origin-offset"
#: Which store could not take a changelog record (``sinks.dlq``).
STORE_HEADER = "cartloom-store"
_MAX_DETAIL = 1000
#: A dead letter is the original record, which the broker already took on its source
#: topic: the producer does not second-guess the broker (Kafka's own request ceiling).
DEAD_LETTER_MAX_REQUEST_BYTES = 104_857_600
DLQ_SUFFIX = ".dlq"


def dead_letter_topic_name(source: str) -> str:
    """The dead-letter topic of ``source``."""
    return f"{source}{DLQ_SUFFIX}"


@cache
def dead_letter_topic(source: str) -> Any:
    """The Faust handle of ``source``'s dead-letter topic (declared in ``topics.yaml``)."""
    from cartloom.stream.topics import declared_topic

    return declared_topic(dead_letter_topic_name(source))


def dead_letter_headers(message: Any, reason: RejectReason, detail: str) -> dict[str, bytes]:
    """Headers that say why ``message`` was refused and where it came from."""
    return {
        REASON_HEADER: reason.value.encode(),
        DETAIL_HEADER: detail[:_MAX_DETAIL].encode(errors="replace"),
        ORIGIN_TOPIC_HEADER: str(message.topic).encode(),
        ORIGIN_PARTITION_HEADER: str(message.partition).encode(),
        ORIGIN_OFFSET_HEADER: str(message.offset).encode(),
    }


async def send_to_dead_letter(
    dlq: faust.TopicT, event: faust.EventT[Any], reason: RejectReason, detail: str
) -> Awaitable[Any]:
    """Copy ``event``'s original bytes to ``dlq`` with the reason; return the delivery."""
    message = event.message
    return await send_item_to_dead_letter(dlq, message, message.key, message.value, reason, detail)


async def send_item_to_dead_letter(
    dlq: faust.TopicT,
    message: Any,
    key: bytes | None,
    value: bytes | None,
    reason: RejectReason,
    detail: str,
) -> Awaitable[Any]:
    """Send ``key``/``value`` (one item of ``message``, or all of it) to ``dlq``; count it.

    Returns the delivery: the caller awaits it before acknowledging ``message``.
    """
    headers = dead_letter_headers(message, reason, detail)
    delivery = await dlq.send(key=key, value=value, headers=headers)
    metrics.DEAD_LETTERS.labels(topic=message.topic, reason=reason.value).inc()
    return delivery


async def queue_dead_letter(
    deliveries: Deliveries,
    dlq: str,
    record: Any,
    reason: RejectReason,
    detail: str,
    extra_headers: dict[str, bytes] | None = None,
) -> None:
    """Queue a byte-for-byte copy of a consumed ``record`` for ``dlq``, with the reason.

    The caller awaits ``deliveries.acknowledged()`` before it commits, and counts the dead
    letter (``cartloom_dead_letters_total``) only then.
    """
    headers = {**dead_letter_headers(record, reason, detail), **(extra_headers or {})}
    await deliveries.send(dlq, record.value, key=record.key, headers=list(headers.items()))
