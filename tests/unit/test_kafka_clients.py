"""One client factory: the CARTLOOM_KAFKA_* settings reach Faust and every aiokafka client.

Three layers, each able to fail on its own:

- a scan of ``cartloom/`` (AST): no module builds an aiokafka client, or a connection,
  except through :mod:`cartloom.stream.kafka_clients`;
- the factory per protocol and mechanism: the keyword arguments of real aiokafka clients
  and Faust's credentials (the very function Faust's driver feeds its own clients with);
- every entry point that builds a client, run with secured settings and the client classes
  replaced by recorders: each client it builds carries exactly the settings' security.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import AuthenticationFailedError, KafkaConnectionError
from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from cartloom.core.settings import Settings, SettingsError, load_settings
from cartloom.core.topology import load_topology
from cartloom.stream import kafka_clients
from cartloom.stream.app import create_app
from cartloom.stream.kafka_clients import (
    ConnectionFailures,
    KafkaConnection,
    KafkaSecurityError,
    explain_connection_failure,
    kafka_connection,
    load_token_provider,
)
from tests.pki import CLIENT_KEY_PASSWORD, TlsFiles, make_pki

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cartloom"
FACTORY = PACKAGE / "stream" / "kafka_clients.py"
CLIENT_CLASSES = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}
#: The one module allowed a connection without TLS or SASL: the embedded local broker's.
PLAINTEXT_ALLOWED = {PACKAGE / "devstack" / "stack.py"}
TOKEN_PROVIDER = f"{__name__}:StaticTokenProvider"


class StaticTokenProvider(AbstractTokenProvider):
    """A token provider as an MSK IAM signer would be, minus AWS."""

    async def token(self) -> str:
        return "unit-test-token"


def not_a_provider() -> object:
    return object()


# ---- the scan ----------------------------------------------------------------------------


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def violations(source: str, path: Path) -> list[str]:
    """Where ``source`` builds a Kafka client or connection other than through the factory."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ClassDef):
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if bases & CLIENT_CLASSES:
                found.append(f"{where}: subclasses an aiokafka client")
        if not isinstance(node, ast.Call):
            continue
        name = _called_name(node)
        if name in CLIENT_CLASSES:
            found.append(f"{where}: builds {name} itself")
        if any(keyword.arg == "bootstrap_servers" for keyword in node.keywords):
            found.append(f"{where}: passes bootstrap_servers to {name}")
        if name == "KafkaConnection":
            found.append(f"{where}: builds a KafkaConnection (use kafka_connection(settings))")
        if name == "plaintext" and path not in PLAINTEXT_ALLOWED:
            found.append(f"{where}: a PLAINTEXT connection ignores CARTLOOM_KAFKA_*")
    return found


def package_modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != FACTORY:
            yield path


def test_no_module_builds_a_kafka_client_except_through_the_factory() -> None:
    found = [
        problem for path in package_modules() for problem in violations(path.read_text(), path)
    ]
    assert not found, (
        "use cartloom.stream.kafka_clients (kafka_connection(settings)):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "snippet",
    [
        "AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)",
        "aiokafka.AIOKafkaConsumer('orders', group_id='g')",
        "admin.AIOKafkaAdminClient()",
        "client = AIOKafkaClient(loop=None)",
        "class Mine(AIOKafkaProducer): pass",
        "make(bootstrap_servers='kafka:9092')",
        "KafkaConnection('kafka:9092')",
        "KafkaConnection.plaintext(settings.bootstrap_servers).producer()",
    ],
)
def test_the_scan_sees_a_client_built_around_the_factory(snippet: str) -> None:
    assert violations(snippet, PACKAGE / "agents" / "example.py")


