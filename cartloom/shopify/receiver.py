"""The webhook receiver's core: verify, check, enqueue durably, answer with the right status.

Framework-neutral (plain aiohttp): the Faust web view (:mod:`cartloom.agents.shopify_webhooks`)
and the benchmark both call :meth:`WebhookReceiver.handle`. A delivery is answered 200
only after the Kafka broker acknowledged it (``acks=all``); concurrent requests share
batches (``linger_ms``), so durability costs one batch round trip, not one per request.
Duplicates are enqueued too (and answered 200): the normaliser drops them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from cartloom.core import metrics
from cartloom.core.partitioning import key_partition
from cartloom.core.settings import Settings
from cartloom.domain.errors import InvalidInput
from cartloom.domain.shopify.normalise import KNOWN_TOPICS, check_fits_topic, resource_key
from cartloom.shopify.signatures import SignatureVerifier
from cartloom.stream.kafka_clients import KafkaConnection, kafka_connection

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
    """Records for one partition, and the fate they share.

    Each request waits on a future of its own (``waiters``): one that goes away cancels
    only its own wait, never its neighbours' batch.
    """

    partition: int
    builder: Any
    deadline: float
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: Handed to aiokafka (or being handed): it still takes records until aiokafka builds it.
    handed: bool = False
    settled: bool = False

    def settle(self, error: BaseException | None) -> None:
        """Tell every request waiting that the batch is in Kafka, or why not (once).

        The batch takes no record after this (aiokafka sends what it holds, if it has it).
        """
        if self.settled:
            return
        self.settled = True
        self.builder.close()
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class KafkaEnqueuer:
    """A batching producer for ``shopify.webhooks``: enqueue returns once the broker has it.

    Records are appended to one batch per partition (aiokafka's batch builder, a few
    microseconds per record, instead of a future and accumulator round per ``send``). One
    linger window, opened by the first record, hands every partition's new batch to
    aiokafka at once so they travel in one produce request. Partitions are chosen with
    Kafka's default partitioner (murmur2 of the key), as any client would.

    A batch handed to aiokafka keeps taking its partition's records until aiokafka's sender
    takes it for a produce request and builds it (aiokafka's own ``send`` appends to the
    queued batch in the same way; its batch builder refuses records once built). aiokafka
    sends one produce request per broker at a time and queues one batch per partition, so
    while a request is in flight the next one grows with whatever arrives. Before, every
    window handed over a batch of its own: a second batch for a partition whose slot was
    taken waited in aiokafka's ``add_batch``, and deliveries for one hot resource (one key,
    one partition) became a queue of small batches, one per round trip, whose tail gave up
    with ``KafkaTimeoutError`` (503) long before the timeout (``add_batch`` subtracts the
    whole time waited so far each time it wakes). Now a partition has at most one handover
    in progress: a batch waits in ``add_batch`` only behind a full one, never behind
    another waiting batch, and a partition's batches reach aiokafka, and Kafka, in order.
    (Appending after hand-over needs a producer without idempotence or transactions, whose
    sequence numbers are counted when a batch is taken: this one has neither.)
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
        #: The batch taking records, per partition (handed to aiokafka or not yet).
        self._current: dict[int, _Batch] = {}
        #: Full batches not handed over yet, per partition, oldest first.
        self._full: dict[int, collections.deque[_Batch]] = {}
        #: Partitions whose hand-over to aiokafka is in progress (at most one each).
        self._handing: set[int] = set()
        #: Partitions whose current batch's window closed during a hand-over in progress.
        self._due: set[int] = set()
        #: Batches to hand over at the next pass of the loop (their partition's turn came).
        self._ready: list[_Batch] = []
        self._ready_call: asyncio.Handle | None = None
        self._window: asyncio.TimerHandle | None = None
        #: Every batch not yet settled (and some settled ones), oldest first: one timer, at
        #: the oldest one's deadline, answers every batch still unsettled by its deadline.
        self._pending: collections.deque[_Batch] = collections.deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
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
        if any(not batch.settled for batch in self._pending):
            self._drained = asyncio.get_running_loop().create_future()
            # every batch is settled by its deadline at the latest (see _expire)
            await asyncio.wait([self._drained], timeout=self._timeout + 1)
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
            # The batch's deadline bounds the wait (one timer for every batch, see _expire).
            waiter = asyncio.get_running_loop().create_future()
            batch.waiters.append(waiter)
            await waiter
        except (KafkaError, TimeoutError) as exc:
            raise KafkaUnavailable(f"{type(exc).__name__}: {exc}") from None

    def _append(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> _Batch:
        partition = key_partition(key, self._partitions)
        for _ in range(2):
            batch = self._current.get(partition) or self._open(partition)
            if batch.builder.append(key=key, value=value, timestamp=None, headers=headers):
                return batch
            # Closed: aiokafka built it for a request, or it is full. The next one opens.
            del self._current[partition]
            if not batch.handed:  # full before its window closed: it goes first
                self._due.discard(partition)
                self._full.setdefault(partition, collections.deque()).append(batch)
                self._turn(partition)
        raise KafkaUnavailable(f"a {len(value)}-byte record does not fit in a batch")

    def _open(self, partition: int) -> _Batch:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        batch = _Batch(partition, self._producer.create_batch(), deadline)
        self._current[partition] = batch
        self._pending.append(batch)
        if self._expiry is None:
            self._expiry = loop.call_at(deadline, self._expire)
        if self._window is None:  # one linger window for every partition: one produce request
            self._window = loop.call_later(self._linger, self._flush)
        return batch

    def _flush(self) -> None:
        """The linger window closed: hand every new batch over (each partition in its turn)."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        batches = []
        for partition, batch in self._current.items():
            if batch.handed:
                continue
            if partition in self._handing:
                self._due.add(partition)
            else:
                batch.handed = True
                self._handing.add(partition)
                batches.append(batch)
        if batches:
            self._send_now(batches)

    def _turn(self, partition: int) -> None:
        """Hand over the partition's next batch, if one waits and no hand-over is in progress."""
        if partition in self._handing:
            return
        batch = None
        full = self._full.get(partition)
        while full and batch is None:
            batch = full.popleft()
            if batch.settled:  # expired while it waited
                batch = None
        if full is not None and not full:
            del self._full[partition]
        if batch is None and partition in self._due:
            self._due.discard(partition)
            batch = self._current.get(partition)
        if batch is None:
            return
        batch.handed = True
        self._handing.add(partition)
        self._ready.append(batch)
        if self._ready_call is None:
            self._ready_call = asyncio.get_running_loop().call_soon(self._send_ready)

    def _send_ready(self) -> None:
        self._ready_call = None
        batches, self._ready = self._ready, []
        self._send_now(batches)

    def _send_now(self, batches: list[_Batch]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batches))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batches: list[_Batch]) -> None:
        """Hand the batches to aiokafka together; each is settled when the broker answers.

        A partition's previous batch has been taken for a request unless it filled up, so
        aiokafka takes these at once and sends them in one produce request; behind a full
        one, a batch waits for its slot (and delays the others of this call as long).
        A batch the broker has not answered for by its deadline is answered ``TimeoutError``
        by :meth:`_expire` (the requests answer 503 and Shopify retries; a record that
        lands anyway is a duplicate the normaliser drops).
        """
        producer = self._producer
        for index, batch in enumerate(batches):
            partition = batch.partition
            try:
                if batch.settled:  # expired before its turn
                    continue
                if producer is None:
                    batch.settle(KafkaUnavailable("producer stopped with records collected"))
                    continue
                delivery = await producer.send_batch(
                    batch.builder, self._topic, partition=partition
                )
            except KafkaError as exc:
                batch.settle(exc)
            except Exception as exc:  # a bug: answer 503 rather than leave the partition stuck
                log.exception("handing a batch to the producer failed")
                batch.settle(KafkaError(f"{type(exc).__name__}: {exc}"))
            except BaseException:  # cancelled: nothing of this call will be handed over
                for unsent in batches[index:]:
                    unsent.settle(KafkaUnavailable("cancelled before it was handed over"))
                    self._handing.discard(unsent.partition)
                    if self._current.get(unsent.partition) is unsent:
                        del self._current[unsent.partition]
                raise
            else:
                delivery.add_done_callback(functools.partial(self._delivered, batch))
            finally:
                if self._current.get(partition) is batch and batch.settled:
                    del self._current[partition]
                self._handing.discard(partition)
                self._turn(partition)
        self._settled()

    def _delivered(self, batch: _Batch, delivery: asyncio.Future[Any]) -> None:
        """The broker answered for ``batch`` (or aiokafka gave it up): answer its requests."""
        if self._current.get(batch.partition) is batch:  # given up before it was built
            del self._current[batch.partition]
        if delivery.cancelled():
            batch.settle(KafkaError("delivery cancelled"))
        else:
            batch.settle(delivery.exception())
        self._settled()

    def _expire(self) -> None:
        """Answer every batch whose deadline has passed, then wait for the next deadline."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self._pending
        while pending and (pending[0].settled or pending[0].deadline <= now):
            batch = pending.popleft()
            if batch.settled:
                continue
            if self._current.get(batch.partition) is batch:  # takes no more records
                del self._current[batch.partition]
                self._due.discard(batch.partition)
            batch.settle(TimeoutError("the broker did not acknowledge in time"))
        if pending:
            self._expiry = loop.call_at(pending[0].deadline, self._expire)
        self._settled()

    def _settled(self) -> None:
        """Forget the settled batches at the queue's head; wake :meth:`stop` once none is left."""
        pending = self._pending
        while pending and pending[0].settled:
            pending.popleft()
        if not pending and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


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
