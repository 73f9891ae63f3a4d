"""One JSON line per request, sampled: enough to follow a request, nothing that is PHI.

The path is never logged (it carries the patient id); the rule name stands for it.
"""

from __future__ import annotations

import logging
import random
import re
import uuid

from aiohttp import web

log = logging.getLogger("sidecar.access")
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)


class AccessLog:
    def __init__(self, sample: float, rng: random.Random | None = None) -> None:
        self.sample = sample
        self._random = rng or random.Random()

    def record(self, request: web.Request, rule: str, cache: str, status: int,
               seconds: float) -> None:
        if self.sample <= 0 or (self.sample < 1 and self._random.random() >= self.sample):
            return
        given = request.headers.get("X-Request-Id", "")
        log.info("request", extra={
            "request_id": given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex,
            "method": request.method, "rule": rule, "cache": cache, "status": status,
            "duration_ms": round(seconds * 1000, 3),
        })
