"""A worker's side of `SIDECAR_WORKERS` > 1: its control socket and its lifeline.

The supervisor (`supervisor.py`) starts each worker as `python -m sidecar --worker-socket PATH
--worker-lifeline FD`. The worker serves the proxy port with `SO_REUSEPORT` (the kernel
spreads new connections over the workers) and, instead of the admin port, its admin app on
a Unix socket in the supervisor's private directory, with one more route: `ERASE_PATH`, its
part of a purge the supervisor has already checked, audited and counted. The lifeline is the
read end of a pipe whose write end only the supervisor holds: end of file means the
supervisor is gone (even by SIGKILL), and the worker drains as on SIGTERM instead of serving
on as an orphan.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from redis.exceptions import RedisError

from sidecar.admin import erase_here
from sidecar.runtime import RUNTIME

log = logging.getLogger("sidecar")
ERASE_PATH = "/worker/erase"


@dataclass(frozen=True, slots=True)
class WorkerLink:
    socket: Path  # the control socket (admin app) the supervisor talks to
    lifeline: int  # fd: readable (end of file) once the supervisor is gone


async def erase(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    body = await request.json()
    try:
        removed = await erase_here(rt, str(body["scope"]), str(body["target"]))
    except (RedisError, OSError, TimeoutError) as exc:
        return web.json_response({"error": type(exc).__name__}, status=503)
    return web.json_response({"removed": removed})


def add_control_routes(admin: web.Application) -> None:
    admin.router.add_post(ERASE_PATH, erase)


def watch_lifeline(link: WorkerLink, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def supervisor_gone() -> None:
        loop.remove_reader(link.lifeline)
        log.warning("supervisor gone: draining")
        stop.set()

    loop.add_reader(link.lifeline, supervisor_gone)
