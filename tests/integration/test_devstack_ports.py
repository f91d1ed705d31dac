"""A local-stack server whose free port was taken before it bound it is told apart, for a retry."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devstack.processes import ExitedAtStart, spawn, stop, wait_until
from devstack.stack import redis_argv

pytestmark = pytest.mark.integration


async def never_ready() -> bool:
    return False


async def test_a_taken_port_is_reported_as_taken_with_the_servers_own_words(
    tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = spawn("redis", redis_argv(port), tmp_path, port)
        try:
            with pytest.raises(ExitedAtStart) as exited:
                await wait_until(server, never_ready, within=30)
        finally:
            stop(server)
    assert exited.value.port_taken
    assert "redis exited during start-up" in str(exited.value)
    assert "in use" in str(exited.value).lower()  # the log's tail, not only its path
