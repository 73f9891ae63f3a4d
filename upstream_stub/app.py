"""aiohttp application imitating the identity API's routes, auth and error bodies."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler

from upstream_stub import data, probes
from upstream_stub.render import Hooks, StubError, dumps, render
from upstream_stub.settings import StubSettings
from upstream_stub.state import MISSING_FROM_ID, StubState

STATE = web.AppKey("STATE", StubState)

_BEARER = {"WWW-Authenticate": "Bearer"}
# What pydantic accepts for an ``int`` path parameter: "042", " 42", "+42", "4_2", "42.0".
_INT = re.compile(r"\s*([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0*)?\s*")
_SERVER_MANAGED = ("id", "meta")


@dataclass(frozen=True)
class Call:
    """An authenticated request, with the caller fingerprint echoed in every body's meta."""

    request: web.Request
    state: StubState
    caller: str
    hooks: Hooks


def _caller(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if not scheme or not token:
        raise StubError(401, "Not authenticated", _BEARER)
    if scheme.lower() != "bearer":
        raise StubError(401, "Invalid authentication credentials", _BEARER)
    if token.startswith("denied"):
        raise StubError(403, "Not enough permissions")
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _guarded(handler: Callable[[Call], Awaitable[web.StreamResponse]]) -> Handler:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        state, caller = request.app[STATE], _caller(request)
        hooks = Hooks.from_request(request, state.settings.test_hooks)
        call = Call(request, state, caller, hooks)
        if hooks.status is not None:
            return await render(request, {"detail": "forced"}, hooks, status=hooks.status)
        return await handler(call)

    return wrapper


def _path_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    match = _INT.fullmatch(raw)
    try:
        if match:
            # pydantic reads leading zeros at any length: `"0" * 5000 + "42"` is 42.
            sign, digits = match.group(1)[:1], match.group(1).lstrip("+-").replace("_", "")
            return int((sign if sign == "-" else "") + (digits.lstrip("0") or "0"))
    except ValueError:  # a value beyond Python's int-from-str digit limit
        pass
    raise StubError(422, [{
        "type": "int_parsing", "loc": ["path", "id"], "input": raw,
        "msg": "Input should be a valid integer, unable to parse string as an integer",
    }])


async def _body(request: web.Request) -> data.Record:
    """Client-supplied id/meta are dropped: the server owns identity and versioning."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StubError(422, [{"type": "model_attributes_type", "loc": ["body"],
                               "msg": "Input should be a valid JSON object"}])
    return {k: v for k, v in body.items() if k not in _SERVER_MANAGED}


async def _send(call: Call, record: data.Record, *, status: int = 200, cacheable: bool = False
                ) -> web.StreamResponse:
    body = {**record, "meta": {**record.get("meta", {}), "caller": call.caller}}
    last_modified = data.http_date(record) if cacheable else None
    return await render(call.request, body, call.hooks, status=status, last_modified=last_modified)


@_guarded
async def get_patient(call: Call) -> web.StreamResponse:
    pid = _path_id(call.request)
    # Like a service that keeps a row version: a conditional GET costs the PostgreSQL read
    # of the row, and the FHIR read (most of the work) runs only when the copy changed.
    conditional = "If-None-Match" in call.request.headers
    await call.state.backend(pg_rounds=1, fhir=not conditional, may_fail=True)
    response = await _send(call, call.state.patient(pid), cacheable=True)
    if conditional and response.status != 304:
        await call.state.backend(pg_rounds=0, fhir=True, may_fail=False)
    return response


@_guarded
async def get_professional(call: Call) -> web.StreamResponse:
    pid = _path_id(call.request)
    await call.state.backend(pg_rounds=1, fhir=False, may_fail=True)
    if pid >= MISSING_FROM_ID:
        raise StubError(404, "Professional not found")
    return await _send(call, data.professional(pid, call.state.settings.seed), cacheable=True)


@_guarded
async def get_dashboard(call: Call) -> web.StreamResponse:
    await call.state.backend(pg_rounds=2, fhir=False, may_fail=True)
    return await _send(call, data.dashboard(call.state.settings.seed), cacheable=True)


@_guarded
async def create_patient(call: Call) -> web.StreamResponse:
    fields = await _body(call.request)
    await call.state.backend(pg_rounds=1, fhir=False, may_fail=False)
    pid = call.state.allocate_id()
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    meta = {"versionId": 1, "lastUpdated": now}
    record = call.state.patients[pid] = {
        "resourceType": "Patient", **fields, "id": str(pid), "meta": meta,
    }
    return await _send(call, record, status=201)


@_guarded
async def write_patient(call: Call) -> web.StreamResponse:
    """PUT replaces the record, PATCH merges top-level fields; both make a new version."""
    pid = _path_id(call.request)
    fields = await _body(call.request)
    await call.state.backend(pg_rounds=1, fhir=False, may_fail=False)
    current = call.state.patient(pid)
    base = current if call.request.method == "PATCH" else {"resourceType": "Patient"}
    record = data.bump({**base, **fields, "id": str(pid)}, current)
    call.state.patients[pid] = record
    return await _send(call, record)


@_guarded
async def delete_patient(call: Call) -> web.StreamResponse:
    pid = _path_id(call.request)
    await call.state.backend(pg_rounds=1, fhir=False, may_fail=False)
    call.state.patient(pid)
    call.state.patients.pop(pid, None)
    call.state.deleted.add(pid)
    return await render(call.request, {}, call.hooks, status=204)


@web.middleware
async def _count_and_shape_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request as the backend saw it and give errors FastAPI's JSON shape."""
    await request.app[STATE].arrived(f"{request.method} {request.raw_path.partition('?')[0]}",
                                     request.headers.get("X-Request-Id"))
    try:
        return await handler(request)
    except StubError as exc:
        status, detail, headers = exc.status, exc.detail, exc.headers
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        status, detail = exc.status, exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
    body = dumps({"detail": detail})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def build_app(settings: StubSettings) -> web.Application:
    app = web.Application(middlewares=[_count_and_shape_errors])
    app[STATE] = StubState(settings)
    app.router.add_get("/api/v1/patients/{id}", get_patient)
    app.router.add_put("/api/v1/patients/{id}", write_patient)
    app.router.add_patch("/api/v1/patients/{id}", write_patient)
    app.router.add_delete("/api/v1/patients/{id}", delete_patient)
    app.router.add_post("/api/v1/patients", create_patient)
    app.router.add_get("/api/v1/professionals/{id}", get_professional)
    app.router.add_get("/api/v1/statistics/dashboard", get_dashboard)
    probes.add_routes(app)
    return app
