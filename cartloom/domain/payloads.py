"""Small checked readers for JSON payloads, so every refusal names the field and the rule."""

from __future__ import annotations

from typing import Any

import orjson

from cartloom.domain.errors import InvalidInput, RejectReason


def decode_json_object(raw: bytes | str | None) -> dict[str, Any]:
    """Parse ``raw`` as a JSON object or raise :class:`InvalidInput`."""
    if raw is None:
        raise InvalidInput(RejectReason.INVALID_JSON, "empty message value")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(RejectReason.INVALID_JSON, f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(RejectReason.INVALID_JSON, "JSON value is not an object")
    return value


def require_str(payload: dict[str, Any], field: str, *, max_len: int = 256) -> str:
    """A non-empty string field."""
    value = payload.get(field)
    if not isinstance(value, str) or not value or value.isspace():  # isspace copies nothing
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field} must be a non-empty string")
    if len(value) > max_len:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field} is longer than {max_len}")
    return value


def require_int(payload: dict[str, Any], field: str, *, minimum: int | None = None) -> int:
    """An integer field (booleans refused), optionally bounded below."""
    value = payload.get(field)
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field} must be an integer")
    if minimum is not None and value < minimum:
        raise InvalidInput(RejectReason.INVALID_SCHEMA, f"{field} must be >= {minimum}")
    return value


def check_key(key: str | None, field: str, value: str) -> None:
    """Refuse a message whose Kafka key (when known) is not the id it carries in ``field``.

    Every input and internal topic is keyed by its entity's id (an order's, a SKU's): a
    record whose key and payload disagree would be applied on the wrong partition. An
    item of an envelope has no key of its own (``None``): the envelope's partition was
    checked instead (:meth:`cartloom.stream.batching.BatchHandler.each_item`).
    """
    if key is not None and key != value:
        raise InvalidInput(
            RejectReason.KEY_MISMATCH, f"message key {key!r} differs from {field} {value!r}"
        )


def keyed_id(payload: dict[str, Any], field: str, key: str | None) -> str:
    """The entity id in ``field`` (a string of at most 128), which must be the message key."""
    value = require_str(payload, field, max_len=128)
    check_key(key, field, value)
    return value
