"""The webhook receiver's core: verify, check, enqueue durably, answer with the right status.

Framework-neutral (plain aiohttp): the Faust web view (:mod:`cartloom.shopify.webhooks`)
and the benchmark both call :meth:`WebhookReceiver.handle`. A delivery is answered 200
only after the Kafka broker acknowledged it (``acks=all``); concurrent requests share
batches (``linger_ms``), so durability costs one batch round trip, not one per request.
Duplicates are enqueued too (and answered 200): the normaliser drops them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from cartloom import metrics
from cartloom.domain.errors import InvalidInput
from cartloom.domain.shopify import KNOWN_TOPICS, check_fits_topic, resource_key
from cartloom.kafka_clients import KafkaConnection, kafka_connection
from cartloom.partitioning import key_partition
from cartloom.settings import Settings
from cartloom.shopify.signatures import SignatureVerifier

log = logging.getLogger(__name__)

TOPIC = "shopify.webhooks"
HMAC_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
SHOP_HEADER = "X-Shopify-Shop-Domain"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
EVENT_ID_HEADER = "X-Shopify-Event-Id"
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"
API_VERSION_HEADER = "X-Shopify-API-Version"
RECEIVED_AT_HEADER = "cartloom-received-at"
#: Shopify headers copied to the Kafka record, lower-cased.
FORWARDED_HEADERS = (
    TOPIC_HEADER,
    SHOP_HEADER,
    WEBHOOK_ID_HEADER,
    EVENT_ID_HEADER,
    TRIGGERED_AT_HEADER,
    API_VERSION_HEADER,
)


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer to one delivery, and its outcome label (default: by status)."""

    status: int
    body: dict[str, Any]
    outcome: str | None = None

    @property
    def closes_connection(self) -> bool:
        """Whether the connection is closed after this answer (a body left half-read)."""
        return self.status == 408

    @property
    def json(self) -> bytes:
        """The body as the JSON bytes of the HTTP answer."""
        return orjson.dumps(self.body)


#: The answer to every delivery that made it into Kafka (built once, not per request).
ACCEPTED = Answer(200, {"status": "accepted"})


