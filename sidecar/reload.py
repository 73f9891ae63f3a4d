"""Hot reload of the rules file: poll a content hash, or reload on SIGHUP.

Polling the content (not mtime, not inotify on the file) survives the ConfigMap
`..data` symlink swap. A bad file is rejected whole and the last good rules stay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from sidecar.errors import ConfigError
from sidecar.rules import load_rules
from sidecar.runtime import Runtime

log = logging.getLogger("sidecar.reload")


class Reloader:
    def __init__(self, rt: Runtime, path: Path) -> None:
        self.rt = rt
        self.path = path
        self._digest = _digest(path)

    def reload(self, reason: str) -> bool:
        """Validate and swap; True when new rules are in force."""
        digest = _digest(self.path)
        try:
            rules = load_rules(self.path)
        except ConfigError as exc:
            self._digest = digest  # do not re-log the same bad file every poll
            self.rt.metrics.reloads.labels("rejected").inc()
            log.error("rules reload rejected, keeping the last good rules",
                      extra={"reason": reason, "problems": exc.problems})
            return False
        self._digest = digest
        old = self.rt.rules
        self.rt.rules = rules  # one assignment: requests in flight keep their snapshot
        self.rt.metrics.rules_loaded(rules.digest, old.digest)
        self.rt.metrics.reloads.labels("ok").inc()
        log.info("rules reloaded", extra={
            "reason": reason, "hash": rules.digest,
            "rules": {r.name: r.ttl for r in rules.rules},
        })
        return True

    async def poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if _digest(self.path) != self._digest:
                self.reload("file-changed")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None
