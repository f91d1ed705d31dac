"""``CARTLOOM_LOG_LEVEL`` for every ``cartloom`` command.

One-shot commands log at ``warning`` unless the variable says otherwise (their output is
what they print); ``cartloom worker`` and ``cartloom shopify ingress`` are servers and use
the setting's default, ``info``. aiokafka's records stay captured, not printed, below
``debug``: it logs every refused connection while a broker starts, and the CLI reports the
failure itself (:class:`~cartloom.stream.kafka_clients.ConnectionFailures` keeps the reasons).
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "CARTLOOM_LOG_LEVEL"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def requested_level() -> str | None:
    """The level ``CARTLOOM_LOG_LEVEL`` names, or None when unset (or not a level).

    A wrong value is reported by the settings (``cartloom config show``, or the command's
    first use of them), with the variable's name; here it is only not applied.
    """
    value = os.environ.get(LEVEL_ENV, "").strip().lower()
    return value if value in LEVELS else None


def configure_logging(level: str) -> None:
    """Send records at ``level`` and above to stderr, replacing an earlier configuration."""
    number = LEVELS.get(level.lower(), logging.WARNING)
    logging.basicConfig(level=number, format=FORMAT, force=True)
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.setLevel(min(number, logging.WARNING))
    aiokafka_log.propagate = number <= logging.DEBUG


def faust_loglevel(level: str) -> str:
    """Faust's name for ``level`` (its ``--loglevel`` says ``warn``, not ``warning``)."""
    level = level.lower()
    return "warn" if level == "warning" else level
