"""A throwaway PKI for the tests: a CA, a server certificate for 127.0.0.1, a client's.

Made with ``trustme`` (a dev dependency); the client key is encrypted with
:data:`CLIENT_KEY_PASSWORD`, so the key password setting is exercised wherever it is used.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

CLIENT_KEY_PASSWORD = "tls-test-key-password"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one test PKI: the CA, the server's chain and key, a client's."""

    ca: Path
    server: Path  # certificate chain and key in one file (stunnel reads both from it)
    client_cert: Path
    client_key: Path  # encrypted with CLIENT_KEY_PASSWORD


def make_pki(directory: Path, name: str = "pki") -> TlsFiles:
    """A fresh CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    files = TlsFiles(
        ca=directory / "ca.pem",
        server=directory / "server.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(files.server)
    )
    client = ca.issue_cert("cartloom-client@example.com")
    for index, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(files.client_cert), append=index > 0)
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    files.client_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(CLIENT_KEY_PASSWORD.encode()),
        )
    )
    return files


def client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """What an outside producer would use: trust the test CA, present the client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.client_cert), str(files.client_key), CLIENT_KEY_PASSWORD)
    return context
