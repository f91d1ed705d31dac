"""The local DynamoDB endpoint: moto's emulator served by waitress, with keep-alive.

``python -m moto.server`` serves moto with werkzeug's development server, which closes the
connection after every answer (``Connection: close``). DynamoDB keeps connections alive, so
on that server every client call also paid a TCP connect and close: about a third of the
DynamoDB sink's CPU per conditional put (``bench/dynamodb_clients.py``, docs/benchmarks.md).
The same moto application behind waitress, a production WSGI server, keeps HTTP/1.1
connections open as DynamoDB does; moto's behaviour (conditions, TTL, errors) is unchanged.
Some of moto is replaced, for speed alone: ``TransactWriteItems``, which moto rolls back from
deep copies of whole tables (:mod:`devstack.moto_transactions` does it by the transaction's
own items), and the reading of a request's parameters (:mod:`devstack.moto_patches`).

    python -m devstack.dynamodb_server --port 8000 [--host 127.0.0.1]

docker-compose runs it too, in moto's own image with ``./devstack`` mounted; that image has
no waitress, so there it falls back to werkzeug's threaded server (no keep-alive).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from typing import Any

#: Requests moto handles at once (one runs at a time under the GIL anyway); more wait in a queue.
THREADS = 4


def dynamodb_only_application() -> Callable[..., Iterable[bytes]]:
    """The DynamoDB application of moto, with its ``/moto-api`` beside it (the readiness probe).

    moto's own dispatcher works out the service of every request again (headers, body,
    its list of modules) under one lock: about a quarter of the server's CPU per
    ``PutItem`` in a profile. This endpoint only ever serves DynamoDB, so every request but
    ``/moto-api`` goes straight to the DynamoDB application.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from devstack import moto_patches, moto_transactions

    moto_transactions.install()
    moto_patches.install()
    dispatcher = DomainDispatcherApplication(create_backend_app)
    dynamodb = create_backend_app("dynamodb")

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return dispatcher(environ, start_response)
        return dynamodb(environ, start_response)

    return application


def main(argv: list[str] | None = None) -> None:
    """Serve moto until the process is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # moto builds some answers (queue and bucket URLs) from the port it believes it serves on.
    os.environ.setdefault("MOTO_PORT", str(args.port))

    try:
        import waitress
    except ImportError:  # moto's own image (docker-compose's endpoint) has werkzeug only
        from werkzeug.serving import run_simple

        run_simple(args.host, args.port, dynamodb_only_application(), threaded=True)
        return
    waitress.serve(
        dynamodb_only_application(),
        host=args.host,
        port=args.port,
        threads=THREADS,
        connection_limit=1000,
        channel_timeout=300,
        _quiet=True,
    )


if __name__ == "__main__":
    main()
