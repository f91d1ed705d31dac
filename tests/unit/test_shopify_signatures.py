"""Webhook HMAC verification: rotation, per-shop secrets, malformed signatures."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cartloom.shopify.signatures import SignatureVerifier, sign

BODY = b'{"id": 820982911946154508}'


def verifier() -> SignatureVerifier:
    return SignatureVerifier(
        [SecretStr("old-secret"), SecretStr("new-secret")],
        {"a.myshopify.com": [SecretStr("shop-a-secret")]},
    )


@pytest.mark.parametrize("secret", ["old-secret", "new-secret"])
def test_every_configured_secret_is_valid_during_rotation(secret: str) -> None:
    assert verifier().verify(BODY, sign(BODY, secret), "any.myshopify.com")


def test_per_shop_secret_is_valid_only_for_its_shop() -> None:
    signature = sign(BODY, "shop-a-secret")
    assert verifier().verify(BODY, signature, "A.myshopify.com")
    assert not verifier().verify(BODY, signature, "b.myshopify.com")


@pytest.mark.parametrize(
    "signature",
    [None, "", "not base64!", sign(BODY, "wrong"), sign(BODY + b" ", "new-secret")],
)
def test_missing_wrong_or_malformed_signatures_are_refused(signature: str | None) -> None:
    assert not verifier().verify(BODY, signature, "a.myshopify.com")


def test_no_secret_configured_refuses_everything_and_repr_hides_secrets() -> None:
    empty = SignatureVerifier([])
    assert not empty.configured
    assert not empty.verify(BODY, sign(BODY, ""), "a.myshopify.com")
    assert "secret" not in repr(verifier()).replace("secrets", "")
