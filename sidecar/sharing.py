"""Which copy a caller may see: its own (per-credential) or the rule's one shared variant.

A rule with `share:` lets callers whose bearer token verifies (tokens.py) and whose claims
satisfy the rule use one variant, so two clinicians reading one patient cost one upstream
GET. Everyone else keeps today's per-credential variant and never touches the shared one.
The caller's own `Authorization` still goes upstream on a miss: the service decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy

from sidecar.rules import Rule, Share
from sidecar.tokens import TokenVerifier, Verified
from sidecar.variants import CredentialHasher

# RFC 8693 §4.2: `scope` (and Azure's `scp`) is one space-separated string.
_SPACE_SEPARATED = frozenset({"scope", "scp"})


@dataclass(frozen=True, slots=True)
class Caller:
    credential: str  # the variant's credential part: a fingerprint, `anon` or a share marker
    subject: str  # for the audit line: the verified `sub`, else the fingerprint


class Callers:
    def __init__(self, hasher: CredentialHasher, verifier: TokenVerifier | None) -> None:
        self.hasher = hasher
        self.verifier = verifier
        # The shared variant belongs to one trust setting too: a new issuer, audience or
        # key set URL (a redeploy) must not reuse what callers of the old one were given.
        trust = "" if verifier is None else "\n".join(
            (verifier.issuer, verifier.audience, verifier.jwks.url))
        self._trust = hashlib.sha256(trust.encode()).hexdigest()[:8]
        self._markers: dict[str, str] = {}  # rule marker -> marker bound to the trust

    async def identify(self, rule: Rule, headers: CIMultiDictProxy[str]) -> Caller:
        verified = None
        if self.verifier is not None and (rule.share is not None or rule.audit):
            token = self._bearer(headers)
            if token is not None:
                verified = await self.verifier.verify(token)
        return self._caller(rule, headers, verified)

    def known(self, rule: Rule, headers: CIMultiDictProxy[str]) -> Caller | None:
        """`identify` without waiting: None when a token would have to be checked first."""
        verified = None
        if self.verifier is not None and (rule.share is not None or rule.audit):
            token = self._bearer(headers)
            if token is not None:
                found, verified = self.verifier.known(token)
                if not found:
                    return None
        return self._caller(rule, headers, verified)

    def _caller(self, rule: Rule, headers: CIMultiDictProxy[str],
                verified: Verified | None) -> Caller:
        if verified is not None and rule.share is not None and qualifies(
                rule.share, verified.claims):
            return Caller(self._marker(rule.share.marker), verified.subject)
        fingerprint = self.hasher.fingerprint(headers)
        return Caller(fingerprint, verified.subject if verified is not None else fingerprint)

    def _marker(self, marker: str) -> str:
        """The variant's credential part for qualifying callers (no fingerprint needed)."""
        bound = self._markers.get(marker)
        if bound is None:
            bound = self._markers[marker] = f"{marker}.{self._trust}"
        return bound

    def _bearer(self, headers: CIMultiDictProxy[str]) -> str | None:
        """The token of a caller whose only credential is one `Authorization: Bearer`: a
        cookie or API key beside it could be what the service really authorises."""
        values = headers.getall("Authorization", [])
        if len(values) != 1 or any(
                name.lower() != "authorization" and name in headers
                for name in self.hasher.headers):
            return None
        scheme, _, token = values[0].partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None


def qualifies(share: Share, claims: Mapping[str, Any]) -> bool:
    """Every named claim holds one of its values (a list claim: any of its items)."""
    for name, wanted in share.claims:
        value = claims.get(name)
        if isinstance(value, str):
            held = set(value.split()) if name in _SPACE_SEPARATED else {value}
        elif isinstance(value, list):
            held = {v for v in value if isinstance(v, str)}
        else:
            return False
        if not held & wanted:
            return False
    return True
