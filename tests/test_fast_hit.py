"""The plain hit answered as its request is parsed (fast_hit.py), over real sockets.

What a client could notice: which requests it takes, that its bytes are the ordinary hit's,
and that answers on one connection stay in order whichever path each takes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from sidecar import proxy
from sidecar.runtime import Runtime
from tests.conftest import TOKEN_A, Stack, StackFactory

PATIENT = "/api/v1/patients/1"
OTHER = "/api/v1/patients/2"


def _request(path: str, rid: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: sidecar", f"Authorization: {TOKEN_A}",
             f"X-Request-ID: {rid}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """(head as sent, headers by lower-case name, body) of one Content-Length response."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.lower()] = value.strip()
    body = await reader.readexactly(int(fields["content-length"]))
    return head, fields, body


async def _open(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the stack's proxy port."""
    port = int(stack.proxy.base.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths aiohttp's handler (the ordinary path) was given."""
    seen: list[str] = []
    ordinary: Callable[[web.Request, Runtime], Awaitable[web.StreamResponse]] = proxy.serve

    async def counting(request: web.Request, rt: Runtime) -> web.StreamResponse:
        seen.append(request.raw_path)
        return await ordinary(request, rt)

    monkeypatch.setattr(proxy, "serve", counting)
    return seen


async def _warm(stack: Stack, path: str = PATIENT) -> None:
    """Stored, and in the near tier (what the fast path reads)."""
    assert (await stack.proxy.get(path)).x_cache == "MISS"


async def test_a_plain_hit_never_reaches_the_ordinary_path(
    make_stack: StackFactory, handled: list[str],
) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    handled.clear()
    for _ in range(3):
        reply = await stack.proxy.get(PATIENT)
        assert reply.x_cache == "HIT"
        assert reply.json()["id"] == "1"
    assert handled == []
    # Not plain: each of these is the ordinary path's, and still a correct answer.
    assert (await stack.proxy.request("HEAD", PATIENT)).x_cache == "HIT"
    assert (await stack.proxy.get(PATIENT, headers={"Range": "bytes=0-1"})).status == 206
    assert (await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-cache"})
            ).x_cache == "MISS"
    assert len(handled) == 3


async def test_the_fast_answer_is_the_ordinary_answer_byte_for_byte(
    make_stack: StackFactory, handled: list[str],
) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    moment = time.time()
    stack.rt.set_clock(lambda: moment)  # one Age for both answers
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        handled.clear()
        writer.write(_request(PATIENT, "same-id"))
        fast = await _response(reader)
        assert handled == []
        # A validator that does not match: the ordinary path answers the same 200.
        writer.write(_request(PATIENT, "same-id",
                              "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"))
        ordinary = await _response(reader)
        assert handled == [PATIENT]
    finally:
        writer.close()
    assert fast[1]["x-cache"] == "HIT"
    assert fast == ordinary


async def test_pipelined_requests_are_answered_in_order_whichever_path_each_takes(
    make_stack: StackFactory, handled: list[str],
) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        handled.clear()
        # hit, miss (upstream), hit, HEAD (ordinary), hit: one write
        writer.write(b"".join((
            _request(PATIENT, "r1"), _request(OTHER, "r2"), _request(PATIENT, "r3"),
            _request(PATIENT, "r4").replace(b"GET", b"HEAD", 1), _request(PATIENT, "r5"))))
        answers = [await _response(reader) for _ in range(3)]
        head = await reader.readuntil(b"\r\n\r\n")  # the HEAD: no body
        answers.append(await _response(reader))
    finally:
        writer.close()
    assert [a[1]["x-request-id"] for a in answers] == ["r1", "r2", "r3", "r5"]
    assert [a[1]["x-cache"] for a in answers] == ["HIT", "MISS", "HIT", "HIT"]
    assert b"X-Request-ID: r4" in head
    bodies = [a[2] for a in answers]
    assert b'"id":"2"' in bodies[1].replace(b" ", b"")
    assert bodies[0] == bodies[2] == bodies[3] and b'"id":"1"' in bodies[0].replace(b" ", b"")
    assert handled[0] == OTHER  # the miss; what follows it waits for it, on that path
    assert (await stack.proxy.get(PATIENT)).x_cache == "HIT"


async def test_a_client_that_does_not_read_gets_every_answer_in_order(
    make_stack: StackFactory, handled: list[str],
) -> None:
    # Past 64 KiB unsent, the fast path stops; aiohttp's path (which waits for the socket
    # to drain) answers the rest. Nothing is lost, reordered or doubled.
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    handled.clear()
    port = int(stack.proxy.base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it backs up
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    count = 4000  # about 7 MB of answers, more than the kernel buffers between us
    try:
        writer.write(b"".join(_request(PATIENT, f"n{i}") for i in range(count)))
        ids = [(await _response(reader))[1]["x-request-id"] for _ in range(count)]
    finally:
        writer.close()
    assert ids == [f"n{i}" for i in range(count)]
    assert handled  # the socket backed up: the ordinary path answered some of them


async def test_a_token_not_yet_verified_is_verified_by_the_ordinary_path(
    make_stack: StackFactory, handled: list[str],
) -> None:
    # With a key set configured, an audited rule verifies bearer tokens; an unknown token
    # is never decided here (verification may wait for the key set).
    stack = await make_stack({"REDIS_URL": "memory://",
                              "CACHE_JWT_JWKS_URL": "http://127.0.0.1:9/jwks.json",
                              "CACHE_JWT_ISSUER": "https://issuer.test",
                              "CACHE_JWT_AUDIENCE": "identity"})
    await _warm(stack)
    handled.clear()
    assert (await stack.proxy.get(PATIENT, token="Bearer not-a-jwt")).x_cache == "MISS"
    assert handled == [PATIENT]  # a new credential: checked (refused) there, a miss
    assert (await stack.proxy.get(PATIENT, token="Bearer not-a-jwt")).x_cache == "HIT"
    assert handled == [PATIENT]  # its check remembered: the fast path answers


async def test_a_partial_request_read_with_an_answered_one_gets_the_header_deadline(
    make_stack: StackFactory,
) -> None:
    # Keep-alive far beyond the test's bound: only the header deadline can close it soon.
    stack = await make_stack({"REDIS_URL": "memory://", "SIDECAR_HEADER_TIMEOUT_S": "0.5",
                              "SIDECAR_KEEPALIVE_TIMEOUT_S": "300"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        writer.write(_request(PATIENT, "whole") + b"GET /api/v1/patients/2 HTTP/1.1\r\nHost: s\r\n")
        assert (await _response(reader))[1]["x-cache"] == "HIT"  # answered by the fast path
        rest = await asyncio.wait_for(reader.read(), 10)  # the deadline closes it, silently
    finally:
        writer.close()
    assert rest == b""


async def test_a_request_behind_a_declined_upgrade_is_not_left_waiting(stack: Stack) -> None:
    reader, writer = await _open(stack)
    try:
        writer.write(_request(PATIENT, "up", "Connection: upgrade", "Upgrade: h2c")
                     + _request(PATIENT, "next"))
        head, fields, _ = await _response(reader)
        assert b" 200 " in head and fields["x-cache"] == "BYPASS"
        assert fields["connection"] == "close"  # the next request is for a new connection
        rest = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert rest == b""
