"""Only asymmetric public signing keys with a kid are taken from a JWKS."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.jwks import _parse


def test_only_public_asymmetric_signing_keys_with_a_kid_are_kept() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rsa_public = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    doc = {"keys": [
        {**rsa_public, "kid": "rsa"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec"},
        {**rsa_public, "kid": "pinned", "alg": "PS256"},
        {**rsa_public, "kid": "liar", "alg": "HS256"},  # an RSA key claiming HMAC
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "private"},
        {**rsa_public, "kid": "enc", "use": "enc"},
        rsa_public,  # no kid
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
    ]}
    keys = _parse(doc)
    assert sorted(keys) == ["ec", "pinned", "rsa"]
    assert keys["ec"][1].algorithms == frozenset({"ES384"})
    assert keys["pinned"][1].algorithms == frozenset({"PS256"})
    assert "HS256" not in keys["rsa"][1].algorithms and "RS256" in keys["rsa"][1].algorithms


@pytest.mark.parametrize("doc", [{}, {"keys": "x"}, [], "keys"])
def test_a_document_that_is_not_a_jwks_is_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        _parse(doc)