def test_the_scan_reads_the_factory_itself() -> None:
    # The factory is the only place the clients are built: the scan must see them there.
    built = {
        _called_name(node)
        for node in ast.walk(ast.parse(FACTORY.read_text()))
        if isinstance(node, ast.Call)
    }
    assert {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"} <= built


def test_the_faust_app_gets_the_broker_credentials() -> None:
    calls = [
        node
        for path in package_modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _called_name(node) in {"App", "CartloomApp"}
    ]
    assert calls, "cartloom/stream/app.py builds the app"
    for call in calls:
        assert any(k.arg == "broker_credentials" for k in call.keywords)


# ---- the factory per protocol and mechanism --------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("unit-pki"))


def tls_fields(pki: TlsFiles, **more: Any) -> dict[str, Any]:
    return {
        "kafka_ssl_cafile": pki.ca,
        "kafka_ssl_certfile": pki.client_cert,
        "kafka_ssl_keyfile": pki.client_key,
        "kafka_ssl_key_password": CLIENT_KEY_PASSWORD,
        **more,
    }


def secured(pki: TlsFiles, case: str, **more: Any) -> Settings:
    """Settings for one protocol/mechanism case (TLS ones with the test PKI)."""
    fields: dict[str, Any] = {"broker_url": "kafka://b-1:9096;kafka://b-2:9096"}
    if case == "SSL":
        fields |= {"kafka_security_protocol": "SSL", **tls_fields(pki)}
    elif case == "SASL_PLAINTEXT/PLAIN":
        fields |= {
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "cartloom",
            "kafka_sasl_password": "plain-secret",
        }
    elif case.startswith("SASL_SSL/SCRAM"):
        fields |= {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": case.split("/", 1)[1],
            "kafka_sasl_username": "cartloom",
            "kafka_sasl_password": "scram-secret",
            "kafka_ssl_cafile": pki.ca,
        }
    elif case == "SASL_SSL/PLAIN":  # Confluent Cloud
        fields |= {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "API-KEY",
            "kafka_sasl_password": "api-secret",
        }
    elif case == "SASL_SSL/OAUTHBEARER":  # MSK IAM through the token provider hook
        fields |= {
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "OAUTHBEARER",
            "kafka_sasl_oauth_token_provider": TOKEN_PROVIDER,
        }
    else:
        assert case == "PLAINTEXT"
    return Settings(**(fields | more))


CASES = [
    "PLAINTEXT",
    "SSL",
    "SASL_PLAINTEXT/PLAIN",
    "SASL_SSL/PLAIN",
    "SASL_SSL/SCRAM-SHA-256",
    "SASL_SSL/SCRAM-SHA-512",
    "SASL_SSL/OAUTHBEARER",
]


@pytest.mark.parametrize("case", CASES)
def test_faust_and_the_plain_clients_get_the_same_security(pki: TlsFiles, case: str) -> None:
    settings = secured(pki, case)
    kafka = kafka_connection(settings)
    assert kafka.bootstrap_servers == "b-1:9096,b-2:9096"
    # What Faust's aiokafka driver gives its consumer, producer and topic creation.
    assert credentials_to_aiokafka_auth(kafka.credentials) == dict(kafka.security)
    app = create_app(settings, load_topology())
    assert app.conf.broker_credentials is kafka.credentials


@pytest.mark.parametrize("case", CASES)
def test_the_security_is_what_the_settings_say(pki: TlsFiles, case: str) -> None:
    settings = secured(pki, case)
    kafka = kafka_connection(settings)
    protocol = case.split("/")[0]
    assert kafka.security["security_protocol"] == protocol
    context = kafka.security.get("ssl_context")
    if protocol in ("SSL", "SASL_SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
    else:
        assert context is None
    if protocol == "PLAINTEXT":
        assert kafka.credentials is None
    elif protocol == "SSL":
        assert isinstance(kafka.credentials, SSLCredentials)
        assert kafka.credentials.context is context
    else:
        mechanism = case.split("/")[1]
        assert kafka.security["sasl_mechanism"] == mechanism
        if mechanism == "OAUTHBEARER":
            assert isinstance(kafka.credentials, OAuthCredentials)
            assert isinstance(kafka.security["sasl_oauth_token_provider"], StaticTokenProvider)
            assert "sasl_plain_password" not in kafka.security
        else:
            assert isinstance(kafka.credentials, SASLCredentials)
            assert kafka.credentials.mechanism.value == mechanism
            assert kafka.security["sasl_plain_username"] == settings.kafka_sasl_username
            password = settings.kafka_sasl_password
            assert password is not None
            assert kafka.security["sasl_plain_password"] == password.get_secret_value()


async def handshake(pki: TlsFiles, client: ssl.SSLContext) -> dict[str, Any]:
    """A TLS handshake with a server that requires a client certificate of the test CA."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    server.load_cert_chain(str(pki.server))
    server.verify_mode = ssl.CERT_REQUIRED
    seen: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(writer.get_extra_info("peercert"))
        writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        peer = await asyncio.wait_for(seen, 5)
        writer.close()
        return peer
    finally:
        listener.close()


async def test_the_context_trusts_the_ca_and_presents_the_client_certificate(
    pki: TlsFiles,
) -> None:
    context = kafka_connection(secured(pki, "SSL")).security["ssl_context"]
    assert len(context.get_ca_certs()) == 1, "the CA file only, not the system store"
    peer = await handshake(pki, context)
    names = [value for rdn in peer["subjectAltName"] for value in rdn[1:]]
    assert "cartloom-client@example.com" in str(peer) or names


async def test_without_the_ca_file_the_test_ca_is_not_trusted(pki: TlsFiles) -> None:
    context = kafka_connection(secured(pki, "SSL", kafka_ssl_cafile=None)).security["ssl_context"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(pki, context)


def test_the_hostname_check_can_be_turned_off_but_not_verification(pki: TlsFiles) -> None:
    context = kafka_connection(secured(pki, "SSL", kafka_ssl_check_hostname=False)).security[
        "ssl_context"
    ]
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_the_context_is_built_once_per_process(pki: TlsFiles) -> None:
    first = kafka_connection(secured(pki, "SSL"))
    assert kafka_connection(secured(pki, "SSL")) is first


def test_a_client_cannot_override_the_security(pki: TlsFiles) -> None:
    kafka = kafka_connection(secured(pki, "SSL"))
    for option in ("security_protocol", "ssl_context", "bootstrap_servers"):
        with pytest.raises(TypeError, match=option):
            kafka.client_kwargs(**{option: None})


async def test_real_clients_carry_the_security(pki: TlsFiles) -> None:
    for case in CASES:
        kafka = kafka_connection(secured(pki, case))
        producer = kafka.producer(acks="all")
        consumer = kafka.consumer("orders", group_id="unit")
        admin = kafka.admin(request_timeout_ms=1000)
        for client in (producer.client, consumer._client, admin._client):
            assert client._bootstrap_servers == kafka.bootstrap_servers
            assert client._security_protocol == kafka.security["security_protocol"], case
            assert client._ssl_context is kafka.security.get("ssl_context"), case
            if "sasl_mechanism" in kafka.security:
                assert client._sasl_mechanism == kafka.security["sasl_mechanism"], case
                assert client._sasl_plain_username == kafka.security.get("sasl_plain_username")
                assert client._sasl_plain_password == kafka.security.get("sasl_plain_password")
                provider = kafka.security.get("sasl_oauth_token_provider")
                assert client._sasl_oauth_token_provider is provider
        await producer.stop()
        await consumer.stop()
        await admin.close()


# ---- settings that do not fit together -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, ["CARTLOOM_KAFKA_SASL_MECHANISM"]),
        (
            {
                "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "CARTLOOM_KAFKA_SASL_MECHANISM": "PLAIN",
            },
            ["CARTLOOM_KAFKA_SASL_USERNAME", "CARTLOOM_KAFKA_SASL_PASSWORD"],
        ),
        (
            {
                "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "CARTLOOM_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            },
            ["CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER"],
        ),
        (
            {"CARTLOOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            ["CARTLOOM_KAFKA_SASL_MECHANISM", "CARTLOOM_KAFKA_SECURITY_PROTOCOL"],
        ),
        (
            {"CARTLOOM_KAFKA_SSL_CAFILE": "{ca}"},
            ["CARTLOOM_KAFKA_SSL_CAFILE", "CARTLOOM_KAFKA_SECURITY_PROTOCOL"],
        ),
        (
            {"CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SSL", "CARTLOOM_KAFKA_SSL_CAFILE": "/no/ca.pem"},
            ["CARTLOOM_KAFKA_SSL_CAFILE", "/no/ca.pem"],
        ),
        (
            {"CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SSL", "CARTLOOM_KAFKA_SSL_KEYFILE": "{key}"},
            ["CARTLOOM_KAFKA_SSL_KEYFILE", "CARTLOOM_KAFKA_SSL_CERTFILE"],
        ),
        (
            {
                "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "CARTLOOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                "CARTLOOM_KAFKA_SASL_USERNAME": "u",
                "CARTLOOM_KAFKA_SASL_PASSWORD": "p",
                "CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER": TOKEN_PROVIDER,
            },
            ["CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER", "OAUTHBEARER"],
        ),
        ({"CARTLOOM_KAFKA_SECURITY_PROTOCOL": "TLS"}, ["CARTLOOM_KAFKA_SECURITY_PROTOCOL"]),
        (
            {
                "CARTLOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "CARTLOOM_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER": "no-colon",
            },
            ["CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER", "module:attribute"],
        ),
    ],
)
def test_combinations_that_do_not_fit_are_refused_by_name(
    pki: TlsFiles, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: list[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(ca=pki.ca, key=pki.client_key))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    for name in named:
        assert name in str(refused.value)


def test_the_fitting_combinations_load(pki: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTLOOM_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")  # case does not matter
    monkeypatch.setenv("CARTLOOM_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("CARTLOOM_KAFKA_SASL_USERNAME", "cartloom")
    monkeypatch.setenv("CARTLOOM_KAFKA_SASL_PASSWORD", "s3cret-value")
    monkeypatch.setenv("CARTLOOM_KAFKA_SSL_CAFILE", str(pki.ca))
    monkeypatch.setenv("CARTLOOM_KAFKA_SSL_CERTFILE", "")  # empty means unset
    settings = load_settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_ssl_certfile is None
    assert "s3cret-value" not in repr(settings)


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARTLOOM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CARTLOOM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("CARTLOOM_KAFKA_SASL_PASSWORD", "s3cret-value")
    monkeypatch.setenv("CARTLOOM_KAFKA_SSL_KEY_PASSWORD", "key-s3cret")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "CARTLOOM_KAFKA_SASL_USERNAME" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_an_encrypted_key_without_its_password_is_named(pki: TlsFiles) -> None:
    with pytest.raises(KafkaSecurityError, match="CARTLOOM_KAFKA_SSL_KEY_PASSWORD"):
        kafka_connection(secured(pki, "SSL", kafka_ssl_key_password=None))
    with pytest.raises(KafkaSecurityError, match="CARTLOOM_KAFKA_SSL_KEY_PASSWORD"):
        kafka_connection(secured(pki, "SSL", kafka_ssl_key_password="wrong"))


def test_a_ca_file_that_is_not_pem_is_named(pki: TlsFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(KafkaSecurityError, match="CARTLOOM_KAFKA_SSL_CAFILE"):
        kafka_connection(secured(pki, "SSL", kafka_ssl_cafile=garbage))


def test_a_key_that_is_not_the_certificates_is_named(pki: TlsFiles, tmp_path: Path) -> None:
    other = make_pki(tmp_path, "other")
    with pytest.raises(KafkaSecurityError, match="CARTLOOM_KAFKA_SSL_KEYFILE"):
        kafka_connection(secured(pki, "SSL", kafka_ssl_keyfile=other.client_key))


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("tests.unit.no_such_module:Provider", "cannot import"),
        (f"{__name__}:NoSuchProvider", "cannot import"),
        (f"{__name__}:TOKEN_PROVIDER", "not callable"),
        (f"{__name__}:not_a_provider", "not an aiokafka.abc.AbstractTokenProvider"),
    ],
)
def test_a_token_provider_that_is_not_one_is_refused(path: str, problem: str) -> None:
    with pytest.raises(KafkaSecurityError, match="CARTLOOM_KAFKA_SASL_OAUTH_TOKEN_PROVIDER") as bad:
        load_token_provider(path)
    assert problem in str(bad.value)


async def test_the_token_provider_is_the_one_every_client_asks() -> None:
    provider = load_token_provider(TOKEN_PROVIDER)
    assert await provider.token() == "unit-test-token"


# ---- why a connection failed ----------------------------------------------------------------


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, message)
    error.verify_code = code
    return error


@pytest.mark.parametrize(
    ("case", "cause", "named"),
    [
        ("SSL", verify_error(20, "unable to get local issuer certificate"), "SSL_CAFILE"),
        ("SSL", verify_error(62, "Hostname mismatch"), "SSL_CHECK_HOSTNAME"),
        ("SASL_SSL/SCRAM-SHA-512", AuthenticationFailedError("bad"), "SASL_PASSWORD"),
        ("SASL_SSL/OAUTHBEARER", AuthenticationFailedError("bad"), "OAUTH_TOKEN_PROVIDER"),
        ("PLAINTEXT", ConnectionRefusedError(111, "refused"), "CARTLOOM_BROKER_URL"),
        ("PLAINTEXT", KafkaConnectionError("closed"), "SECURITY_PROTOCOL to SSL"),
    ],
)
def test_a_failed_connection_names_the_setting_to_check(
    pki: TlsFiles, case: str, cause: BaseException, named: str
) -> None:
    settings = secured(pki, case)
    failures = ConnectionFailures()
    kafka_log = logging.getLogger("aiokafka.client.unit")
    kafka_log.addHandler(failures)
    try:
        # As aiokafka's bootstrap logs it before raising "Unable to bootstrap".
        kafka_log.error('Unable connect to "%s:%s": %s', "b-1", 9096, cause)
    finally:
        kafka_log.removeHandler(failures)
    message = explain_connection_failure(settings, KafkaConnectionError("boot"), failures.causes)
    assert named in message
    assert str(cause) in message
    assert "b-1:9096,b-2:9096" in message


def test_a_client_certificate_refusal_is_told_apart(pki: TlsFiles) -> None:
    without = secured(pki, "SSL", kafka_ssl_certfile=None, kafka_ssl_keyfile=None)
    closed = deque([KafkaConnectionError("Connection closed")])
    message = explain_connection_failure(without, KafkaConnectionError("boot"), closed)
    assert "requires a client certificate" in message
    assert "CARTLOOM_KAFKA_SSL_CERTFILE" in message


# ---- every entry point that builds a client -------------------------------------------------


class RefusedError(Exception):
    """What the recorders' start() raises: the entry point built its clients and stopped."""


class Recorder:
    """Stands in for an aiokafka client class; records how it was built."""

    built: list[tuple[str, dict[str, Any]]]

    def __init__(self, *topics: str, **kwargs: Any) -> None:
        self.built.append((type(self).__name__, kwargs))

    def subscription(self) -> set[str]:
        return set()

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def start(self) -> None:
        raise RefusedError

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    built: list[tuple[str, dict[str, Any]]] = []
    for name in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"):
        monkeypatch.setattr(kafka_clients, name, type(name, (Recorder,), {"built": built}))
    return built


def _entry_points(settings: Settings) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Module -> a call of its code that builds its Kafka clients from ``settings``."""
    from cartloom.agents import intake, materialise
    from cartloom.agents import shopify_jobs as jobs
    from cartloom.domain.shopify.normalise import Output
    from cartloom.ops.audit import ChangelogReader, sink_group_consumer
    from cartloom.ops.dlq import replay_dead_letters
    from cartloom.ops.kafka_admin import apply_topics, check_topics
    from cartloom.ops.loadgen import publish
    from cartloom.shopify import receiver, reconcile
    from cartloom.shopify.writeback_progress import WritebackProgress
    from cartloom.sinks.comparison import ChangelogState
    from cartloom.sinks.materialiser import Materialiser
    from cartloom.sinks.runner import build_materialiser
    from cartloom.stream import faust_types
    from tests.memory_sink import MemorySink

    kafka = kafka_connection(settings)
    topics = load_topology().all_topics(settings.app_id)

    async def audit() -> None:
        ChangelogReader(settings, {}, ChangelogState(closed_order_ttl=0))
        sink_group_consumer(settings, "redis")
        raise RefusedError

    async def faust_probe() -> None:
        faust_types.probe_consumer(kafka)
        raise RefusedError

    async def writeback() -> None:
        await jobs.ShopifyWriteback._run_once(
            SimpleNamespace(should_stop=False), "cartloom-reservation_by_line-changelog"
        )

    return {
        "cartloom/agents/intake.py": lambda: intake.OrderIntake._run(
            SimpleNamespace(should_stop=False, _source="orders")
        ),
        "cartloom/agents/materialise.py": lambda: materialise.build_materialiser(
            MemorySink()
        ).run(),
        "cartloom/sinks/runner.py": lambda: build_materialiser(
            settings, load_topology(), MemorySink()
        ).run(),
        "cartloom/sinks/materialiser.py": lambda: Materialiser(
            MemorySink(),
            kafka=kafka,
            group_id="unit",
            entities={"cartloom-order_by_id-changelog": "orders"},
            batch_max=10,
            retry_max_seconds=0.1,
            fetch_max_wait_ms=100,
        ).run(),
        "cartloom/agents/shopify_jobs.py": writeback,
        "cartloom/shopify/writeback_progress.py": lambda: WritebackProgress(
            kafka, None, "shopify.writeback.progress"
        ).load([0]),
        "cartloom/stream/faust_types.py": faust_probe,
        "cartloom/shopify/receiver.py": lambda: receiver.build_receiver(settings).enqueuer.start(),
        "cartloom/shopify/reconcile.py": lambda: reconcile.publish(
            kafka, [Output("orders", "o-1", {"order_id": "o-1"})]
        ),
        "cartloom/ops/audit.py": audit,
        "cartloom/ops/dlq.py": lambda: replay_dead_letters(kafka, "orders", group_id="unit"),
        "cartloom/ops/loadgen.py": lambda: publish(kafka, "orders", iter([])),
        "cartloom/ops/kafka_admin.py": lambda: apply_topics(kafka, topics),
        "cartloom/ops/kafka_admin.py check": lambda: check_topics(kafka, topics),
        "cartloom/stream/kafka_clients.py": lambda: kafka_clients.check_connection(kafka),
    }


def modules_using_the_factory() -> set[str]:
    """Modules that build clients from a connection (``x.producer(...)``, ``kafka_connection``)."""
    using = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = _called_name(node)
            on_connection = isinstance(node.func, ast.Attribute) and name in {
                "producer",
                "consumer",
                "admin",
            }
            if on_connection or name == "kafka_connection":
                using.add(str(path.relative_to(ROOT)))
    return using


#: Modules that use the factory without building a client of their own here: the app (Faust's
#: credentials, tested above), the CLI and the demo (they pass kafka_connection(settings) on to
#: the entry points below), the local stack (its embedded broker, PLAINTEXT on purpose).
PASSES_IT_ON = {
    "cartloom/stream/app.py",
    "cartloom/cli/main.py",
    "devstack/demo.py",
    "devstack/stack.py",
}


def test_every_module_that_builds_clients_has_an_entry_point_here(pki: TlsFiles) -> None:
    covered = {name.split(" ")[0] for name in _entry_points(secured(pki, "PLAINTEXT"))}
    missing = modules_using_the_factory() - covered - PASSES_IT_ON
    assert not missing, f"add an entry point of {sorted(missing)} to _entry_points()"


@pytest.mark.parametrize("case", ["SSL", "SASL_SSL/SCRAM-SHA-512", "SASL_SSL/OAUTHBEARER"])
async def test_every_client_of_every_entry_point_gets_the_security(
    pki: TlsFiles,
    case: str,
    recorded: list[tuple[str, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cartloom.agents import intake, materialise
    from cartloom.agents import shopify_jobs as jobs

    settings = secured(
        pki,
        case,
        shopify_api_url="http://127.0.0.1:9/admin",
        shopify_access_token="unit-token",
        shopify_writeback_location_id="gid://shopify/Location/1",
    )
    # The worker's services read the app's settings: give them the secured ones.
    for module in (intake, materialise, jobs):
        monkeypatch.setattr(module, "settings", settings)
    kafka = kafka_connection(settings)
    for name, run in _entry_points(settings).items():
        recorded.clear()
        with pytest.raises(RefusedError):
            await run()
        assert recorded, f"{name} built no client"
        for kind, kwargs in recorded:
            assert kwargs["bootstrap_servers"] == kafka.bootstrap_servers, (name, kind)
            for option, value in kafka.security.items():
                assert kwargs.get(option) is value or kwargs.get(option) == value, (
                    f"{name}: {kind} has {option}={kwargs.get(option)!r}, settings say {value!r}"
                )


def test_plaintext_is_for_the_embedded_broker_only() -> None:
    kafka = KafkaConnection.plaintext("127.0.0.1:9092")
    assert kafka.security == {"security_protocol": "PLAINTEXT"}
    assert kafka.credentials is None
