"""The identity provider's signing keys (a JWKS), fetched with aiohttp and cached.

PyJWT's own `PyJWKClient` fetches with blocking `urllib`; here the fetch is async and
shared by every request waiting for it. The keys are refreshed every `refresh` seconds in
the background; an unknown `kid` fetches again at once, but at most once per
`min_interval` (so tokens with made-up kids cannot hammer the provider). When the provider
is down the last good set is kept for `max_stale` seconds after its fetch, then dropped:
nobody is shared until it answers again. Only asymmetric public keys are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from sidecar.logs import RateLimitedWarning

log = logging.getLogger("sidecar.jwks")
# Which algorithms each key type may sign with (RFC 7518 §3.1, RFC 8037); `oct` (HMAC)
# keys are never taken from a JWKS.
_BY_KEY: dict[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("OKP", "Ed448"): frozenset({"EdDSA"}),
}
ASYMMETRIC = frozenset().union(*_BY_KEY.values())
_MAX_BYTES = 512 * 1024
_FETCH_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key from the set and the algorithms it may verify (its own `alg` if the
    JWK names one, else those of its type)."""

    key: PyJWK
    algorithms: frozenset[str]


class Jwks:
    def __init__(self, url: str, *, refresh: float, max_stale: float, min_interval: float,
                 clock: Callable[[], float] = time.monotonic, warn_interval: float = 10.0
                 ) -> None:
        self.url = url
        self.refresh = refresh
        self.max_stale = max_stale
        self.min_interval = min_interval
        self.generation = 0  # bumped whenever the key set changes (remembered results go)
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._published: dict[str, str] = {}  # kid -> its JWK as canonical JSON
        self._fetched_at: float | None = None  # last good fetch
        self._tried_at: float | None = None  # last attempt, good or not
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warn = RateLimitedWarning(log, warn_interval)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_S),
            cookie_jar=aiohttp.DummyCookieJar())
        self._spawn()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def usable(self) -> bool:
        """Whether a key set is held and not older than `max_stale`."""
        now = self._clock()
        if self._fetched_at is None:
            return False
        if now - self._fetched_at > self.max_stale:
            if self._keys:
                self._keys = {}
                self.generation += 1
                self._warn.warn("jwks-expired", "JWKS older than its bound: sharing is off "
                                "until the identity provider answers")
            return False
        return True

    def tick(self) -> None:
        """Called on every verification, remembered or not: starts a due refresh in the
        background and drops a set past `max_stale` (either bumps `generation` when the
        keys change, which retires remembered results)."""
        self._refresh_if_due()
        self.usable()

    async def key(self, kid: str) -> SigningKey | None:
        """The key named `kid`; an unknown one waits for one rate-limited fetch."""
        self._refresh_if_due()
        if self.usable() and kid in self._keys:
            return self._keys[kid]
        now = self._clock()
        if self._task is None and (self._tried_at is None
                                   or now - self._tried_at >= self.min_interval):
            self._spawn()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), _FETCH_TIMEOUT_S)
        return self._keys.get(kid) if self.usable() else None

    def _refresh_if_due(self) -> None:
        if self._task is None and self._fetched_at is not None:
            now = self._clock()
            if now - self._fetched_at >= self.refresh and (
                    self._tried_at is None or now - self._tried_at >= self.min_interval):
                self._spawn()

    def _spawn(self) -> None:
        if self._task is None and self._session is not None:
            self._tried_at = self._clock()
            self._task = asyncio.get_running_loop().create_task(self._fetch())
            self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None

    async def _fetch(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(self.url, allow_redirects=False) as r:
                if r.status != 200:
                    raise ValueError(f"status {r.status}")
                raw = await r.content.read(_MAX_BYTES + 1)
                if len(raw) > _MAX_BYTES:
                    raise ValueError("JWKS larger than 512 KiB")
            raw_keys = _parse(json.loads(raw))
        except Exception as exc:  # a bad answer, whatever its shape, only keeps the last set
            self._warn.warn("jwks-fetch", f"JWKS fetch failed ({type(exc).__name__}: "
                            f"{exc}); keeping the last good set within its bound")
            return
        published = {kid: text for kid, (text, _) in raw_keys.items()}
        if published != self._published or not self._keys:
            self.generation += 1
            self._keys = {kid: key for kid, (_, key) in raw_keys.items()}
        self._published = published
        self._fetched_at = self._clock()


def _parse(doc: Any) -> dict[str, tuple[str, SigningKey]]:
    """kid -> (its JWK as canonical JSON, key): the asymmetric public keys with a `kid`;
    anything else in the set is skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS (no 'keys' list)")
    keys: dict[str, tuple[str, SigningKey]] = {}
    for item in doc["keys"]:
        if not isinstance(item, dict):
            continue
        kty, kid, use = item.get("kty"), item.get("kid"), item.get("use", "sig")
        allowed = _BY_KEY.get((str(kty), None if kty == "RSA" else item.get("crv")),
                              frozenset())
        if "alg" in item:
            allowed = allowed & {item["alg"]}
        if not allowed or not isinstance(kid, str) or use != "sig" or "d" in item:
            continue  # not an asymmetric public signing key with an id
        try:
            keys[kid] = (json.dumps(item, sort_keys=True),
                         SigningKey(PyJWK.from_dict(item), frozenset(allowed)))
        except (PyJWKError, PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key PyJWT cannot build is skipped, not the whole set
    return keys
