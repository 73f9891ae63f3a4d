"""The supervisor's work: keep N workers running, serve the admin port for all of them.

- **Workers** (`worker.py`) share the proxy port with `SO_REUSEPORT`. One that exits is logged
  (one JSON line) and started again: at once after a stable run (`STABLE_UPTIME_S`), after
  `RESTART_BACKOFF_S` when it keeps dying young, so a crash loop does not spin.
- **Admin port**: served here only. `/metrics` merges every process's files
  (`metrics.workers_registry`; a dead worker's gauges are dropped with `mark_process_dead`,
  its counts stay); `/readyz` is 200 only while every worker answers ready on its control
  socket, 503 from the moment a drain starts; `/healthz` is 503 once a worker is in a crash
  loop (`CRASH_LOOP` quick exits in a row). Purge is checked, audited and counted once here
  (`admin.py`) and erased in every worker (each holds its own `memory://` store and its own
  in-flight fills).
- **Signals**: SIGTERM/SIGINT drain (readiness red, SIGTERM to every worker, each drains in its
  own `SIDECAR_SHUTDOWN_TIMEOUT_S`; exit 0 when all exited cleanly); SIGHUP is passed on to
  every worker, which reloads its rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import mark_process_dead

from sidecar.admin import admin_app
from sidecar.app import build_runtime
from sidecar.errors import ConfigError
from sidecar.listener import ADMIN_DRAIN_S, BoundedRunner
from sidecar.metrics import workers_registry
from sidecar.rules import RuleSet, load_rules
from sidecar.runtime import Runtime
from sidecar.settings import Settings
from sidecar.telemetry import SERVICE, Telemetry
from sidecar.worker import ERASE_PATH

log = logging.getLogger("sidecar")
RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)  # by consecutive quick exits
STABLE_UPTIME_S = 30.0  # a worker that ran this long starts its slot's backoff afresh
CRASH_LOOP = 5  # consecutive quick exits before /healthz fails
PROBE_TIMEOUT_S = 2.0
STOP_GRACE_S = 5.0  # past the workers' drain budget (and its 0.5 s grace) before SIGKILL
CLEAN_EXITS = (0, -signal.SIGTERM)  # SIGTERM before its handler was set: nothing in flight


@dataclass(eq=False)
class Slot:
    index: int
    socket: Path
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_exits: int = 0
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        """The running worker's pid; None while the slot waits to restart."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def describe(self) -> dict[str, object]:
        return {"worker": self.index, "pid": self.pid, "restarts": self.restarts}


