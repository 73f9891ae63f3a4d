"""`SIDECAR_WORKERS` > 1: this process supervises N workers and serves the admin port.

The process `python -m sidecar` starts has validated the settings and rules (`cli.py`). Here
it makes a private directory (mode 0700) for the workers' metric files and control sockets,
points `PROMETHEUS_MULTIPROC_DIR` at it *before* prometheus-client is imported (the client
picks its value store at import), and runs the pool (`pool.py`). Workers are fresh
interpreters (`python -m sidecar --worker-socket ...`, exec'd by `subprocess`), never forks
of a process that already has an event loop or threads. The directory is removed at exit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from sidecar.rules import RuleSet
from sidecar.settings import Settings

log = logging.getLogger("sidecar")


def supervise(settings: Settings, rules: RuleSet, rules_path: Path) -> int:
    if "prometheus_client" in sys.modules:  # its value store would be per process
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR "
                           "was set: the workers' metrics could not be merged")
    try:
        root = Path(tempfile.mkdtemp(prefix="sidecar-workers-"))
    except OSError as exc:
        print(f"error: SIDECAR_WORKERS={settings.workers} needs a writable temporary "
              f"directory (TMPDIR, /tmp): {exc}", file=sys.stderr)
        return 1
    try:
        metrics_dir = root / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env = dict(os.environ)
        if settings.key_secret is None:
            # One random secret for the pod's workers, so they share each other's entries of
            # authenticated callers (as one process does); still not across replicas.
            secret = secrets.token_hex(32)
            env["CACHE_KEY_SECRET"] = secret
            settings = dataclasses.replace(settings, key_secret=secret.encode())
            if settings.cache_enabled:
                log.warning("CACHE_KEY_SECRET is not set: a random secret shared by this "
                            "pod's workers is used, so replicas and restarts do not share "
                            "entries of authenticated callers")
        from sidecar.pool import run  # imports prometheus-client: after the line above

        return asyncio.run(run(settings, rules, rules_path, root, env))
    finally:
        shutil.rmtree(root, ignore_errors=True)
