"""How the ``cartloom`` command fails: its exit codes, and one or two lines on stderr.

Every expected failure (a bad argument or setting, a store or API that cannot be reached)
is told as ``error: what went wrong`` and ``hint: what to change``, naming the setting or
the command, with no traceback. :func:`explain` turns the exceptions the libraries raise
into such a :class:`CliError`; anything it does not know is a bug and keeps its traceback.
``--debug`` (or ``CARTLOOM_LOG_LEVEL=debug``) prints the traceback of the known ones too.
docs/cli.md lists the codes and the common errors.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO, Any, NoReturn
from urllib.parse import urlsplit

import typer

EXIT_OK = 0
#: The operation ran and failed, or found a problem (drift, divergence, a refused write).
EXIT_FAILED = 1
#: Bad command line or configuration: an argument, a setting, a missing AWS region.
EXIT_USAGE = 2
#: A store or API could not be reached or refused the connection (Kafka, Redis,
#: DynamoDB, the Shopify Admin API): start it, or point the setting at it.
EXIT_UNAVAILABLE = 3
#: ``cartloom worker`` only: the broker refused a write, the batch is not acknowledged;
#: the orchestrator restarts the worker (``EX_TEMPFAIL``, cartloom/stream/batching.py).
EXIT_UNDELIVERED = 75

DEV_UP = "start the local stack with `python -m devstack up` (it writes .cartloom/dev.env)"


class CliError(Exception):
    """An expected failure: a message, a hint naming what to change, and the exit code."""

    def __init__(self, message: str, hint: str | None = None, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = code


def fail(message: str, hint: str | None = None, code: int = EXIT_FAILED) -> NoReturn:
    """Report a failure a command found itself, and exit with ``code``.

    Raises ``typer.Exit``, which typer turns into the exit code wherever the command runs
    (the ``cartloom`` script, or typer's test runner).
    """
    report(CliError(message, hint, code))
    raise typer.Exit(code)


def _parser_error(name: str) -> type[Exception]:
    """The class of typer's command-line errors called ``name``.

    Recent typer versions vendor click (``typer._click``), older ones use click itself:
    ``typer.BadParameter`` derives from the right ``UsageError`` and ``ClickException``.
    """
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


USAGE_ERROR = _parser_error("UsageError")
CLICK_ERROR = _parser_error("ClickException")


class _DebugSwitch:
    """Whether the known failures print their traceback too (``--debug``)."""

    on = False


def show_tracebacks(on: bool) -> None:
    """Set by ``cartloom --debug`` (and ``CARTLOOM_LOG_LEVEL=debug``)."""
    _DebugSwitch.on = on


def tracebacks_shown() -> bool:
    """Whether :func:`show_tracebacks` asked for them."""
    return _DebugSwitch.on


def report(error: CliError, file: IO[Any] | None = None) -> None:
    """``error: ...`` and ``hint: ...`` on stderr (unwrapped: they are copied into searches)."""
    out = file if file is not None else sys.stderr
    print(f"error: {error.message}", file=out)
    if error.hint:
        print(f"hint: {error.hint}", file=out)
    out.flush()


def print_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` on stderr (``--debug``)."""
    traceback.print_exception(exc, file=sys.stderr)


def invoke(
    command: typer.Typer,
    argv: list[str] | None,
    prog_name: str,
    *,
    kafka_causes: Iterable[BaseException] = (),
    explain_first: Callable[[BaseException], CliError | None] = lambda _: None,
) -> int:
    """Run a typer ``command`` on ``argv``; a known failure is reported, its code returned.

    ``explain_first`` tells the errors only that command knows; an unknown exception is a
    bug and propagates with its traceback.
    """
    try:
        result = command(args=argv, prog_name=prog_name, standalone_mode=False)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer printed the help already
            return EXIT_USAGE
        explained = explain_first(exc) or explain(exc, kafka_causes)
        if explained is None:
            raise
        if tracebacks_shown():
            print_traceback(exc)
        report(explained)
        return explained.exit_code
    return result if isinstance(result, int) else EXIT_OK


def explain(exc: BaseException, kafka_causes: Iterable[BaseException] = ()) -> CliError | None:
    """The :class:`CliError` telling ``exc`` to an operator; None for an unexpected one."""
    explainers = (
        _command_line,
        _configuration,
        _topics,
        _kafka,
        _redis,
        _dynamodb,
        _shopify,
        _port,
    )
    for explainer in explainers:
        error = explainer(exc, list(kafka_causes))
        if error is not None:
            return error
    return None


def _settings() -> Any:
    """The settings, or None when they are the problem (the message then names less)."""
    from cartloom.core.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError:
        return None


def _command_line(exc: BaseException, _: list[BaseException]) -> CliError | None:
    """A bad argument or option: what typer says, and where the command's help is."""
    if isinstance(exc, USAGE_ERROR):
        ctx = getattr(exc, "ctx", None)
        path = getattr(ctx, "command_path", None) or "cartloom"
        return CliError(_message(exc), f"see `{path} --help`", EXIT_USAGE)
    if isinstance(exc, CLICK_ERROR):
        return CliError(_message(exc), None, int(getattr(exc, "exit_code", EXIT_FAILED)))
    if isinstance(exc, typer.Abort):
        return CliError("aborted", None, EXIT_FAILED)
    return None


def _message(exc: BaseException) -> str:
    format_message = getattr(exc, "format_message", None)
    return str(format_message()) if callable(format_message) else str(exc)


def _configuration(exc: BaseException, _: list[BaseException]) -> CliError | None:
    from cartloom.core.settings import SettingsError
    from cartloom.core.topology import TopologyError

    if isinstance(exc, SettingsError):
        hint = (
            "correct it in the environment or in the --env-file (.cartloom/dev.env);"
            " .env.example lists every setting"
        )
        return CliError(str(exc), hint, EXIT_USAGE)
    if isinstance(exc, TopologyError):
        hint = "topics.yaml (or the file in CARTLOOM_TOPICS_FILE) declares the topics"
        return CliError(str(exc), hint, EXIT_USAGE)
    return None


def _topics(exc: BaseException, _: list[BaseException]) -> CliError | None:
    from cartloom.ops.kafka_admin import TopicPartitionsError

    if not isinstance(exc, TopicPartitionsError):
        return None
    return CliError(
        f"topics exist with another partition count than topics.yaml gives: {exc}",
        "a Kafka client used them before `cartloom topics apply` created them, and the broker"
        " created them with its default count; delete them (their records go too) and start"
        " again, with `cartloom topics apply` before any other process",
        EXIT_FAILED,
    )


def _kafka(exc: BaseException, causes: list[BaseException]) -> CliError | None:
    import ssl

    from aiokafka.errors import KafkaConnectionError

    from cartloom.stream.kafka_clients import explain_connection_failure

    if not isinstance(exc, KafkaConnectionError):
        return None
    settings = _settings()
    if settings is None:
        message = f"cannot connect to Kafka ({exc}) (CARTLOOM_BROKER_URL)"
    else:
        message = explain_connection_failure(settings, exc, deque(causes))
    cause = causes[-1] if causes else None
    hint = None
    if cause is None or (isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError)):
        # Nothing listens there (or nothing answered): most often the stack is not up.
        hint = f"{DEV_UP}, or set CARTLOOM_BROKER_URL to your brokers"
    return CliError(message, hint, EXIT_UNAVAILABLE)