class WorkerPool:
    def __init__(self, settings: Settings, rules_path: Path, root: Path,
                 env: dict[str, str]) -> None:
        self.settings = settings
        self.metrics_dir = str(root / "metrics")
        self.slots = [Slot(i, root / f"worker-{i}.sock") for i in range(settings.workers)]
        self.draining = False
        self._command = [sys.executable, "-m", "sidecar", "--config", str(rules_path)]
        self._env = env
        self._stopping = asyncio.Event()
        # Only this process holds the write end: the workers see end of file if it dies.
        self._lifeline, self._lifeline_write = os.pipe()
        self._keepers: list[asyncio.Task[int]] = []

    def start(self) -> None:
        self._keepers = [asyncio.ensure_future(self._keep(slot)) for slot in self.slots]

    def reload(self) -> None:
        log.info("SIGHUP: reloading the rules in every worker")
        for slot in self.slots:
            if slot.socket.exists():  # past its start, where SIGHUP would have killed it
                self._signal(slot, signal.SIGHUP)

    async def stop(self) -> bool:
        """Drain every worker; True when all exited cleanly within their budget."""
        self.draining = True
        self._stopping.set()
        for slot in self.slots:
            self._signal(slot, signal.SIGTERM)
        budget = self.settings.shutdown_timeout + STOP_GRACE_S
        _, late = await asyncio.wait(self._keepers, timeout=budget)
        for slot in self.slots:
            if slot.pid is not None:
                log.error("worker outlived its drain budget: killed",
                          extra={"worker": slot.index, "pid": slot.pid, "timeout_s": budget})
                self._signal(slot, signal.SIGKILL)
        codes = await asyncio.gather(*self._keepers)
        os.close(self._lifeline_write)
        os.close(self._lifeline)
        return not late and all(code in CLEAN_EXITS for code in codes)

    def _signal(self, slot: Slot, sig: signal.Signals) -> None:
        if slot.proc is not None and slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(sig)

    async def _keep(self, slot: Slot) -> int:
        """Run the slot's worker until the pool drains; the last one's exit code."""
        while True:
            code, exited = await self._run_once(slot)
            if self.draining:
                log.info("worker stopped", extra=exited)
                return code
            young = time.monotonic() - slot.started < STABLE_UPTIME_S
            slot.quick_exits = slot.quick_exits + 1 if young else 0
            delay = RESTART_BACKOFF_S[min(slot.quick_exits, len(RESTART_BACKOFF_S) - 1)]
            log.error("worker exited: restarting it", extra={**exited, "restart_in_s": delay})
            with contextlib.suppress(TimeoutError):  # a drain ends the wait
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self.draining:
                return 0
            slot.restarts += 1

    async def _run_once(self, slot: Slot) -> tuple[int, dict[str, object]]:
        """Start the slot's worker and wait for it: (exit code, what the log says)."""
        with contextlib.suppress(FileNotFoundError):
            slot.socket.unlink()
        slot.started = time.monotonic()
        try:
            proc = slot.proc = await asyncio.create_subprocess_exec(
                *self._command, "--worker-socket", str(slot.socket),
                "--worker-lifeline", str(self._lifeline), env=self._env,
                pass_fds=(self._lifeline,))
        except OSError as exc:
            return 1, {"worker": slot.index, "pid": None, "error": str(exc)}
        log.info("worker started", extra={"worker": slot.index, "pid": proc.pid})
        if self.draining:  # the drain began while this one was being started
            self._signal(slot, signal.SIGTERM)
        code = await proc.wait()
        mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        exited: dict[str, object] = {
            "worker": slot.index, "pid": proc.pid, "returncode": code,
            "uptime_s": round(time.monotonic() - slot.started, 3)}
        if code < 0:
            exited["signal"] = signal.Signals(-code).name
        return code, exited

    # --- talking to the workers (their control sockets) -----------------------------------

    async def _ask(self, slot: Slot, method: str, path: str,
                   body: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) from the worker; aiohttp.ClientError when it cannot answer."""
        connector = aiohttp.UnixConnector(path=str(slot.socket))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.request(method, f"http://worker{path}", json=body) as r:
            return r.status, await r.json()

    async def _probe(self, slot: Slot) -> tuple[int, dict[str, Any]]:
        if slot.pid is None:
            return 0, {"status": "down"}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return await self._ask(slot, "GET", "/readyz")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, {"status": "starting"}

    async def erase(self, scope: str, target: str) -> int:
        """Every running worker's part of a purge (the caller bounds the time)."""
        removed = await asyncio.gather(*(self._erase_in(s, scope, target) for s in self.slots))
        if all(count is None for count in removed):  # Redis would keep the entry
            raise ConnectionError("no worker is running to erase the entry")
        return sum(count for count in removed if count is not None)

    async def _erase_in(self, slot: Slot, scope: str, target: str) -> int | None:
        if slot.pid is None:
            return None  # a worker started later begins with nothing in flight or in memory
        try:
            status, body = await self._ask(slot, "POST", ERASE_PATH,
                                           {"scope": scope, "target": target})
        except aiohttp.ClientConnectorError:
            return None  # still starting: same as above
        except (aiohttp.ClientError, ValueError) as exc:
            raise ConnectionError(f"worker {slot.index} did not erase: {exc}") from exc
        if status != 200:
            raise ConnectionError(f"worker {slot.index} did not erase: {body}")
        return int(body["removed"])

    # --- the admin port's probes and metrics -----------------------------------------------

    def processes(self) -> list[tuple[str, int]]:
        """(worker label, pid) of this process and every running worker, for `process_*`."""
        live = [(str(slot.index), slot.pid) for slot in self.slots if slot.pid is not None]
        return [("supervisor", os.getpid()), *live]

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        answers = await asyncio.gather(*(self._probe(slot) for slot in self.slots))
        ready = all(status == 200 for status, _ in answers)
        workers = [{**body, **slot.describe()}
                   for slot, (_, body) in zip(self.slots, answers, strict=True)]
        return web.json_response({"status": "ready" if ready else "starting",
                                  "workers": workers}, status=200 if ready else 503)

    async def healthz(self, request: web.Request) -> web.Response:
        looping = any(slot.quick_exits >= CRASH_LOOP for slot in self.slots)
        return web.json_response(
            {"status": "crash-looping" if looping else "alive",
             "workers": [slot.describe() for slot in self.slots]},
            status=503 if looping else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(workers_registry(self.metrics_dir, self.processes))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _current_rules(rt: Runtime, rules_path: Path) -> Any:
    """Purge checks keys against the rules file as it is now (the workers reload it)."""
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "DELETE":
            with contextlib.suppress(ConfigError):
                rt.rules = load_rules(rules_path)
        return await handler(request)
    return middleware


async def run(settings: Settings, rules: RuleSet, rules_path: Path, root: Path,
              env: dict[str, str]) -> int:
    pool = WorkerPool(settings, rules_path, root, env)
    # The admin app's runtime: settings, rules, key hasher and metrics for purge. Its store
    # and upstream are never started; the workers erase (`pool.erase`).
    rt = build_runtime(settings, rules, telemetry=Telemetry(trace.NoOpTracer(),
                                                            NoOpMeter(SERVICE)))
    admin = admin_app(rt, pool.erase, {"/metrics": pool.metrics, "/healthz": pool.healthz,
                                       "/readyz": pool.readyz})
    admin.middlewares.append(_current_rules(rt, rules_path))
    runner = BoundedRunner(admin, listener="admin", shutdown_timeout=ADMIN_DRAIN_S,
                           keepalive_timeout=settings.keepalive_timeout,
                           header_timeout=settings.header_timeout)
    await runner.setup()
    await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, pool.reload)
    pool.start()
    log.info("supervisor listening", extra={
        "workers": settings.workers, "pid": os.getpid(), "admin_port": settings.admin_port})
    if settings.redis_url.startswith("memory://") and settings.cache_enabled:
        log.warning("REDIS_URL=memory:// with several workers: each worker has its own cache "
                    "(and CACHE_MEMORY_MAX_BYTES each); a write through one worker does not "
                    "erase the others' copies, which are served until their TTL ends")
    clean = False
    try:
        await stop.wait()
    finally:
        log.info("shutting down: draining the workers",
                 extra={"timeout_s": settings.shutdown_timeout})
        clean = await pool.stop()
        await runner.cleanup()
        await rt.store.close()
        log.info("stopped", extra={"clean": clean})
    return 0 if clean else 1
