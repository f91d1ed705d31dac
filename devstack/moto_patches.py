"""How the local DynamoDB endpoint changes moto's request handling, and the one way it wraps moto.

:func:`wrap_once` puts a wrapper around a moto method in this process, once, however often
it is called (every patch here and in ``moto_transactions.py`` goes through it). The
patches:

- :func:`take_json_bodies_as_parameters`. moto 5.2 walks every request through botocore's
  service model to build the action's parameters: about a fifth of the endpoint's CPU under
  the DynamoDB sink's transactions, in a profile. For DynamoDB's JSON protocol those
  parameters are the body itself, except for binary attributes (``B``, ``BS``), which the
  model decodes from base64. So a body that names neither is taken as it is (the standard
  ``json``: moto's own image, which docker-compose runs, has no orjson); any other body goes
  through moto's parser. ``tests/unit/test_moto_patches.py``
  holds the two equal on the requests CartLoom sends. The endpoint's server CPU per item of
  a 100-item transaction fell from 98-106 µs to 80 (``bench/sinks.py``, two runs each way).
- :func:`record_one_request_at_a_time`. moto's recorder (``MOTO_ENABLE_RECORDING``, which the
  sink outage test replays into a restarted endpoint) appends each request as a line in
  unlocked, buffered writes. Two large requests recorded at once (a ``TransactWriteItems`` of
  100 items is about 40 KB) interleave, and the file no longer replays. A lock keeps every
  line whole.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from typing import Any

#: Marks a method :func:`wrap_once` has wrapped.
WRAPPED = "cartloom_wrapped"
#: A body that holds one of these may carry binary attributes, which moto's parser decodes.
BINARY_MARKERS = (b'"B"', b'"BS"')


def wrap_once(owner: type, name: str, wrapper: Callable[[Callable[..., Any]], Any]) -> None:
    """Replace ``owner.name`` by ``wrapper(owner.name)``, unless that was done already."""
    current = getattr(owner, name)
    if getattr(current, WRAPPED, False):
        return
    wrapped = functools.wraps(current)(wrapper(current))
    setattr(wrapped, WRAPPED, True)
    setattr(owner, name, wrapped)


def json_parameters(body: bytes | None) -> dict[str, Any] | None:
    r"""The parameters of a DynamoDB request ``body``, or None when moto's parser must read it.

    Inside a JSON string a quote is escaped (``\\"``), so ``"B"`` in the raw bytes is a
    string of its own: a ``B`` key, or a value that is just ``B`` (which only costs the
    slower parse).
    """
    if not body or any(marker in body for marker in BINARY_MARKERS):
        return None
    try:
        parameters = json.loads(body)
    except ValueError:  # not JSON (or not UTF-8): moto's parser answers as it answers
        return None
    return parameters if isinstance(parameters, dict) else None


def take_json_bodies_as_parameters() -> None:
    """Give moto's DynamoDB actions the JSON body as their parameters (see above)."""
    from moto.dynamodb.responses import DynamoHandler

    def wrapper(parse: Callable[..., None]) -> Callable[..., None]:
        def parse_parameters(self: DynamoHandler, request: Any) -> None:
            parameters = json_parameters(request.data)
            if parameters is None:
                parse(self, request)
            else:
                self.params = parameters

        return parse_parameters

    wrap_once(DynamoHandler, "parse_parameters", wrapper)


def record_one_request_at_a_time() -> None:
    """Keep each line of moto's request recording whole under waitress's threads."""
    from moto.moto_api._internal.recorder.models import Recorder

    lock = threading.Lock()

    def wrapper(record: Callable[..., None]) -> Callable[..., None]:
        def locked(self: Recorder, *args: Any, **kwargs: Any) -> None:
            with lock:
                record(self, *args, **kwargs)

        return locked

    wrap_once(Recorder, "_record_request", wrapper)


def install() -> None:
    """Both request patches, in this process."""
    take_json_bodies_as_parameters()
    record_one_request_at_a_time()
