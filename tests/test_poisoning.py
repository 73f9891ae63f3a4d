"""Web cache poisoning: no unkeyed request input may shape a stored response.

The stub builds its `Link: <...>; rel="self"` from X-Forwarded-Host/-Proto like a service
behind proxy-headers middleware. Every vector is sent on a miss by an attacker holding the
same credential as the victim (a shared service token, or a public record's anonymous
copy); the copy the victim gets next must not carry it.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.conftest import Stack, StackFactory

PATIENT = "/api/v1/patients/42"
ECHO = "/api/v1/echo/headers"
EVIL = "evil.example"
VECTORS = [
    {"Host": EVIL},
    {"X-Forwarded-Host": EVIL},
    {"X-Forwarded-Proto": "gopher"},
    {"X-Forwarded-Port": "6666"},
    {"Forwarded": f"host={EVIL};proto=https"},
    {"X-Original-URL": "/api/v1/patients/43"},
    {"X-Rewrite-URL": "/api/v1/patients/43"},
    {"X-Host": EVIL},
    {"X-Forwarded-Server": EVIL},
    {"X-HTTP-Method-Override": "DELETE"},
    {"X-Forwarded-Uri": "/api/v1/patients/43"},
    {"X-Envoy-Original-Path": "/api/v1/patients/43"},
    {"X_Forwarded_Host": EVIL},
    {"X-Real-IP": "6.6.6.6"},
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: next(iter(v)))
async def test_vector_does_not_reach_the_upstream_or_the_stored_copy(
    stack: Stack, redis_client: Redis, vector: dict[str, str]
) -> None:
    echo = await stack.proxy.get(ECHO, token=None, headers=vector)
    sent = {k.lower(): v for k, v in echo.json()["headers"]}
    name, value = next(iter(vector.items()))
    if name != "Host":
        assert name.lower() not in sent
    assert all(value not in v for k, v in sent.items() if k != "host")
    poisoned = await stack.proxy.get(PATIENT, headers=vector)
    assert poisoned.x_cache == "MISS"
    victim = await stack.proxy.get(PATIENT)
    assert victim.x_cache == "HIT"
    assert EVIL not in victim.headers["Link"] and "gopher" not in victim.headers["Link"]
    assert victim.json()["id"] == "42"


async def test_public_origin_comes_from_configuration(make_stack: StackFactory,
                                                      redis_client: Redis) -> None:
    stack = await make_stack({"SIDECAR_PUBLIC_ORIGIN": "https://identity.example.org"})
    echo = await stack.proxy.get(ECHO, token=None, headers={
        "X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "gopher", "Host": EVIL})
    sent = {k.lower(): v for k, v in echo.json()["headers"]}
    assert sent["x-forwarded-host"] == "identity.example.org"
    assert sent["x-forwarded-proto"] == "https"
    await stack.proxy.get(PATIENT, headers={"Host": EVIL})
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT"
    assert hit.headers["Link"] == '<https://identity.example.org/api/v1/patients/42>; rel="self"'


async def test_duplicated_host_is_refused(stack: Stack, redis_client: Redis) -> None:
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {PATIENT} HTTP/1.1\r\nHost: {host}\r\nHost: {EVIL}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    assert status == 400
    assert await redis_client.exists("identity:patient:42") == 0


async def test_non_utf8_header_bytes_are_refused_not_altered(
    stack: Stack, redis_client: Redis
) -> None:
    """`Bearer tok\\xff` once reached the service as `Bearer tok`: a different credential."""
    host, port = stack.proxy.base.removeprefix("http://").split(":")
    for path in (PATIENT, ECHO):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                     + b"Authorization: Bearer tok\xff\r\n\r\n")
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        assert status == 400
    assert stack.upstream_hits(PATIENT) == 0 and stack.upstream_hits(ECHO) == 0


async def test_utf8_header_values_are_forwarded_byte_for_byte(stack: Stack) -> None:
    echo = await stack.proxy.get(ECHO, token=None, headers={"X-Display-Name": "José"})
    sent = {k.lower(): v for k, v in echo.json()["headers"]}
    assert sent["x-display-name"] == "José"
