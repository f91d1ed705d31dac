"""The one home of how CartLoom connects to Kafka: every aiokafka client, and Faust's credentials.

The ``CARTLOOM_KAFKA_*`` settings (protocol, TLS files, SASL mechanism and credentials, an
OAUTHBEARER token provider) become one :class:`KafkaConnection` per process: the bootstrap
servers, the security keyword arguments every aiokafka client takes (one ``ssl.SSLContext``,
built once and shared) and the matching ``faust`` credentials object for the app's
``broker_credentials``. Every plain client (order intake, materialisers, Shopify write-back,
webhook receiver and ingress, reconciliation, audit, ``dlq replay``, ``loadgen``, topic admin,
the dev demo) is built by :meth:`KafkaConnection.producer`, :meth:`~KafkaConnection.consumer`
or :meth:`~KafkaConnection.admin`, and the Faust app by ``cartloom.stream.app.create_app`` with
:attr:`KafkaConnection.credentials`. ``tests/unit/test_kafka_clients.py`` fails when a
module builds an aiokafka client any other way.

aiokafka swallows the reason a connection failed (a refused certificate, a failed SASL
handshake) into a log line and raises only "Unable to bootstrap"; :class:`ConnectionFailures`
keeps those reasons so :func:`explain_connection_failure` can tell the operator which
setting to check.
"""

from __future__ import annotations

import importlib
import logging
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    UnsupportedSaslMechanismError,
)
from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from cartloom.core.settings import (
    KAFKA_TLS_PROTOCOLS,
    Settings,
    SettingsError,
    env_name,
)

#: Certificate verification codes (OpenSSL's X509_V_ERR_*) that get their own explanation.
_HOSTNAME_MISMATCH = 62
_CERT_EXPIRED = 10


