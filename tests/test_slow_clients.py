"""Slow and silent clients (slowloris) against the real process: the server closes them.

Raw sockets, so the test controls exactly which bytes are sent and when. Each attacking
connection waits for the server to close it (EOF or reset); a normal client is served while
they are open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.sidecar_process import SidecarProcess

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
REQUEST = b"GET /api/v1/slow?ms=1 HTTP/1.1\r\nHost: sidecar\r\n\r\n"
PARTIAL = b"GET /api/v1/slow?ms=1 HTTP/1.1\r\nHost: sidecar\r\n"
TRICKLE = b"X-Slow: 1\r\n"  # one more header line now and then, never the blank line
TRICKLE_EVERY_S = 0.2
# The timeouts under test are 1 s; the rest is slack for a busy 2-core machine.
CLOSED_WITHIN_S = 12.0


@pytest.fixture
async def opened() -> AsyncIterator[list[Conn]]:
    conns: list[Conn] = []
    yield conns
    for _, writer in conns:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _sidecar(stub_server: TestServer, keepalive: str, header: str) -> SidecarProcess:
    sidecar = SidecarProcess({"UPSTREAM_URL": str(stub_server.make_url("")).rstrip("/"),
                              "SIDECAR_KEEPALIVE_TIMEOUT_S": keepalive,
                              "SIDECAR_HEADER_TIMEOUT_S": header})
    sidecar.launch()
    await sidecar.ready()
    return sidecar


async def _connect(sidecar: SidecarProcess, opened: list[Conn], n: int) -> list[Conn]:
    conns = [await asyncio.open_connection("127.0.0.1", sidecar.port) for _ in range(n)]
    opened.extend(conns)
    return conns


async def _exchange(conn: Conn) -> int:
    """One whole request and response on a keep-alive connection; the status."""
    reader, writer = conn
    writer.write(REQUEST)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split(" ", 2)[1])


async def _served_once(sidecar: SidecarProcess, opened: list[Conn]) -> Conn:
    """A connection that had one request answered (sent at once: the timers run from connect)."""
    conn = (await _connect(sidecar, opened, 1))[0]
    assert await _exchange(conn) == 200
    return conn


async def _closed_by_server(conn: Conn, trickle: bytes | None = None) -> bytes:
    """Until the server closes the connection, sending `trickle` meanwhile; what it sent."""
    reader, writer = conn
    received = b""
    while True:
        try:
            if trickle is not None:
                writer.write(trickle)
                await writer.drain()
            chunk = await asyncio.wait_for(reader.read(1024),
                                           TRICKLE_EVERY_S if trickle is not None else None)
        except TimeoutError:
            continue  # still open: trickle another line
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk


async def _all_closed(*groups: Iterable[asyncio.Future[bytes]]) -> list[bytes]:
    waits = [w for group in groups for w in group]
    return await asyncio.wait_for(asyncio.gather(*waits), CLOSED_WITHIN_S)


async def _served(sidecar: SidecarProcess, times: int = 5) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(times):
            async with session.get(sidecar.base + "/api/v1/slow?ms=1") as r:
                assert r.status == 200
                assert await r.json() == {"slept_ms": 1}


async def test_silent_and_slow_header_senders_are_cut_at_the_header_deadline(
    stub_server: TestServer, opened: list[Conn],
) -> None:
    # Keep-alive far above the test's bound: only the header deadline can close these.
    sidecar = await _sidecar(stub_server, keepalive="300", header="1")
    try:
        kept = await _served_once(sidecar, opened)  # idle from here on: keep-alive, not headers
        silent = await _connect(sidecar, opened, 50)
        slow = await _connect(sidecar, opened, 50)
        for _, writer in slow:
            writer.write(PARTIAL)
        resumed = [await _served_once(sidecar, opened) for _ in range(10)]
        for _, writer in resumed:  # one whole request, then the next one's headers never end
            writer.write(PARTIAL)
        attack = asyncio.ensure_future(_all_closed(
            (asyncio.ensure_future(_closed_by_server(c)) for c in silent),
            (asyncio.ensure_future(_closed_by_server(c, TRICKLE)) for c in slow),
            (asyncio.ensure_future(_closed_by_server(c, TRICKLE)) for c in resumed)))
        await _served(sidecar)  # a normal client during the attack
        received = await attack
        assert received == [b""] * 110  # closed without a byte (no 400 for a timeout)
        # Idle longer than the header deadline (the attack's sockets opened after its last
        # response and were closed by it), yet a keep-alive connection: still served.
        assert await _exchange(kept) == 200
    finally:
        sidecar.stop()


async def test_idle_connections_are_closed_after_the_keepalive_timeout(
    stub_server: TestServer, opened: list[Conn],
) -> None:
    # Header deadline far above the test's bound: only the keep-alive timeout can close these.
    sidecar = await _sidecar(stub_server, keepalive="1", header="300")
    try:
        never_sent = await _connect(sidecar, opened, 50)
        after_a_request = [await _served_once(sidecar, opened) for _ in range(50)]
        idle = asyncio.ensure_future(_all_closed(
            (asyncio.ensure_future(_closed_by_server(c)) for c in never_sent),
            (asyncio.ensure_future(_closed_by_server(c)) for c in after_a_request)))
        await _served(sidecar)
        assert await idle == [b""] * 100
    finally:
        sidecar.stop()
