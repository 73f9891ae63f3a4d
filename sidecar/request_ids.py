"""Request ids: the client's `X-Request-ID` when it is safe to repeat, else one made here.

One id follows a request everywhere: upstream, back to the client, the access log and the
audit line. Made ids are a per-process random prefix and a counter: unique without an OS
random read per request (`uuid4` costs about 10 % of a hit).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets

from aiohttp import web
from multidict import CIMultiDictProxy

REQUEST_ID_HEADER = "X-Request-ID"
# What may be echoed into a header and a JSON line without escaping.
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
REQUEST_ID = web.RequestKey("request_id", str)


class RequestIds:
    def __init__(self) -> None:
        self._prefix = f"{os.getpid():x}{secrets.token_hex(4)}-"
        self._count = itertools.count(1)

    def take(self, headers: CIMultiDictProxy[str]) -> str:
        """The client's id if it is one header of the safe alphabet, else a new one."""
        given = headers.getall(REQUEST_ID_HEADER, None)
        if given is not None and len(given) == 1 and SAFE_ID.fullmatch(given[0]):
            return given[0]
        return f"{self._prefix}{next(self._count):x}"