class KafkaSecurityError(SettingsError):
    """The Kafka security settings cannot be used (a file that does not load, a bad provider)."""


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the brokers: bootstrap servers plus the security every client needs.

    Build it with :func:`kafka_connection` (from the settings) or :meth:`plaintext` (the
    embedded local broker and tests, which never use TLS or SASL).
    """

    bootstrap_servers: str
    #: ``security_protocol``, ``ssl_context``, ``sasl_*``: the same for every client.
    security: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"security_protocol": "PLAINTEXT"})
    )
    #: What Faust's ``broker_credentials`` gets (None for PLAINTEXT).
    credentials: CredentialsT | None = None

    @classmethod
    def plaintext(cls, bootstrap_servers: str) -> KafkaConnection:
        """A connection without TLS or SASL (the embedded local broker speaks nothing else)."""
        return cls(bootstrap_servers)

    @property
    def protocol(self) -> str:
        """``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``."""
        return str(self.security["security_protocol"])

    def client_kwargs(self, **options: Any) -> dict[str, Any]:
        """Keyword arguments of an aiokafka client: ``options`` plus servers and security.

        ``options`` may not set the servers or any security argument: those come from the
        settings alone, so no client can end up with less security than the others.
        """
        clash = {"bootstrap_servers", *self.security} & set(options)
        if clash:
            raise TypeError(f"set by the Kafka settings, not per client: {sorted(clash)}")
        return {"bootstrap_servers": self.bootstrap_servers, **self.security, **options}

    def producer(self, **options: Any) -> AIOKafkaProducer:
        """An ``AIOKafkaProducer`` with ``options`` (acks, linger_ms...)."""
        return AIOKafkaProducer(**self.client_kwargs(**options))

    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        """An ``AIOKafkaConsumer`` of ``topics`` (none: assign partitions later)."""
        return AIOKafkaConsumer(*topics, **self.client_kwargs(**options))

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        """An ``AIOKafkaAdminClient`` (topic creation and description)."""
        return AIOKafkaAdminClient(**self.client_kwargs(**options))


def kafka_connection(settings: Settings) -> KafkaConnection:
    """The connection ``settings`` describe; built once per process for the same settings.

    Raises :class:`KafkaSecurityError` (naming the setting) when a TLS file does not load
    or the OAUTHBEARER token provider cannot be imported or built.
    """
    key_password = settings.kafka_ssl_key_password
    sasl_password = settings.kafka_sasl_password
    return _connection(
        settings.bootstrap_servers,
        settings.kafka_security_protocol,
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        None if key_password is None else key_password.get_secret_value(),
        settings.kafka_ssl_check_hostname,
        settings.kafka_sasl_mechanism,
        settings.kafka_sasl_username,
        None if sasl_password is None else sasl_password.get_secret_value(),
        settings.kafka_sasl_oauth_token_provider,
    )


@lru_cache(maxsize=8)
def _connection(
    bootstrap_servers: str,
    protocol: str,
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    key_password: str | None,
    check_hostname: bool,
    mechanism: str | None,
    username: str | None,
    password: str | None,
    token_provider: str | None,
) -> KafkaConnection:
    context = None
    if protocol in KAFKA_TLS_PROTOCOLS:
        context = _ssl_context(cafile, certfile, keyfile, key_password, check_hostname)
    security: dict[str, Any] = {"security_protocol": protocol}
    credentials: CredentialsT | None = None
    if protocol == "SSL":
        security["ssl_context"] = context
        credentials = SSLCredentials(context)
    elif protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert mechanism is not None  # Settings refuse SASL without a mechanism
        security |= {"sasl_mechanism": mechanism, "ssl_context": context}
        if mechanism == "OAUTHBEARER":
            assert token_provider is not None  # Settings refuse OAUTHBEARER without one
            provider = load_token_provider(token_provider)
            security["sasl_oauth_token_provider"] = provider
            credentials = OAuthCredentials(oauth_cb=provider, ssl_context=context)
        else:
            security |= {"sasl_plain_username": username, "sasl_plain_password": password}
            credentials = SASLCredentials(
                username=username, password=password, ssl_context=context, mechanism=mechanism
            )
    return KafkaConnection(bootstrap_servers, MappingProxyType(security), credentials)


def _ssl_context(
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    key_password: str | None,
    check_hostname: bool,
) -> ssl.SSLContext:
    """A client context: the CA file (else the system's trust store), a client certificate."""
    ca_setting = env_name("kafka_ssl_cafile")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if cafile is None else str(cafile)
        )
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            f"{ca_setting}: cannot load CA certificates from {cafile} ({exc}): expected PEM"
        ) from None
    # Verification of the chain stays on either way; only the name check can be turned off.
    context.check_hostname = check_hostname
    if certfile is not None:
        key_setting = env_name("kafka_ssl_key_password")

        def password() -> str:
            # Always a callback: without one OpenSSL would prompt on the terminal.
            if key_password is None:
                raise KafkaSecurityError(f"the client key is encrypted: set {key_setting}")
            return key_password

        try:
            context.load_cert_chain(
                str(certfile), None if keyfile is None else str(keyfile), password
            )
        except (ssl.SSLError, OSError) as exc:
            files = f"{env_name('kafka_ssl_certfile')} ({certfile})"
            if keyfile is not None:
                files += f" and {env_name('kafka_ssl_keyfile')} ({keyfile})"
            raise KafkaSecurityError(
                f"cannot load the client certificate and key from {files}: {exc} (a wrong"
                f" {key_setting}, a key that is not the certificate's, or not PEM)"
            ) from None
    return context


def load_token_provider(path: str) -> AbstractTokenProvider:
    """Import ``module:attribute``, call it, and check it gave an aiokafka token provider."""
    setting = env_name("kafka_sasl_oauth_token_provider")
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise KafkaSecurityError(f"{setting}: cannot import {path}: {exc}") from None
    if not callable(target):
        raise KafkaSecurityError(f"{setting}: {path} is not callable (a class or a factory)")
    try:
        provider = target()
    except Exception as exc:
        raise KafkaSecurityError(f"{setting}: {path}() failed: {exc!r}") from None
    if not isinstance(provider, AbstractTokenProvider):
        raise KafkaSecurityError(
            f"{setting}: {path}() returned {type(provider).__name__}, not an"
            " aiokafka.abc.AbstractTokenProvider"
        )
    return provider


class ConnectionFailures(logging.Handler):
    """Keeps the exceptions aiokafka logs while it fails to connect (it raises none of them)."""

    def __init__(self, keep: int = 16) -> None:
        super().__init__(logging.DEBUG)
        self.causes: deque[BaseException] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the exceptions among the record's arguments; print nothing."""
        args = record.args if isinstance(record.args, tuple) else ()
        self.causes.extend(arg for arg in args if isinstance(arg, BaseException))