@dataclass
class _Batch:
    """Records for one partition collected during one linger window, and their shared fate.

    Each request waits on a future of its own (``waiters``): one that goes away cancels
    only its own wait, never its neighbours' batch.
    """

    builder: Any
    deadline: float
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def settle(self, error: BaseException | None) -> None:
        """Tell every request still waiting that the batch is in Kafka, or why not."""
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class KafkaEnqueuer:
    """A batching producer for ``shopify.webhooks``: enqueue returns once the broker has it.

    Records are appended to one open batch per partition (aiokafka's batch builder, a few
    microseconds per record, instead of a future and accumulator round per ``send``). One
    linger window, opened by the first record, closes every partition's batch at once so
    they travel in one produce request; a full batch goes early. Every request waiting on
    a batch learns its outcome at once. Partitions are chosen with Kafka's
    default partitioner (murmur2 of the key), as any client would.
    """

    def __init__(
        self, kafka: KafkaConnection, linger_ms: int, timeout: float, topic: str = TOPIC
    ) -> None:
        self._kafka = kafka
        self._topic = topic  # the broker name (a namespace prefixes it)
        self._linger = linger_ms / 1000
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._partitions = 0
        self._batches: dict[int, _Batch] = {}
        self._window: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._starting = asyncio.Lock()
        self.autostart = False

    @property
    def connected(self) -> bool:
        """Whether the producer is connected (deliveries can be enqueued)."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect (idempotent); called by the start hook, or by the first delivery if sooner."""
        async with self._starting:
            if self._producer is None:
                self._producer = await self._connect()

    async def _connect(self) -> AIOKafkaProducer:
        producer = self._kafka.producer(
            acks="all",
            max_batch_size=256 * 1024,
            request_timeout_ms=int(self._timeout * 1000),
            client_id="cartloom-webhooks",
        )
        try:
            await producer.start()
            self._partitions = len(await producer.partitions_for(self._topic))
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        """Send what is collected, wait for it, and disconnect; later deliveries get 503."""
        self.autostart = False
        self._flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=self._timeout)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def enqueue(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """Add one record to its partition's batch and wait until the broker acknowledged it.

        Raises :class:`KafkaUnavailable` if the producer is not running or the broker does
        not take the record within the timeout.
        """
        try:
            if self._producer is None and self.autostart:
                async with asyncio.timeout(self._timeout):
                    await self.start()
            if self._producer is None:
                raise KafkaUnavailable("producer not started")
            batch = self._append(key, value, headers)
            # The batch's deadline bounds the wait (one timer per window, not per request).
            waiter = asyncio.get_running_loop().create_future()
            batch.waiters.append(waiter)
            await waiter
        except (KafkaError, TimeoutError) as exc:
            raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from None

    def _append(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> _Batch:
        partition = key_partition(key, self._partitions)
        for _ in range(2):
            batch = self._batches.get(partition) or self._open(partition)
            if batch.builder.append(key=key, value=value, timestamp=None, headers=headers):
                return batch
            self._send_now({partition: self._batches.pop(partition)})  # full: send it alone
        raise KafkaUnavailable(f"a {len(value)}-byte record does not fit in a batch")

    def _open(self, partition: int) -> _Batch:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        batch = _Batch(self._producer.create_batch(), deadline)
        self._batches[partition] = batch
        if self._window is None:  # one linger window for every partition: one produce request
            self._window = loop.call_later(self._linger, self._flush)
        return batch

    def _flush(self) -> None:
        """Send every open batch (the linger window closed, or the enqueuer stops)."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        batches, self._batches = self._batches, {}
        if batches:
            self._send_now(batches)

    def _send_now(self, batches: dict[int, _Batch]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batches))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batches: dict[int, _Batch]) -> None:
        """Hand the window's batches to aiokafka together, then settle each one's waiters.

        One deadline (the earliest batch's) bounds the whole window: a batch the broker
        has not acknowledged by then fails with ``TimeoutError`` (the requests answer 503
        and Shopify retries; a record that lands anyway is a duplicate the normaliser drops).
        """
        producer = self._producer
        sent: list[tuple[_Batch, asyncio.Future[Any]]] = []
        try:
            async with asyncio.timeout_at(min(batch.deadline for batch in batches.values())):
                for partition, batch in batches.items():
                    if producer is None:
                        batch.settle(KafkaUnavailable("producer stopped with records collected"))
                        continue
                    try:
                        delivery = await producer.send_batch(
                            batch.builder, self._topic, partition=partition
                        )
                    except KafkaError as exc:
                        batch.settle(exc)
                    else:
                        sent.append((batch, delivery))
                if sent:
                    await asyncio.wait([delivery for _, delivery in sent])
        except TimeoutError:
            pass
        for batch, delivery in sent:
            if not delivery.done():
                batch.settle(TimeoutError("the broker did not acknowledge in time"))
            elif delivery.cancelled():
                batch.settle(KafkaError("delivery cancelled"))
            else:
                batch.settle(delivery.exception())
        for batch in batches.values():  # not handed over before the deadline (or refused)
            batch.settle(TimeoutError("the broker did not take the batch in time"))


class KafkaUnavailable(RuntimeError):  # noqa: N818 - names the condition the caller answers 503 to
    """The broker could not take a delivery in time."""


class WebhookReceiver:
    """Turns one HTTP request into an :class:`Answer`; keeps no per-request state."""

    def __init__(
        self,
        verifier: SignatureVerifier,
        enqueuer: KafkaEnqueuer,
        max_bytes: int,
        shops: frozenset[str] = frozenset(),
        body_timeout: float = 10.0,
    ):
        self.verifier = verifier
        self.enqueuer = enqueuer
        self.max_bytes = max_bytes
        #: Seconds the body may take once the head is in: a slow sender gets 408.
        self.body_timeout = body_timeout
        #: The shops this deployment serves (lower case); empty: any shop that verifies.
        self.shops = shops

    async def handle(self, request: web.BaseRequest) -> Answer:
        """Answer a delivery: 200, 400, 401, 408, 413 or 503 (see docs/shopify.md)."""
        started = time.perf_counter()
        headers = request.headers
        topic = headers.get(TOPIC_HEADER, "")
        label = topic if topic in KNOWN_TOPICS else "other"
        answer = await self._answer(request, headers, topic)
        outcome = answer.outcome or _OUTCOMES[answer.status]
        metrics.labelled(metrics.SHOPIFY_WEBHOOKS_RECEIVED, label, outcome).inc()
        metrics.SHOPIFY_WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        return answer

    async def _answer(
        self, request: web.BaseRequest, headers: Mapping[str, str], topic: str
    ) -> Answer:
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await read_body(request, self.max_bytes)
        except asyncio.IncompleteReadError:
            return Answer(400, {"error": "body shorter than its Content-Length"})
        except TimeoutError:
            return Answer(408, {"error": f"body not received within {self.body_timeout:g} s"})
        if body is None:
            return Answer(413, {"error": f"body larger than {self.max_bytes} bytes"})
        shop = headers.get(SHOP_HEADER)
        if not self.verifier.verify(body, headers.get(HMAC_HEADER), shop):
            return Answer(401, {"error": "missing or invalid X-Shopify-Hmac-Sha256"})
        webhook_id = headers.get(WEBHOOK_ID_HEADER)
        if not topic or not shop or not webhook_id:
            return Answer(400, {"error": "missing X-Shopify-Topic, -Shop-Domain or -Webhook-Id"})
        if self.shops and shop.lower() not in self.shops:
            return Answer(401, {"error": "shop not served by this deployment"}, "foreign_shop")
        try:
            payload = orjson.loads(body)
            if not isinstance(payload, dict):
                return Answer(400, {"error": "body is not a JSON object"})
            key = resource_key(topic, shop.lower(), payload)
        except orjson.JSONDecodeError:
            return Answer(400, {"error": "body is not JSON"})
        except InvalidInput as exc:
            return Answer(400, {"error": exc.detail})
        try:
            check_fits_topic(topic, shop.lower(), payload)
        except InvalidInput as exc:  # a signed body re-posted under another topic or shop
            return Answer(400, {"error": exc.detail}, "mismatched")
        record_headers = [
            (name.lower(), headers[name].encode()) for name in FORWARDED_HEADERS if name in headers
        ]
        record_headers.append((RECEIVED_AT_HEADER, repr(time.time()).encode()))
        try:
            await self.enqueuer.enqueue(key.encode(), body, record_headers)
        except KafkaUnavailable as exc:
            log.warning("webhook %s not enqueued, answering 503: %s", topic, exc)
            return Answer(503, {"error": "cannot enqueue now, retry later"})
        return ACCEPTED


async def read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The whole raw body, or None as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading; otherwise the
    body is read to its end (it may arrive in many TCP segments), chunked bodies included.
    """
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            return None
        if declared == 0:  # aiohttp's readexactly(0) on an ended stream raises
            return b""
        return await request.content.readexactly(declared)
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


_OUTCOMES = {
    200: "accepted",
    400: "malformed",
    401: "unauthorized",
    408: "slow",
    413: "oversized",
    503: "unavailable",
}


def build_receiver(settings: Settings) -> WebhookReceiver:
    """The receiver configured from ``settings`` (its producer is started separately)."""
    verifier = SignatureVerifier(settings.shopify_webhook_secret, settings.shopify_shop_secrets)
    if not verifier.configured:
        log.warning("no Shopify webhook secret configured: every delivery will get 401")
    enqueuer = KafkaEnqueuer(
        kafka_connection(settings),
        settings.shopify_producer_linger_ms,
        settings.shopify_webhook_enqueue_timeout,
        settings.topic_name(TOPIC),
    )
    shops = frozenset(settings.shopify_shop_domains)
    if shops:
        shops |= frozenset(settings.shopify_shop_secrets)
    return WebhookReceiver(
        verifier,
        enqueuer,
        settings.shopify_webhook_max_bytes,
        shops,
        settings.shopify_webhook_body_timeout_seconds,
    )