def _redis(exc: BaseException, _: list[BaseException]) -> CliError | None:
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return None
    settings = _settings()
    where = _host_port(settings.redis_url) if settings is not None else "CARTLOOM_REDIS_URL"
    if isinstance(exc, AuthenticationError):
        return CliError(
            f"Redis at {where} refused the credentials (CARTLOOM_REDIS_URL): {exc}",
            "set the user and password in CARTLOOM_REDIS_URL (redis://user:password@host:port/0)",
            EXIT_UNAVAILABLE,
        )
    return CliError(
        f"cannot reach Redis at {where} (CARTLOOM_REDIS_URL): {exc}",
        f"{DEV_UP}, or set CARTLOOM_REDIS_URL",
        EXIT_UNAVAILABLE,
    )


_AWS_REFUSALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "AccessDeniedException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
    }
)


def _dynamodb(exc: BaseException, _: list[BaseException]) -> CliError | None:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, NoRegionError):
        return CliError(
            "no AWS region is set for DynamoDB",
            "set AWS_REGION (or AWS_DEFAULT_REGION), or point CARTLOOM_DYNAMODB_ENDPOINT at a"
            f" local endpoint: {DEV_UP}",
            EXIT_USAGE,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return CliError(
            f"no usable AWS credentials for DynamoDB: {exc}",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM"
            " role",
            EXIT_USAGE,
        )
    settings = _settings()
    endpoint = getattr(settings, "dynamodb_endpoint", None)
    where = endpoint or "AWS"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return CliError(
            f"cannot reach DynamoDB at {where} (CARTLOOM_DYNAMODB_ENDPOINT): {exc}",
            f"{DEV_UP}, or set CARTLOOM_DYNAMODB_ENDPOINT (unset: AWS in AWS_REGION)",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _AWS_REFUSALS:
            return CliError(
                f"DynamoDB at {where} refused the request ({code}): {exc}",
                "check the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and their IAM policy",
                EXIT_UNAVAILABLE,
            )
        if code == "ResourceNotFoundException":
            return CliError(
                f"a DynamoDB table is missing at {where}: {exc}",
                "create the tables with `cartloom dynamodb create-tables` (check"
                " CARTLOOM_TABLE_PREFIX and CARTLOOM_NAMESPACE)",
                EXIT_FAILED,
            )
    return None


def _shopify(exc: BaseException, _: list[BaseException]) -> CliError | None:
    from cartloom.shopify.admin_client import AdminApiError, AdminApiUnavailable

    settings = _settings()
    where = getattr(settings, "shopify_api_url", None) or "CARTLOOM_SHOPIFY_API_URL"
    if isinstance(exc, AdminApiUnavailable):
        return CliError(
            f"cannot use the Shopify Admin API at {where} (CARTLOOM_SHOPIFY_API_URL): {exc}",
            "check CARTLOOM_SHOPIFY_API_URL, CARTLOOM_SHOPIFY_ACCESS_TOKEN (and its scopes) and"
            " CARTLOOM_SHOPIFY_API_VERSION; `python -m devstack simulate` runs a local shop",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, AdminApiError):
        return CliError(f"the Shopify Admin API at {where} refused: {exc}", None, EXIT_FAILED)
    return None


def _port(exc: BaseException, _: list[BaseException]) -> CliError | None:
    """A server command (ingress, sink, simulate) whose port another process holds."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return CliError(
            f"the port is taken by another process: {exc.strerror or exc}",
            "stop that process, or choose another port: CARTLOOM_WEBHOOK_INGRESS_PORT"
            " (`shopify ingress`), CARTLOOM_SINK_PORT (`sink`), CARTLOOM_WEB_PORT (worker),"
            " --port (`shopify simulate`)",
            EXIT_FAILED,
        )
    return None


def _host_port(url: str) -> str:
    """``host:port`` of a URL, without the user and password it may hold."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    except ValueError:
        return "the address in the setting"
