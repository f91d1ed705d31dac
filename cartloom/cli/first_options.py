"""The options both command lines take before a command: a settings file, and ``--debug``.

``cartloom`` and ``python -m devstack`` load the same ``.cartloom/dev.env`` (written by the
local stack) the same way: real environment variables win over the file, and ``--debug``
or a ``debug`` log level shows the traceback of an error beside its ``error:`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from dotenv import load_dotenv

from cartloom.cli.errors import show_tracebacks
from cartloom.cli.log_setup import requested_level

DEFAULT_STATE_DIR = Path(".cartloom")

EnvFile = Annotated[
    Path, typer.Option(help="Settings file loaded into the environment if it exists.")
]
Debug = Annotated[bool, typer.Option("--debug", help="Print the traceback of an error too.")]


def load_env_file(env_file: Path, debug: bool) -> str | None:
    """Load ``env_file`` if it exists (real environment variables win); set up tracebacks.

    Returns the log level asked for (``CARTLOOM_LOG_LEVEL``, which the file may set), or None.
    """
    if env_file.exists():
        load_dotenv(env_file, override=False)
    level = requested_level()
    show_tracebacks(debug or level == "debug")
    return level
