"""Webhook signatures: HMAC-SHA256 of the raw body, checked in constant time.

Shopify signs only the body (``X-Shopify-Hmac-Sha256``, base64). Every configured secret
is tried (several are valid during a rotation), plus the per-shop secrets of the
delivering shop when configured; each comparison is ``hmac.compare_digest`` and every
secret is always tried, so the time taken does not tell which secret (if any) matched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence

from pydantic import SecretStr


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-Shopify-Hmac-Sha256`` value Shopify would send for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()


class SignatureVerifier:
    """Holds the secrets (as bytes, never logged) and checks deliveries against them."""

    def __init__(
        self,
        secrets: Sequence[SecretStr],
        shop_secrets: Mapping[str, Sequence[SecretStr]] | None = None,
    ) -> None:
        self._secrets = tuple(s.get_secret_value().encode() for s in secrets)
        self._shop_secrets = {
            shop.lower(): tuple(s.get_secret_value().encode() for s in values)
            for shop, values in (shop_secrets or {}).items()
        }

    def __repr__(self) -> str:
        return f"SignatureVerifier({len(self._secrets)} secrets, {len(self._shop_secrets)} shops)"

    @property
    def configured(self) -> bool:
        """Whether any secret is configured (without one every delivery is refused)."""
        return bool(self._secrets or self._shop_secrets)

    def candidates(self, shop: str | None) -> Iterable[bytes]:
        """The secrets a delivery from ``shop`` may be signed with."""
        yield from self._secrets
        if shop:
            yield from self._shop_secrets.get(shop.lower(), ())

    def verify(self, body: bytes, signature: str | None, shop: str | None = None) -> bool:
        """True if ``signature`` is the HMAC of ``body`` under one of the candidate secrets."""
        if not signature:
            return False
        try:
            given = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        matched = False
        for secret in self.candidates(shop):
            expected = hmac.new(secret, body, hashlib.sha256).digest()
            matched |= hmac.compare_digest(expected, given)
        return matched
