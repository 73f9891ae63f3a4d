"""The fast path answering between two turns of aiohttp's loop (`_between`), and the header
deadline around it: requests delivered in that gap on purpose, over real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar import listener
from tests.conftest import StackFactory
from tests.test_fast_hit import OTHER, PATIENT, _open, _request, _response, _warm


class Gap:
    """Delivers bytes to the connection in the gap: after aiohttp's `_handle_request` has
    returned and before its start() loop resumes (a read landing in the same loop
    iteration as the end of a response)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pending: bytes | None = None
        self.between: list[bool] = []
        original = listener.HeaderDeadlineHandler._handle_request
        gap = self

        async def wrapped(self: listener.HeaderDeadlineHandler, *args: Any) -> Any:
            result = await original(self, *args)
            if gap.pending is not None:
                data, gap.pending = gap.pending, None

                def deliver() -> None:
                    gap.between.append(self._between())
                    self.data_received(data)
                asyncio.get_running_loop().call_soon(deliver)
            return result

        monkeypatch.setattr(listener.HeaderDeadlineHandler, "_handle_request", wrapped)


@pytest.fixture
def gap(monkeypatch: pytest.MonkeyPatch) -> Gap:
    return Gap(monkeypatch)


async def test_gap_mixed_pipeline_in_order(make_stack: StackFactory,
                                           gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        gap.pending = b"".join((
            _request(PATIENT, "g1"),
            _request(PATIENT, "g2").replace(b"GET", b"HEAD", 1),  # ordinary
            _request(PATIENT, "g3"),
            _request("/api/v1/patients/3", "g4"),  # miss, ordinary
            _request(PATIENT, "g5")))
        writer.write(_request(OTHER, "r0"))  # miss: the ordinary path
        ids = [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]
               for _ in range(2)]
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"X-Request-ID: g2" in head
        ids += [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]
                for _ in range(3)]
        # the connection is still usable afterwards
        writer.write(_request(PATIENT, "after"))
        ids.append((await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"])
    finally:
        writer.close()
    assert ids == ["r0", "g1", "g3", "g4", "g5", "after"]
    assert gap.between[0] is True  # the gap really was taken as `between`


async def test_gap_after_connection_close_writes_nothing(
        make_stack: StackFactory, gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        gap.pending = _request(PATIENT, "late")
        writer.write(_request(OTHER, "closing", "Connection: close"))
        _, fields, _ = await asyncio.wait_for(_response(reader), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert fields["x-request-id"] == "closing"
    assert rest == b""
    assert gap.between == [False]


async def test_gap_http10_response_then_fast(make_stack: StackFactory, gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        gap.pending = _request(PATIENT, "late")
        writer.write(_request(OTHER, "ten").replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        _, fields, _ = await asyncio.wait_for(_response(reader), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert fields["x-request-id"] == "ten"
    assert rest == b""


async def test_gap_many_pipelined_hits_queue_pause(make_stack: StackFactory, gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    n = 100
    try:
        gap.pending = b"".join(_request(PATIENT, f"p{i}") for i in range(n))
        writer.write(_request(OTHER, "r0"))
        ids = [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]
               for _ in range(n + 1)]
        writer.write(_request(PATIENT, "after"))
        ids.append((await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"])
    finally:
        writer.close()
    assert ids == ["r0", *(f"p{i}" for i in range(n)), "after"]


async def test_gap_post_with_body_then_hit(make_stack: StackFactory,
                                           gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    body = b'{"a": 1}'
    post = (f"POST {OTHER} HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
            f"X-Request-ID: post\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    chunked = (f"PUT {OTHER} HTTP/1.1\r\nHost: s\r\nX-Request-ID: put\r\n"
               "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").encode()
    try:
        gap.pending = (_request(PATIENT, "h1") + post + _request(PATIENT, "h2") + chunked
                       + _request(PATIENT, "h3"))
        writer.write(_request("/api/v1/patients/3", "r0"))
        ids = []
        for _ in range(6):
            ids.append((await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"])
    finally:
        writer.close()
    assert ids == ["r0", "h1", "post", "h2", "put", "h3"]


# ---- the lingering window: aiohttp reads an unread body after a kept-alive answer ----

def _refused_post(length: int, rid: str = "refused", *extra: str) -> bytes:
    # absolute-form target: refused (400) without its body being read; kept alive
    lines = ["POST http://sidecar/api/v1/patients/1 HTTP/1.1", "Host: sidecar",
             f"X-Request-ID: {rid}", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_lingering_then_fast_hit(make_stack: StackFactory) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        writer.write(_refused_post(5))
        head, fields, _ = await asyncio.wait_for(_response(reader), 5)
        assert b" 400 " in head and fields.get("connection") != "close"
        await asyncio.sleep(0.2)  # aiohttp lingers on the body meanwhile (not a wait for it)
        writer.write(b"hello" + _request(PATIENT, "h1") + _request(OTHER, "h2")
                     + _request(PATIENT, "h3"))
        ids = [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]
               for _ in range(3)]
    finally:
        writer.close()
    assert ids == ["h1", "h2", "h3"]


async def test_lingering_big_body_then_fast_hit(make_stack: StackFactory,
                                                ) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    size = 3 * 2**20
    try:
        writer.write(_refused_post(size))
        head, _, _ = await asyncio.wait_for(_response(reader), 5)
        assert b" 400 " in head
        writer.write(b"x" * size + _request(PATIENT, "h1") + _request(PATIENT, "h2"))
        ids = [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]
               for _ in range(2)]
    finally:
        writer.close()
    assert ids == ["h1", "h2"]


async def test_lingering_fast_hit_and_partial_gets_header_deadline(
        make_stack: StackFactory) -> None:
    stack = await make_stack({"REDIS_URL": "memory://", "SIDECAR_HEADER_TIMEOUT_S": "0.5",
                              "SIDECAR_KEEPALIVE_TIMEOUT_S": "300"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        writer.write(_refused_post(5))
        await asyncio.wait_for(_response(reader), 5)
        await asyncio.sleep(0.2)
        writer.write(b"hello" + _request(PATIENT, "whole")
                     + b"GET /api/v1/patients/2 HTTP/1.1\r\nHost: s\r\n")
        assert (await asyncio.wait_for(_response(reader), 5))[1]["x-cache"] == "HIT"
        rest = await asyncio.wait_for(reader.read(), 5)  # header deadline: 0.5 s
    finally:
        writer.close()
    assert rest == b""


async def test_gap_fast_hit_and_partial_gets_header_deadline(
        make_stack: StackFactory, gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://", "SIDECAR_HEADER_TIMEOUT_S": "0.5",
                              "SIDECAR_KEEPALIVE_TIMEOUT_S": "300"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        gap.pending = _request(PATIENT, "whole") + b"GET /api/v1/patients/2 HTTP/1.1\r\nHo"
        writer.write(_request(OTHER, "r0"))
        await asyncio.wait_for(_response(reader), 5)
        assert (await asyncio.wait_for(_response(reader), 5))[1]["x-cache"] == "HIT"
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert rest == b""
    assert gap.between == [True]


async def test_expect_100_continue_then_fast(make_stack: StackFactory, gap: Gap) -> None:
    stack = await make_stack({"REDIS_URL": "memory://"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        # refused with 100-continue: aiohttp's router answers 100 first, then the 400
        writer.write(_refused_post(5, "exp", "Expect: 100-continue"))
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if b" 100 " in first:
            await asyncio.wait_for(_response(reader), 5)
        await asyncio.sleep(0.1)  # the next bytes in a read of their own
        writer.write(b"hello" + _request(PATIENT, "h1"))
        ids = [(await asyncio.wait_for(_response(reader), 5))[1]["x-request-id"]]
    finally:
        writer.close()
    assert ids == ["h1"]


@pytest.mark.parametrize("cut", [1, 2, 3])
async def test_split_terminator_does_not_arm_a_deadline_on_an_idle_connection(
        make_stack: StackFactory, cut: int) -> None:
    # The request's blank line split over two reads: the second read is complete (nothing
    # follows it), but does not itself end with CRLFCRLF.
    stack = await make_stack({"REDIS_URL": "memory://", "SIDECAR_HEADER_TIMEOUT_S": "0.5",
                              "SIDECAR_KEEPALIVE_TIMEOUT_S": "300"})
    await _warm(stack)
    reader, writer = await _open(stack)
    try:
        whole = _request(PATIENT, "split")
        writer.write(whole[:-cut])
        await writer.drain()
        await asyncio.sleep(0.1)  # the rest in a read of its own
        writer.write(whole[-cut:])
        assert (await asyncio.wait_for(_response(reader), 5))[1]["x-cache"] == "HIT"
        await asyncio.sleep(1.5)  # idle, well inside the keep-alive timeout
        writer.write(_request(PATIENT, "next"))
        _, fields, _ = await asyncio.wait_for(_response(reader), 5)
    finally:
        writer.close()
    assert fields["x-request-id"] == "next"

