"""The purge audit: one JSON object per attempt, refused ones included, ids never verbatim."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.logs import JsonFormatter
from tests.conftest import Stack, StackFactory

KEY = "/cache/identity:patient:987654"


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The audit records as the JSON formatter writes them on stdout."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records
            if r.name == "sidecar.audit"]


async def test_the_audit_line_is_one_json_object(
    stack: Stack, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.proxy.get("/api/v1/patients/987654")
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        reply = await stack.admin.request("DELETE", KEY, token=None)
    assert reply.status == 200
    (line,) = _lines(caplog)
    assert line["msg"] == "cache purge" and line["event"] == "cache_purge"
    assert line["who"] == "loopback" and line["result"] == "ok" and line["removed"] == 1
    assert line["scope"] == "key" and line["target"].startswith("identity:patient:#")
    assert line["peer"] == "127.0.0.1" and line["ts"]
    assert "987654" not in json.dumps(line)


@pytest.mark.parametrize(("token", "reason"), [(None, "no-token"),
                                               ("Bearer wrong", "bad-token")])
async def test_a_refused_token_is_audited_and_never_offered_loopback(
    make_stack: StackFactory, redis_client: Redis, caplog: pytest.LogCaptureFixture,
    token: str | None, reason: str,
) -> None:
    stack = await make_stack({"SIDECAR_ADMIN_TOKEN": "s3cret"})
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        reply = await stack.admin.request("DELETE", KEY, token=token)
    assert reply.status == 401
    assert "loopback" not in reply.json()["message"]
    assert "SIDECAR_ADMIN_TOKEN" in reply.json()["message"]
    (line,) = _lines(caplog)
    assert line["level"] == "warning" and line["result"] == "denied"
    assert line["who"] == "unauthenticated" and line["reason"] == reason
    assert line["target"].startswith("identity:patient:#")
    assert "987654" not in json.dumps(line) and "wrong" not in json.dumps(line)


async def test_without_a_token_an_exposed_admin_port_points_at_both_remedies(
    make_stack: StackFactory, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack({"SIDECAR_ADMIN_HOST": "0.0.0.0"})
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        reply = await stack.admin.request("DELETE", KEY, token=None)
    assert reply.status == 403
    assert "loopback" in reply.json()["message"]
    (line,) = _lines(caplog)
    assert line["reason"] == "no-token-configured" and line["result"] == "denied"


@pytest.mark.parametrize(("path", "reason"), [
    ("/cache/identity:patient:*", "bad-key"),
    ("/cache/other:thing:987654", "bad-key"),
    ("/cache?prefix=identity:patient", "unconfirmed"),
    ("/cache?prefix=identity:987654&confirm=yes", "bad-prefix"),
])
async def test_a_malformed_purge_is_audited_without_its_target(
    stack: Stack, redis_client: Redis, caplog: pytest.LogCaptureFixture, path: str,
    reason: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="sidecar.audit"):
        reply = await stack.admin.request("DELETE", path, token=None)
    assert reply.status == 400
    (line,) = _lines(caplog)
    assert line["who"] == "loopback" and line["result"] == "bad-request"
    assert line["reason"] == reason
    if reason != "unconfirmed":
        assert line["target"] == "-", "a refused target is never logged as sent"
    assert "987654" not in json.dumps(line)
