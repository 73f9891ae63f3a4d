"""Audit of cached reads: one line per answer from the cache on an `audit: true` rule.

Real parts: the sidecar in front of the stub, a real redis-server, a real file (and
/dev/full, which refuses every write even to root, as the unwritable sink).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis

from sidecar.access_log import AccessLog
from tests.conftest import TOKEN_A, TOKEN_B, Stack, StackFactory
from upstream_stub.app import STATE

PATIENT = "/api/v1/patients/42"
DASHBOARD = "/api/v1/statistics/dashboard"


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _fingerprint(stack: Stack, token: str) -> str:
    return stack.rt.hasher.fingerprint(CIMultiDictProxy(CIMultiDict(Authorization=token)))


async def _audited_stack(make_stack: StackFactory, tmp_path: Path, **env: str) -> Stack:
    return await make_stack({"CACHE_AUDIT_LOG": str(tmp_path / "audit.log"), **env})


async def test_cached_reads_only_are_audited_with_subject_and_record(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await _audited_stack(make_stack, tmp_path)
    log = tmp_path / "audit.log"
    miss = await stack.proxy.get(PATIENT, headers={"X-Request-ID": "req-miss"})
    assert miss.x_cache == "MISS" and _lines(log) == []  # the service saw that one
    hit = await stack.proxy.get(PATIENT, headers={"X-Request-ID": "req-hit"})
    other = await stack.proxy.get(PATIENT, token=TOKEN_B)  # MISS: Bob's own variant
    bob = await stack.proxy.get(PATIENT, token=TOKEN_B)
    etag = hit.headers["ETag"]
    not_modified = await stack.proxy.get(PATIENT, headers={"If-None-Match": etag})
    await stack.proxy.get(DASHBOARD)
    await stack.proxy.get(DASHBOARD)  # a hit on a rule without audit: no line
    await stack.proxy.get(PATIENT, headers={"Cache-Control": "no-store"})  # bypass
    assert (hit.x_cache, other.x_cache, bob.x_cache, not_modified.status) == (
        "HIT", "MISS", "HIT", 304)
    lines = _lines(log)
    assert [(x["outcome"], x["status"]) for x in lines] == [
        ("HIT", 200), ("HIT", 200), ("HIT", 304)]
    first = lines[0]
    assert first["logger"] == "sidecar.audit" and first["rule"] == "patient"
    assert first["key"] == "identity:patient:42" and first["client"] == "127.0.0.1"
    assert first["request_id"] == "req-hit" == hit.headers["X-Request-ID"]
    assert first["subject"] == _fingerprint(stack, TOKEN_A)
    assert lines[1]["subject"] == _fingerprint(stack, TOKEN_B)
    assert lines[2]["request_id"] == not_modified.headers["X-Request-ID"]
    assert first["ts"].endswith("Z")
    text = log.read_text()
    assert "alice" not in text and "bob" not in text  # never the token
    assert (log.stat().st_mode & 0o777) == 0o600


async def test_a_stale_answer_is_audited(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await _audited_stack(make_stack, tmp_path)
    await stack.proxy.get(PATIENT)
    clock = stack.rt.clock
    stack.rt.set_clock(lambda: clock() + 610)  # past the TTL, within while_revalidate
    stale = await stack.proxy.get(PATIENT)
    assert stale.x_cache == "STALE"
    assert [x["outcome"] for x in _lines(tmp_path / "audit.log")] == ["STALE"]


async def test_one_request_id_in_the_answer_upstream_and_access_log(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await _audited_stack(make_stack, tmp_path)
    out = io.BytesIO()
    stack.rt.access_log = AccessLog(1.0, stream=out)
    state = stack.stub[STATE]
    state.request_ids.clear()
    given = await stack.proxy.get(PATIENT, headers={"X-Request-ID": "abc-123"})
    made = await stack.proxy.get("/api/v1/patients/43", headers={"X-Request-ID": "bad id"})
    hit = await stack.proxy.get(PATIENT)
    assert given.headers["X-Request-ID"] == "abc-123"
    assert state.request_ids == ["abc-123", made.headers["X-Request-ID"]]
    assert made.headers["X-Request-ID"] != "bad id"
    stack.rt.access_log.flush()
    logged = [json.loads(line)["request_id"] for line in out.getvalue().splitlines()]
    assert logged == ["abc-123", made.headers["X-Request-ID"], hit.headers["X-Request-ID"]]
    (line,) = _lines(tmp_path / "audit.log")
    assert line["request_id"] == hit.headers["X-Request-ID"]


async def test_a_lost_line_is_counted_and_the_hit_still_served(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack({"CACHE_AUDIT_LOG": "/dev/full"})
    await stack.proxy.get(PATIENT)
    hit = await stack.proxy.get(PATIENT)
    assert hit.x_cache == "HIT" and stack.upstream_hits(PATIENT) == 1
    assert stack.rt.metrics.audit_failures._value.get() == 1


async def test_required_audit_answers_from_the_service_when_the_sink_is_unwritable(
    make_stack: StackFactory, redis_client: Redis
) -> None:
    stack = await make_stack({"CACHE_AUDIT_LOG": "/dev/full", "CACHE_AUDIT_REQUIRED": "true"})
    first = await stack.proxy.get(PATIENT)
    second = await stack.proxy.get(PATIENT)
    assert first.x_cache == "MISS" and second.x_cache == "MISS" and second.status == 200
    assert "detail=audit-unavailable" in second.headers["Cache-Status"]
    assert second.body == first.body
    assert stack.upstream_hits(PATIENT) == 2  # the service answered, and saw the read
    assert stack.rt.metrics.audit_failures._value.get() == 1
    dashboard = [await stack.proxy.get(DASHBOARD) for _ in range(2)]
    assert dashboard[1].x_cache == "HIT"  # rules without audit are untouched


async def test_required_audit_serves_hits_while_the_sink_works(
    make_stack: StackFactory, redis_client: Redis, tmp_path: Path
) -> None:
    stack = await _audited_stack(make_stack, tmp_path, CACHE_AUDIT_REQUIRED="true")
    await stack.proxy.get(PATIENT)
    hit = await stack.proxy.get(PATIENT, token=TOKEN_A)
    assert hit.x_cache == "HIT" and len(_lines(tmp_path / "audit.log")) == 1
