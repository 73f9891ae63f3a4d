"""Shared entries for verified callers, against real parts: a JWKS served by a real local
HTTP server, tokens minted here with real RSA and EC keys, the sidecar in front of the stub.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from redis.asyncio import Redis

from tests.conftest import ROUTES, Stack, StackFactory

PATIENT = "/api/v1/patients/42"
ISSUER = "https://idp.test"
AUDIENCE = "identity-api"
SHARED_ROUTES = ROUTES.read_text().replace(
    "    audit: true\n", "    audit: true\n    share: {claims: {role: [clinician, admin]}}\n", 1)


@dataclass
class Idp:
    """A JWKS endpoint whose keys and status the test changes; counts its fetches."""

    keys: dict[str, Any] = field(default_factory=dict)  # kid -> private key
    published: list[str] = field(default_factory=list)
    status: int = 200
    fetches: int = 0
    url: str = ""

    def add(self, kid: str, key: Any) -> None:
        self.keys[kid] = key
        self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            key = self.keys[kid]
            algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": out}

    def token(self, kid: str, *, key: Any = None, alg: str | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{kid}", "iat": now,
                   "exp": now + 600, "role": "clinician", **claims}
        signer = key if key is not None else self.keys[kid]
        algorithm = alg or ("RS256" if isinstance(signer, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(payload, signer, algorithm=algorithm, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand, as a forger would: `alg: none`, or HS256 under `secret`."""
    head = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return head + "."
    return f"{head}.{_b64(hmac.digest(secret, head.encode(), hashlib.sha256))}"


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    state = Idp()
    state.add("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    async def jwks(_: web.Request) -> web.Response:
        state.fetches += 1
        if state.status != 200:
            return web.Response(status=state.status)
        return web.json_response(state.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/jwks.json"))
    yield state
    await server.close()


async def _shared_stack(make_stack: StackFactory, idp: Idp, tmp_path: Path,
                        **env: str) -> Stack:
    return await make_stack({
        "CACHE_JWT_JWKS_URL": idp.url, "CACHE_JWT_ISSUER": ISSUER,
        "CACHE_JWT_AUDIENCE": AUDIENCE, "CACHE_AUDIT_LOG": str(tmp_path / "audit.log"),
        **env}, rules_yaml=SHARED_ROUTES)


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_two_clinicians_share_one_upstream_get(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path)
    alice = idp.token("k1", sub="alice")
    bob = idp.token("k1", sub="bob", role=["nurse", "admin"])  # a list claim: any value
    first = await stack.proxy.get(PATIENT, token=bearer(alice))
    second = await stack.proxy.get(PATIENT, token=bearer(bob))
    assert (first.x_cache, second.x_cache) == ("MISS", "HIT")
    assert second.body == first.body and stack.upstream_hits(PATIENT) == 1
    (line,) = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert line["subject"] == "bob" and line["key"] == "identity:patient:42"
    assert bob not in (tmp_path / "audit.log").read_text()


async def test_concurrent_clinicians_wait_for_one_fetch(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path)
    tokens = [idp.token("k1", sub=f"doctor-{i}") for i in range(5)]
    await stack.proxy.get("/api/v1/patients/7", token=bearer(tokens[0]))  # keys fetched
    replies = await asyncio.gather(*(
        stack.proxy.get(PATIENT, token=bearer(t), headers={"X-Stub-Delay-Ms": "100"})
        for t in tokens))
    assert all(r.status == 200 for r in replies) and stack.upstream_hits(PATIENT) == 1
    # The four who waited read the one fetch's copy: cached reads, each audited under its
    # own subject; the one whose request the service answered is in the service's log.
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    waited = [r for r in replies if "collapsed" in r.headers.get("Cache-Status", "")]
    assert len(waited) == 4
    assert sorted((x["subject"], x["outcome"], x["key"]) for x in lines) == [
        (f"doctor-{i}", "COLLAPSED", "identity:patient:42") for i in range(5)
        if replies[i] in waited]


async def test_another_issuer_or_audience_never_reuses_the_shared_copy(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    """Sharing trusts one issuer, audience and key set: a redeploy that changes them (same
    rules, same Redis) starts a new shared variant, never the old callers' copy."""
    before = await _shared_stack(make_stack, idp, tmp_path)
    assert (await before.proxy.get(PATIENT, token=bearer(idp.token("k1")))).x_cache == "MISS"
    after = await _shared_stack(make_stack, idp, tmp_path, CACHE_JWT_AUDIENCE="patient-api")
    for sub, expected in (("alice", "MISS"), ("bob", "HIT")):
        token = idp.token("k1", sub=sub, aud="patient-api")
        assert (await after.proxy.get(PATIENT, token=bearer(token))).x_cache == expected, sub
    assert before.upstream_hits(PATIENT) == 2


async def test_who_never_gets_the_shared_entry(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path)
    await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="alice")))
    now = int(time.time())
    public_jwk = json.dumps(idp.jwks()["keys"][0]).encode()
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 600,
              "role": "clinician"}
    stranger = ec.generate_private_key(ec.SECP256R1())
    callers = {
        "receptionist": bearer(idp.token("k1", role="receptionist")),
        "another key": bearer(idp.token("k1", key=rsa.generate_private_key(
            public_exponent=65537, key_size=2048))),
        "an EC key under the RSA kid": bearer(idp.token("k1", key=stranger)),
        "expired": bearer(idp.token("k1", exp=now - 3600, iat=now - 7200)),
        "not yet valid": bearer(idp.token("k1", nbf=now + 3600)),
        "wrong audience": bearer(idp.token("k1", aud="another-api")),
        "wrong issuer": bearer(idp.token("k1", iss="https://evil.test")),
        "no subject": bearer(idp.token("k1", sub="")),
        "HS256 keyed with the public JWK": bearer(_unsigned(
            {"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims, public_jwk)),
        "alg none": bearer(_unsigned({"alg": "none", "typ": "JWT", "kid": "k1"}, claims, None)),
        "not a token": "Bearer not-a-jwt",
        "token with a cookie": bearer(idp.token("k1")),
    }
    for n, (what, authorization) in enumerate(callers.items(), 2):
        headers = {"Cookie": "session=x"} if what == "token with a cookie" else None
        reply = await stack.proxy.get(PATIENT, token=authorization, headers=headers)
        assert reply.x_cache == "MISS", what
        assert stack.upstream_hits(PATIENT) == n, what
    anonymous = await stack.proxy.get(PATIENT, token=None)
    assert anonymous.x_cache == "MISS"  # the stub refuses it: 401, never the shared body
    assert anonymous.status == 401


async def test_a_rule_without_share_keeps_per_credential_variants(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path)
    path = "/api/v1/professionals/9"
    await stack.proxy.get(path, token=bearer(idp.token("k1", sub="alice")))
    other = await stack.proxy.get(path, token=bearer(idp.token("k1", sub="bob")))
    assert other.x_cache == "MISS" and stack.upstream_hits(path) == 2


async def test_key_rotation_new_kid_is_fetched_and_a_removed_key_stops_verifying(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path, CACHE_JWT_JWKS_REFRESH_S="0.3")
    old = idp.token("k1", sub="alice")
    assert (await stack.proxy.get(PATIENT, token=bearer(old))).x_cache == "MISS"
    # The provider publishes a new EC key and signs with it: an unknown kid, fetched at once.
    await asyncio.sleep(0.35)  # past the unknown-kid rate limit (the refresh interval here)
    idp.add("k2", ec.generate_private_key(ec.SECP256R1()))
    new = idp.token("k2", sub="bob")
    assert (await stack.proxy.get(PATIENT, token=bearer(new))).x_cache == "HIT"
    assert stack.upstream_hits(PATIENT) == 1
    # A k1 token remembered under the current key set, then k1 leaves the set: after the
    # next refresh it is no longer shared.
    assert (await stack.proxy.get(PATIENT, token=bearer(old))).x_cache == "HIT"
    idp.published.remove("k1")
    generation = stack.rt.jwks.generation if stack.rt.jwks else 0
    await asyncio.sleep(0.35)
    await stack.proxy.get(PATIENT, token=bearer(old))  # remembered; starts the refresh
    for _ in range(100):
        if stack.rt.jwks is not None and stack.rt.jwks.generation != generation:
            break
        await asyncio.sleep(0.02)
    assert stack.rt.jwks is not None and stack.rt.jwks.generation != generation
    reply = await stack.proxy.get(PATIENT, token=bearer(old))  # remembered, but re-checked
    assert reply.x_cache == "MISS"
    again = await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="carol")))
    assert again.x_cache == "MISS"  # a k1 token never reaches the shared entry now
    assert (await stack.proxy.get(PATIENT, token=bearer(new))).x_cache == "HIT"


async def test_a_down_provider_keeps_the_last_keys_for_a_bounded_time(
    make_stack: StackFactory, redis_client: Redis, idp: Idp, tmp_path: Path
) -> None:
    stack = await _shared_stack(make_stack, idp, tmp_path, CACHE_JWT_JWKS_REFRESH_S="0.1",
                                CACHE_JWT_JWKS_MAX_STALE_S="0.6")
    await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="alice")))
    idp.status = 503
    await asyncio.sleep(0.2)
    kept = await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="bob")))
    assert kept.x_cache == "HIT"  # the last good set still verifies
    for _ in range(100):  # the refresh that request started fails
        if idp.fetches >= 2:
            break
        await asyncio.sleep(0.02)
    assert idp.fetches >= 2
    still = await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="dan")))
    assert still.x_cache == "HIT"
    await asyncio.sleep(0.6)
    dropped = await stack.proxy.get(PATIENT, token=bearer(idp.token("k1", sub="carol")))
    assert dropped.x_cache == "MISS" and dropped.status == 200  # never an error