def _tls_hint(settings: Settings, cause: BaseException) -> str | None:
    cafile = settings.kafka_ssl_cafile
    ca_setting = env_name("kafka_ssl_cafile")
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == _HOSTNAME_MISMATCH:
            return (
                "the broker's certificate does not name the host connected to: use the names in"
                f" its certificate in {env_name('broker_url')} (and the brokers' advertised"
                f" listeners), or set {env_name('kafka_ssl_check_hostname')}=false (not"
                " recommended)"
            )
        if cause.verify_code == _CERT_EXPIRED:
            return "the broker's certificate has expired (or this machine's clock is wrong)"
        if cafile is not None:
            return (
                f"the broker's certificate is not signed by a CA in {ca_setting} ({cafile}):"
                " set it to the CA certificate that signed the brokers' certificates"
            )
        return (
            "the broker's certificate is not signed by a CA this system trusts: set"
            f" {ca_setting} to the CA certificate that signed the brokers' certificates"
        )
    if isinstance(cause, ssl.SSLError):
        reason = f"{cause.reason} {cause}".upper()
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
            return (
                f"the listener does not speak TLS: check {env_name('kafka_security_protocol')}"
                f" and the port in {env_name('broker_url')}"
            )
        if "CERTIFICATE_REQUIRED" in reason:
            return (
                f"the broker requires a client certificate: set {env_name('kafka_ssl_certfile')}"
                f" and {env_name('kafka_ssl_keyfile')}"
            )
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return (
                f"the broker refused the client certificate of {env_name('kafka_ssl_certfile')}"
                " (not signed by a CA it trusts, or expired)"
            )
        return (
            f"the TLS handshake failed: check {ca_setting}, {env_name('kafka_ssl_certfile')} and"
            f" {env_name('kafka_ssl_keyfile')}"
        )
    return None


def _hint(settings: Settings, cause: BaseException | None) -> str:
    protocol = settings.kafka_security_protocol
    protocol_setting = env_name("kafka_security_protocol")
    if cause is not None:
        tls = _tls_hint(settings, cause)
        if tls is not None:
            return tls
        if isinstance(cause, AuthenticationFailedError | UnsupportedSaslMechanismError):
            if settings.kafka_sasl_mechanism == "OAUTHBEARER":
                checked = env_name("kafka_sasl_oauth_token_provider")
            else:
                checked = f"{env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')}"
            return (
                f"SASL authentication failed: check {env_name('kafka_sasl_mechanism')}"
                f" ({settings.kafka_sasl_mechanism}) and {checked}"
            )
        if isinstance(cause, ConnectionRefusedError):
            return f"nothing accepts connections there: check {env_name('broker_url')}"
        if isinstance(cause, KafkaConnectionError | TimeoutError):  # closed, or no answer
            return _closed_hint(settings)
    return f"check {env_name('broker_url')} and {protocol_setting} ({protocol})"


def _closed_hint(settings: Settings) -> str:
    """The broker closed the connection (or never answered) without a TLS or SASL error."""
    protocol = settings.kafka_security_protocol
    protocol_setting = env_name("kafka_security_protocol")
    if protocol not in KAFKA_TLS_PROTOCOLS:
        return (
            "the broker closed the connection or did not answer: if its listener uses TLS,"
            f" set {protocol_setting} to SSL or SASL_SSL"
        )
    certfile = env_name("kafka_ssl_certfile")
    if settings.kafka_ssl_certfile is None:
        certificate = f"requires a client certificate (set {certfile} and"
        certificate += f" {env_name('kafka_ssl_keyfile')})"
    else:
        certificate = f"refused the client certificate of {certfile}"
    hint = f"the TLS handshake passed, then the broker closed the connection: it {certificate}"
    if protocol == "SSL":
        hint += f", or its listener expects SASL ({protocol_setting}=SASL_SSL)"
    return hint


def explain_connection_failure(
    settings: Settings, error: BaseException, causes: deque[BaseException] | None = None
) -> str:
    """One paragraph for the operator: where CartLoom tried, what failed, which setting to check."""
    cause = causes[-1] if causes else None
    detail = f": {cause}" if cause is not None else f" ({error})"
    hint = _hint(settings, cause)
    return (
        f"cannot connect to Kafka at {settings.bootstrap_servers} with"
        f" {env_name('kafka_security_protocol')}={settings.kafka_security_protocol}{detail}."
        f" {hint[:1].upper()}{hint[1:]}."
    )


async def check_connection(kafka: KafkaConnection) -> None:
    """Reach the brokers once (metadata through an admin client); raise if they cannot be."""
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()
