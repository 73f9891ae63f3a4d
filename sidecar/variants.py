"""Which stored copy of an entity a request may see: the hash field under the entity key.

All variants of `identity:patient:42` live in one Redis hash so one `DEL` erases them all.
The field name combines the caller's credentials (a keyed hash, never the token), the
content codings the caller accepts, and the allow-listed query parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from multidict import CIMultiDictProxy

ANONYMOUS = "anon"
_RECENT_MAX = 4096
_KNOWN_CODINGS = ("br", "deflate", "gzip", "zstd")
_CODINGS: dict[frozenset[str], str] = {}  # accepted codings -> their part of the field


DEFAULT_CREDENTIAL_HEADERS = ("Authorization", "Cookie")


class CredentialHasher:
    """Keyed hash of the headers that say who the caller is (`CACHE_CREDENTIAL_HEADERS`,
    by default `Authorization` and `Cookie`; add e.g. `X-Api-Key` if the service uses it).

    The secret must be shared by all replicas (`CACHE_KEY_SECRET`) for them to share
    entries of authenticated callers; without it each process draws a random secret,
    which is safe but means replicas (and restarts) do not share those entries.
    """

    def __init__(
        self, secret: bytes | None, headers: tuple[str, ...] = DEFAULT_CREDENTIAL_HEADERS
    ) -> None:
        self.headers = headers
        self.shared = secret is not None
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        # Recent credentials -> fingerprint: a caller sends the same token on every request,
        # and the HMAC is the largest single cost of a hit. Bounded, dropped whole when full.
        self._recent: dict[tuple[str, ...], str] = {}

    def keyed(self, text: str) -> str:
        """A short keyed hash, for naming an entity in audit logs without its id."""
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:16]

    def fingerprint(self, headers: CIMultiDictProxy[str]) -> str:
        parts: list[str] = []
        for name in self.headers:
            values = headers.getall(name, None)
            if values:
                parts.append(name.lower())
                parts.extend(values)
        if not parts:
            return ANONYMOUS
        seen = tuple(parts)  # the material below is a function of it: an exact memo key
        known = self._recent.get(seen)
        if known is not None:
            return known
        # Length-prefixed, so no value can imitate a boundary; surrogateescape, because
        # aiohttp hands over undecodable header bytes as surrogates.
        material = "".join(f"{len(v)}:{v};" for v in parts)
        # hmac.digest: the one-shot C path, a third of hmac.new()'s cost per request.
        fingerprint = hmac.digest(self._secret, material.encode("utf-8", "surrogateescape"),
                                  "sha256").hex()[:32]
        if len(self._recent) >= _RECENT_MAX:
            self._recent.clear()
        self._recent[seen] = fingerprint
        return fingerprint


def accepted_codings(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Content codings (of those we know) the caller accepts with a non-zero q."""
    accepted: set[str] = set()
    wildcard = False
    refused: set[str] = set()
    for value in headers.getall("Accept-Encoding", []):
        for item in value.split(","):
            name, _, params = item.strip().partition(";")
            name = name.strip().lower()
            q = 1.0
            for param in params.split(";"):
                k, _, v = param.strip().partition("=")
                if k.strip().lower() == "q":
                    try:
                        q = float(v)
                    except ValueError:
                        q = 0.0
            if name == "*":
                wildcard = q > 0
            elif name in _KNOWN_CODINGS:
                (accepted if q > 0 else refused).add(name)
    if wildcard:
        accepted |= set(_KNOWN_CODINGS) - refused
    return frozenset(accepted)


def variant_field(credential: str, codings: frozenset[str], query: tuple[str, ...],
                  varied: str | None = None) -> str:
    """credential | codings | query [| varied]: the last part only on `vary:` rules, so
    other rules keep the fields they always had."""
    enc = _CODINGS.get(codings)
    if enc is None:  # at most 2**4 sets of known codings
        enc = _CODINGS[codings] = "+".join(sorted(codings)) or "identity"
    q = hashlib.sha256("&".join(query).encode()).hexdigest()[:16] if query else "-"
    if varied is None:
        return f"{credential}|{enc}|{q}"
    return f"{credential}|{enc}|{q}|{hashlib.sha256(varied.encode()).hexdigest()[:16]}"


def varied_values(headers: CIMultiDictProxy[str], names: tuple[str, ...]) -> str:
    """The rule's `vary:` request headers, normalised as RFC 9111 §4.1 allows: field lines
    combined, whitespace around commas dropped. Absent and empty are told apart."""
    parts = []
    for name in names:
        values = headers.getall(name, None)
        parts.append("\x00" if values is None else ",".join(
            item.strip() for value in values for item in value.split(",")))
    return "\n".join(parts)
