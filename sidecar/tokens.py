"""Bearer-token verification for shared entries (PyJWT), with each result remembered.

Only what a JWKS key signed with an asymmetric algorithm that fits that key is accepted:
`none`, HS* (the "HMAC keyed with the public key" forgery) and an algorithm of another key
type are refused before any signature check. `exp`, `nbf`, `iss` and `aud` are checked with
a small leeway. A result is remembered per token (bounded LRU) until the token expires or
the key set changes, so a hit costs a dictionary lookup, not a signature check.
A failure is never an error: the caller is simply not shared.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from sidecar.jwks import ASYMMETRIC, Jwks

_REMEMBER = 4096
_NEGATIVE_S = 60.0  # a refused token is checked again after this


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that verified: its subject (written only to the audit sink) and claims (held
    in memory, never logged or stored)."""

    subject: str
    claims: Mapping[str, Any]


class TokenVerifier:
    def __init__(self, jwks: Jwks, *, issuer: str, audience: str, leeway: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        # token -> (key-set generation, valid until, result); in memory only
        self._seen: OrderedDict[str, tuple[int, float, Verified | None]] = OrderedDict()

    def known(self, token: str) -> tuple[bool, Verified | None]:
        """(True, result) when the token's check is remembered and still holds; (False,
        None) when `verify` would have to check it (the hit path then takes the slow way)."""
        self.jwks.tick()  # a removed key must stop verifying remembered tokens too
        known = self._seen.get(token)
        if known is not None:
            generation, until, result = known
            if generation == self.jwks.generation and self._clock() < until:
                self._seen.move_to_end(token)
                return True, result
        return False, None

    async def verify(self, token: str) -> Verified | None:
        found, result = self.known(token)
        if found:
            return result
        now = self._clock()
        try:
            result, until, definite = await self._check(token, now)
        except Exception:  # never a failed request: the caller is just not shared
            result, until, definite = None, now + _NEGATIVE_S, True
        if definite:
            self._remember(token, until, result)
        return result

    def _remember(self, token: str, until: float, result: Verified | None) -> None:
        self._seen[token] = (self.jwks.generation, until, result)
        self._seen.move_to_end(token)
        while len(self._seen) > _REMEMBER:
            self._seen.popitem(last=False)

    async def _check(self, token: str, now: float) -> tuple[Verified | None, float, bool]:
        """(result, remember until, definite): an unknown kid is not definite."""
        refused = (None, now + _NEGATIVE_S, True)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return refused
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASYMMETRIC or not isinstance(kid, str):
            return refused
        key = await self.jwks.key(kid)
        if key is None:
            return None, now, False
        if alg not in key.algorithms:
            return refused
        try:
            claims = jwt.decode(
                token, key=key.key.key, algorithms=[alg], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.PyJWTError:
            return refused
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return refused
        until = float(claims["exp"]) + self.leeway
        return Verified(subject, claims), until, True

