"""The stub is the reference the proxy tests compare against, so its own contract is pinned here."""

from __future__ import annotations

import asyncio
import hashlib
import random
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from upstream_stub.app import STATE, build_app
from upstream_stub.settings import StubSettings

Client = TestClient[web.Request, web.Application]
ALICE = {"Authorization": "Bearer alice-token", "Accept-Encoding": "identity"}
BOB = {"Authorization": "Bearer bob-token", "Accept-Encoding": "identity"}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(build_app(StubSettings()))


async def get_json(client: Client, path: str, headers: dict[str, str]) -> Any:
    async with client.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_settings_from_env() -> None:
    env = {"STUB_PORT": "9001", "STUB_ERROR_RATE": "0.5", "STUB_TEST_HOOKS": "false"}
    settings = StubSettings.from_env(env)
    assert (settings.port, settings.error_rate, settings.test_hooks) == (9001, 0.5, False)
    assert settings.host == "127.0.0.1"
    with pytest.raises(ValueError):
        StubSettings.from_env({"STUB_ERROR_RATE": "2"})


async def test_missing_token_is_401(client: Client) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        async with client.get("/api/v1/patients/1", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert "detail" in await resp.json()


async def test_denied_token_is_403(client: Client) -> None:
    headers = {"Authorization": "Bearer denied-1"}
    async with client.get("/api/v1/patients/1", headers=headers) as resp:
        assert resp.status == 403


async def test_patient_body_identifies_patient_and_caller(client: Client) -> None:
    alice = await get_json(client, "/api/v1/patients/7", ALICE)
    bob = await get_json(client, "/api/v1/patients/7", BOB)
    assert alice["id"] == bob["id"] == "7"
    assert alice["resourceType"] == "Patient" and alice["gdpr"]["consent"]
    assert alice["meta"]["caller"] == hashlib.sha256(b"alice-token").hexdigest()[:12]
    assert alice["meta"]["caller"] != bob["meta"]["caller"]
    assert {**alice, "meta": None} == {**bob, "meta": None}  # same data, different caller
    assert len(await (await client.get("/api/v1/patients/7", headers=ALICE)).read()) > 600


async def test_path_id_parsed_like_fastapi(client: Client) -> None:
    assert (await get_json(client, "/api/v1/patients/042", ALICE))["id"] == "42"
    async with client.get("/api/v1/patients/abc", headers=ALICE) as resp:
        assert resp.status == 422
    async with client.get(f"/api/v1/patients/{10**15}", headers=ALICE) as resp:
        assert resp.status == 404


async def test_other_reads_and_unknown_path(client: Client) -> None:
    professional = await get_json(client, "/api/v1/professionals/3", ALICE)
    assert professional["id"] == "3" and professional["license_number"]
    dashboard = await get_json(client, "/api/v1/statistics/dashboard", ALICE)
    assert dashboard["total_patients"] > 0 and dashboard["generated_at"]
    async with client.get("/nowhere") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}


