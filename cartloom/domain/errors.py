"""Why an input was refused: a short, bounded reason code plus a human-readable detail."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Bounded reason codes; safe as metric label values and DLQ headers."""

    INVALID_JSON = "invalid_json"
    INVALID_SCHEMA = "invalid_schema"
    KEY_MISMATCH = "key_mismatch"
    PROCESSING_ERROR = "processing_error"
    UNKNOWN_ORDER = "unknown_order"  # an event or answer for an order CartLoom does not hold
    HELD_OVER_LIMIT = "held_over_limit"  # an early event pushed out by newer ones for its order
    TOO_LARGE = "too_large"  # bigger than one message CartLoom sends on may be
    REFUSED = "refused"  # the destination (a store, Shopify) refuses this value for good
    UNKNOWN_SKU = "unknown_sku"  # Shopify has no inventory item for the SKU, past the retries
    RETRIES_EXHAUSTED = "retries_exhausted"  # still failing after the bounded attempts


class InvalidInput(ValueError):  # noqa: N818 - reads better at raise sites than InvalidInputError
    """An input message that can never be processed; it belongs in a dead-letter topic."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
