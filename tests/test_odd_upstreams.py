"""Upstreams that frame badly, send too much, or drip: relay what is sound, store nothing
that is not, and never hold a request past its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from tests.conftest import StackFactory

PATIENT = "/api/v1/patients/42"
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_upstream(serve: Serve) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hand-written HTTP/1.1 server; yields its URL and the request heads it read."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()


async def test_body_longer_than_content_length_relays_the_declared_bytes(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\n\r\n" + b'{"id": 42}' + b"X" * 26)
        await writer.drain()

    async with raw_upstream(overlong) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url})
        for _ in range(2):
            reply = await stack.proxy.get(PATIENT)
            assert reply.status == 200 and reply.body == b'{"id": 42}'
            assert reply.x_cache == "MISS" and "upstream-overflow" in reply.headers["Cache-Status"]
        passed = await stack.proxy.get("/api/v1/other")
        assert passed.status == 200 and passed.body == b'{"id": 42}'
    assert await redis_client.exists("identity:patient:42") == 0
    assert len(heads) == 3  # one upstream request each, and the connection was not reused


async def test_oversized_body_is_one_upstream_request_and_counted(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    big = b"x" * 5000

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(big), 1000):
            writer.write(b"%x\r\n%s\r\n" % (1000, big[i:i + 1000]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(large) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url, "CACHE_MAX_BODY_BYTES": "2048"})
        reply = await stack.proxy.get(PATIENT)
        assert reply.status == 200 and reply.body == big
        assert "too-large" in reply.headers["Cache-Status"]
        declared = await stack.proxy.get(PATIENT, headers={"X-Declared": "1"})
        assert declared.body == big
    assert len(heads) == 2
    assert await redis_client.exists("identity:patient:42") == 0
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert ('cache_not_stored_total{key_prefix="identity:patient",reason="too-large"} 2.0'
            in metrics)


async def test_declared_oversized_body_is_streamed_from_the_same_request(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    big = b"y" * 4096

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(big), big))
        await writer.drain()

    async with raw_upstream(large) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url, "CACHE_MAX_BODY_BYTES": "1024"})
        reply = await stack.proxy.get(PATIENT)
        assert reply.status == 200 and reply.body == big
    assert len(heads) == 1


async def test_a_dripping_upstream_hits_the_fill_deadline(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    async with raw_upstream(drip) as (url, _):
        stack = await make_stack({"UPSTREAM_URL": url, "UPSTREAM_READ_TIMEOUT_S": "1",
                                  "UPSTREAM_FILL_TIMEOUT_S": "1.5"})
        start = time.monotonic()
        reply = await stack.proxy.get(PATIENT)
        elapsed = time.monotonic() - start
    assert reply.status == 504
    assert elapsed < 10  # the drip alone would take 20 s; each read is within 1 s


async def test_stale_if_error_is_labelled_stale_in_metrics_and_log(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    live = await make_stack()
    await live.proxy.get(PATIENT)
    stack = await make_stack()
    stack.rt.set_clock(lambda: time.time() + 700)  # expired, within stale-if-error
    reply = await stack.proxy.get(PATIENT, headers={"X-Stub-Status": "503"})
    assert reply.status == 200 and reply.x_cache == "STALE"
    metrics = (await stack.admin.get("/metrics", token=None)).body.decode()
    assert ('sidecar_request_duration_seconds_count{cache="STALE",rule="patient",status="200"}'
            ' 1.0') in metrics
    assert 'cache="MISS",rule="patient",status="200"' not in metrics


async def test_a_stray_response_on_an_idle_connection_never_reaches_the_next_caller(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """The upstream answers, then writes a second, unrequested response on the now idle
    keep-alive socket. Reused, that connection would hand it to the next caller, and shift
    every later answer by one: other patients' records under other credentials."""
    stray_sent = asyncio.Event()

    async def smuggler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = heads[-1].split(b" ", 2)[1].decode()
        body = ('{"id": "' + head.rsplit("/", 1)[-1] + '"}').encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        if head.endswith("/1"):
            await asyncio.sleep(0.2)  # a later packet, on the idle connection
            fake = b'{"id": "SMUGGLED"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(fake), fake))
            await writer.drain()
            stray_sent.set()

    async with raw_upstream(smuggler) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url})
        assert (await stack.proxy.get("/api/v1/patients/1")).json() == {"id": "1"}
        await asyncio.wait_for(stray_sent.wait(), 10)
        for pid in ("2", "3", "4"):
            reply = await stack.proxy.get(f"/api/v1/patients/{pid}")
            assert reply.status == 200 and reply.json() == {"id": pid}
        for pid in ("2", "3", "4"):
            assert (await stack.proxy.get(f"/api/v1/patients/{pid}")).json() == {"id": pid}


async def test_close_delimited_and_non_utf8_header_responses_are_relayed_not_stored(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = heads[-1].split(b" ", 2)[1]
        if path.endswith(b"/1"):  # no Content-Length, no chunking: ends with the close
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n{\"id\": \"1\"}")
            await writer.drain()
            writer.close()
            raise ConnectionError  # this connection is done
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"X-Name: caf\xe9\xff\r\nContent-Length: 11\r\n\r\n{\"id\": \"2\"}")
        await writer.drain()

    async with raw_upstream(odd) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url})
        unframed = await stack.proxy.get("/api/v1/patients/1")
        assert unframed.status == 200 and "detail=unframed" in unframed.headers["Cache-Status"]
        altered = await stack.proxy.get("/api/v1/patients/2")
        assert altered.status == 200 and "detail=bad-header" in altered.headers["Cache-Status"]
    assert await redis_client.exists("identity:patient:1", "identity:patient:2") == 0


async def test_an_early_hints_interim_is_dropped_and_the_final_answer_relayed(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    """aiohttp can neither read nor send a 103 (aio-libs/aiohttp#7878): the sidecar drops
    it, and the final answer is relayed and stored as if it had come alone."""
    async def hinting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\n\r\n" + b'{"id": 42}')
        await writer.drain()

    async with raw_upstream(hinting) as (url, heads):
        stack = await make_stack({"UPSTREAM_URL": url})
        first = await stack.proxy.get(PATIENT)
        assert first.status == 200 and first.body == b'{"id": 42}' and first.x_cache == "MISS"
        assert "Link" not in first.headers  # the interim's hints are not the answer's
        second = await stack.proxy.get(PATIENT)
        assert second.x_cache == "HIT" and second.body == first.body
        passed = await stack.proxy.get("/api/v1/other")
        assert passed.status == 200 and passed.body == b'{"id": 42}'
    assert len(heads) == 2