async def test_etag_and_304(client: Client) -> None:
    async with client.get("/api/v1/patients/5", headers=ALICE) as resp:
        body = await resp.read()
        etag = resp.headers["ETag"]
        assert etag == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        assert resp.headers["Last-Modified"].endswith(" GMT")
        assert "X-Request-Id" in resp.headers and "Cache-Control" not in resp.headers
    async with client.get("/api/v1/patients/5", headers={**ALICE, "If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == etag
        assert await resp.read() == b""
    async with client.get("/api/v1/patients/5", headers={**ALICE, "If-None-Match": '"x"'}) as resp:
        assert resp.status == 200


async def test_gzip_only_when_accepted(client: Client) -> None:
    async with client.get("/api/v1/patients/5", headers=ALICE) as resp:
        assert "Content-Encoding" not in resp.headers
        assert resp.headers["Vary"] == "Accept-Encoding"
        plain_etag = resp.headers["ETag"]
    for accept, gzipped in (("gzip", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False)):
        headers = {**ALICE, "Accept-Encoding": accept}
        async with client.get("/api/v1/patients/5", headers=headers) as resp:
            assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped, accept
            assert resp.headers["ETag"] == plain_etag
            assert (await resp.json())["id"] == "5"  # client transparently inflates
    headers = {**ALICE, "Accept-Encoding": "gzip"}
    async with client.get("/api/v1/professionals/5", headers=headers) as resp:
        assert "Content-Encoding" not in resp.headers  # under Starlette's 500-byte minimum


async def test_put_patch_then_get_shows_new_version(client: Client) -> None:
    before = await get_json(client, "/api/v1/patients/9", ALICE)
    async with client.put("/api/v1/patients/9", json={"gender": "other"}, headers=ALICE) as resp:
        assert resp.status == 200
    after = await get_json(client, "/api/v1/patients/9", ALICE)
    assert after["gender"] == "other" and "name" not in after  # PUT replaces
    assert after["meta"]["versionId"] == before["meta"]["versionId"] + 1
    patch = {"name": [{"family": "Roux"}]}
    async with client.patch("/api/v1/patients/9", json=patch, headers=ALICE) as resp:
        assert resp.status == 200
    patched = await get_json(client, "/api/v1/patients/9", ALICE)
    assert patched["gender"] == "other" and patched["name"] == patch["name"]
    assert patched["meta"]["versionId"] == after["meta"]["versionId"] + 1
    assert 9 in client.app[STATE].patients


async def test_create_and_delete(client: Client) -> None:
    async with client.post("/api/v1/patients", json={"gender": "female"}, headers=ALICE) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["id"] == str(10**6)
    assert (await get_json(client, f"/api/v1/patients/{10**6}", ALICE))["gender"] == "female"
    async with client.delete("/api/v1/patients/12", headers=ALICE) as resp:
        assert resp.status == 204
    async with client.get("/api/v1/patients/12", headers=ALICE) as resp:
        assert resp.status == 404


async def test_echo_is_byte_exact(client: Client) -> None:
    body = random.Random(1).randbytes(3 * 1024 * 1024)
    async with client.post("/api/v1/echo", data=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["X-Body-Sha256"] == hashlib.sha256(body).hexdigest()
        assert resp.headers["X-Received-Content-Length"] == str(len(body))
        assert resp.headers["X-Received-Transfer-Encoding"] == "none"
        assert await resp.read() == body


async def test_echo_headers_keeps_duplicates_and_raw_path(client: Client) -> None:
    headers = [("X-Dup", "1"), ("X-Dup", "2")]
    async with client.get("/api/v1/echo/headers?q=a%2Bb&x=%26", headers=headers) as resp:
        seen = await resp.json()
    assert [h for h in seen["headers"] if h[0] == "X-Dup"] == [["X-Dup", "1"], ["X-Dup", "2"]]
    assert seen["raw_path"] == "/api/v1/echo/headers?q=a%2Bb&x=%26"


async def test_redirect_is_not_followed_by_stub(client: Client) -> None:
    async with client.get("/api/v1/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/api/v1/echo/headers"
        assert resp.headers["Set-Cookie"] == "session=abc; Path=/"


async def test_status_and_header_hooks(client: Client) -> None:
    headers = {**ALICE, "X-Stub-Status": "500"}
    async with client.get("/api/v1/patients/1", headers=headers) as resp:
        assert resp.status == 500
        assert await resp.json() == {"detail": "forced"}
    hooked = [*ALICE.items(), ("X-Stub-Header", "Set-Cookie: a=b"),
              ("X-Stub-Header", "Cache-Control: no-store"), ("X-Stub-Header", "Vary: *"),
              ("X-Stub-Body-Bytes", "4000")]
    async with client.get("/api/v1/patients/1", headers=hooked) as resp:
        assert resp.status == 200
        assert resp.headers["Set-Cookie"] == "a=b"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers.getall("Vary") == ["*"]
        assert len(await resp.read()) >= 4000


async def test_close_early_hook_truncates_body(client: Client) -> None:
    headers = {**ALICE, "X-Stub-Close-Early": "1"}
    async with client.get("/api/v1/patients/1", headers=headers) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_hooks_ignored_when_disabled(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(StubSettings(test_hooks=False)))
    async with client.get("/api/v1/patients/1", headers={**ALICE, "X-Stub-Status": "500"}) as r:
        assert r.status == 200


async def test_error_rate_answers_503(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(build_app(StubSettings(error_rate=1.0)))
    async with client.get("/api/v1/statistics/dashboard", headers=ALICE) as resp:
        assert resp.status == 503
        assert await resp.json() == {"detail": "backend unavailable"}


async def test_hits_counter_and_reset(client: Client) -> None:
    state = client.app[STATE]
    await get_json(client, "/api/v1/patients/042?x=1", ALICE)
    await get_json(client, "/api/v1/patients/042", ALICE)
    await client.get("/api/v1/patients/1")
    assert state.hits["GET /api/v1/patients/042"] == 2
    assert state.hits["GET /api/v1/patients/1"] == 1
    await client.delete("/api/v1/patients/3", headers=ALICE)
    state.reset()
    assert not state.hits and not state.patients
    assert (await get_json(client, "/api/v1/patients/3", ALICE))["id"] == "3"


async def test_a_304_skips_the_fhir_read(aiohttp_client: AiohttpClient) -> None:
    """What makes revalidation worth it: an unchanged record costs the service its row read,
    not its FHIR read (the benchmark's revalidated refresh relies on this)."""
    client = await aiohttp_client(build_app(StubSettings(pg_delay_ms=0, fhir_delay_ms=1000)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.get("/api/v1/patients/5", headers=ALICE) as resp:
        etag = resp.headers["ETag"]
    assert loop.time() - started >= 0.9  # a full answer reads FHIR
    started = loop.time()
    async with client.get("/api/v1/patients/5", headers={**ALICE, "If-None-Match": etag}) as resp:
        assert resp.status == 304
    assert loop.time() - started < 1.0  # no FHIR read at all (a sleep of 0)
    started = loop.time()
    async with client.get("/api/v1/patients/5", headers={**ALICE, "If-None-Match": '"x"'}) as resp:
        assert resp.status == 200 and await resp.read()
    assert loop.time() - started >= 0.9  # changed: the full read
