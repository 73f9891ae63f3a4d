"""The sidecar as a real process (`python -m sidecar`), for signals, reload and drain.

It runs in a session of its own, so `stop()` also ends the workers of SIDECAR_WORKERS > 1
(the process group's id is the supervisor's pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import GENEROUS_BUDGETS
from tests.redis_process import free_port
from tests.waiting import PATIENCE

ROOT = Path(__file__).resolve().parent.parent


class SidecarProcess:
    def __init__(self, env: dict[str, str], config: Path | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.env = {**os.environ, "SIDECAR_PORT": str(self.port),
                    "SIDECAR_ADMIN_PORT": str(self.admin_port), "SIDECAR_HOST": "127.0.0.1",
                    "SIDECAR_ADMIN_HOST": "127.0.0.1", "REDIS_URL": "memory://",
                    "CACHE_KEY_SECRET": "test", **GENEROUS_BUDGETS, **env}
        self.args = [sys.executable, "-m", "sidecar"] + (
            ["--config", str(config)] if config else [])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def launch(self) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def ready(self, within: float = PATIENCE) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.output())
                try:
                    async with session.get(self.admin + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)  # waiting for another process to listen
        raise RuntimeError(f"sidecar did not become ready within {within:g} s")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exit_code(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, within)

    def output(self) -> str:
        assert self.proc is not None
        self._kill_group()
        out, _ = self.proc.communicate()
        return out.decode(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON lines of `output()` (the process is ended first)."""
        return [json.loads(line) for line in self.output().splitlines()
                if line.startswith("{")]

    def stop(self) -> None:
        if self.proc is not None:
            self._kill_group()
            self.proc.wait()

    def _kill_group(self) -> None:
        """SIGKILL the supervisor if it runs, and any worker it left behind."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
