"""Which stored copy a request may see: credential fingerprint, codings, query."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.variants import ANONYMOUS, CredentialHasher, accepted_codings, variant_field

SECRET = b"shared-replica-secret"
ALICE = "Bearer alice-token-7f3a9c"
BOB = "Bearer bob-token-1d2e4b"
ALL_CODINGS = frozenset({"br", "deflate", "gzip", "zstd"})


def h(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_anonymous_callers_share_one_fingerprint() -> None:
    hasher = CredentialHasher(SECRET)
    assert hasher.fingerprint(h()) == ANONYMOUS == "anon"
    assert hasher.fingerprint(h(("Accept", "application/json"))) == ANONYMOUS


def test_different_credentials_have_different_fingerprints() -> None:
    hasher = CredentialHasher(SECRET)
    prints = [
        hasher.fingerprint(h(("Authorization", ALICE))),
        hasher.fingerprint(h(("Authorization", BOB))),
        hasher.fingerprint(h(("Cookie", ALICE))),  # same text as a cookie, not a token
        hasher.fingerprint(h(("Authorization", ALICE), ("Cookie", "theme=dark"))),
        hasher.fingerprint(h(("Authorization", ALICE), ("Cookie", "theme=light"))),
        hasher.fingerprint(h(("Cookie", "a=1"), ("Cookie", "b=2"))),
        hasher.fingerprint(h(("Cookie", "a=1; b=2"))),
        hasher.fingerprint(h(("Authorization", "")),),
    ]
    assert len(set(prints)) == len(prints)
    assert ANONYMOUS not in prints


def test_same_credentials_same_fingerprint_regardless_of_header_name_case() -> None:
    hasher = CredentialHasher(SECRET)
    assert hasher.fingerprint(h(("authorization", ALICE))) == hasher.fingerprint(
        h(("Authorization", ALICE)))


def test_replicas_with_the_same_secret_agree() -> None:
    headers = h(("Authorization", ALICE))
    a, b = CredentialHasher(SECRET), CredentialHasher(SECRET)
    assert a.shared and b.shared
    assert a.fingerprint(headers) == b.fingerprint(headers)
    assert a.keyed("identity:patient:42") == b.keyed("identity:patient:42")


def test_a_different_secret_gives_a_different_fingerprint() -> None:
    headers = h(("Authorization", ALICE))
    assert CredentialHasher(SECRET).fingerprint(headers) != CredentialHasher(
        b"another-secret").fingerprint(headers)
    assert CredentialHasher(SECRET).keyed("x") != CredentialHasher(b"another-secret").keyed("x")


def test_without_a_secret_each_process_draws_its_own() -> None:
    headers = h(("Authorization", ALICE))
    a, b = CredentialHasher(None), CredentialHasher(None)
    assert not a.shared
    assert a.fingerprint(headers) == a.fingerprint(headers)
    assert a.fingerprint(headers) != b.fingerprint(headers)


def test_the_raw_token_never_appears() -> None:
    hasher = CredentialHasher(SECRET)
    for headers in (h(("Authorization", ALICE)), h(("Cookie", f"session={ALICE}"))):
        fingerprint = hasher.fingerprint(headers)
        field = variant_field(fingerprint, frozenset({"gzip"}), ("lang=fr",))
        for text in (fingerprint, field):
            assert "alice" not in text
            assert "7f3a9c" not in text
            assert "Bearer" not in text


@pytest.mark.parametrize("values, accepted", [
    ([], frozenset()),
    (["identity"], frozenset()),
    (["gzip"], frozenset({"gzip"})),
    (["GZip, BR"], frozenset({"gzip", "br"})),
    (["gzip;q=0"], frozenset()),
    (["gzip; q=0.0, br"], frozenset({"br"})),
    (["gzip;Q=0"], frozenset()),
    (["gzip;q=0.001"], frozenset({"gzip"})),
    (["gzip;q=garbage"], frozenset()),  # an unreadable q is taken as a refusal
    (["gzip;q="], frozenset()),
    (["*"], ALL_CODINGS),
    (["*;q=0"], frozenset()),
    (["*, gzip;q=0"], ALL_CODINGS - {"gzip"}),
    (["gzip;q=0, *"], ALL_CODINGS - {"gzip"}),
    (["gzip", "br"], frozenset({"gzip", "br"})),
    (["compress, x-gzip, sdch"], frozenset()),
    ([" , ,, "], frozenset()),
    (["deflate ; level=9"], frozenset({"deflate"})),
])
def test_accepted_codings(values: list[str], accepted: frozenset[str]) -> None:
    headers = h(*(("Accept-Encoding", v) for v in values))
    assert accepted_codings(headers) == accepted


def test_variant_field_separates_credentials_codings_and_query() -> None:
    base = variant_field("anon", frozenset(), ())
    assert base == "anon|identity|-"
    fields = {
        base,
        variant_field("0123456789abcdef", frozenset(), ()),
        variant_field("anon", frozenset({"gzip"}), ()),
        variant_field("anon", frozenset({"gzip", "br"}), ()),
        variant_field("anon", frozenset(), ("lang=fr",)),
        variant_field("anon", frozenset(), ("lang=en",)),
        variant_field("anon", frozenset(), ("fields=a", "lang=fr")),
    }
    assert len(fields) == 7


def test_variant_field_is_stable() -> None:
    assert variant_field("anon", frozenset({"br", "gzip"}), ("a=1", "b=2")) == variant_field(
        "anon", frozenset({"gzip", "br"}), ("a=1", "b=2"))
    assert variant_field("anon", frozenset({"br", "gzip"}), ()).split("|")[1] == "br+gzip"


def test_extra_credential_headers_separate_callers() -> None:
    hasher = CredentialHasher(SECRET, ("Authorization", "Cookie", "X-Api-Key"))
    one = CIMultiDictProxy(CIMultiDict({"X-Api-Key": "k1"}))
    two = CIMultiDictProxy(CIMultiDict({"X-Api-Key": "k2"}))
    assert hasher.fingerprint(one) != hasher.fingerprint(two)
    assert hasher.fingerprint(one) != "anon"
    assert CredentialHasher(SECRET).fingerprint(one) == "anon"  # not listed: not identity


def test_credential_headers_setting_cannot_drop_authorization() -> None:
    from sidecar.errors import ConfigError
    from sidecar.settings import Settings
    assert Settings.from_env({"CACHE_CREDENTIAL_HEADERS": "Authorization, Cookie, X-Api-Key"}
                             ).credential_headers == ("Authorization", "Cookie", "X-Api-Key")
    with pytest.raises(ConfigError, match="CACHE_CREDENTIAL_HEADERS"):
        Settings.from_env({"CACHE_CREDENTIAL_HEADERS": "X-Api-Key"})
