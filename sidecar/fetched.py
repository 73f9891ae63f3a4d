"""What a fill hands to the requests waiting on it: the response, and how to relay it.

Its own module: the single-flight table and the handler type by it without the fill.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from sidecar.entry import Entry


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    reason: str | None
    headers: CIMultiDict[str]  # end-to-end headers of this exchange
    body: bytes
    entry: Entry | None  # the storable form, when the response may be stored/shared
    not_stored: str | None  # why it was not stored (RFC 9211 detail), or None
    oversized: bool = False
    replica: bool = False  # filled by another replica while this one waited
    handover: Handover | None = None  # oversized: the rest of the body, for the leader
    revalidated: bool = False  # a 304 confirmed the stale entry; its body is the stored one


class Handover:
    """An upstream response, still open, passed from the fill to the caller that leads it.

    Released if nobody takes it soon (the leader went away), so a connection never leaks.
    """

    __slots__ = ("_response", "_timer")

    def __init__(self, response: aiohttp.ClientResponse, unclaimed_after: float = 5.0) -> None:
        self._response: aiohttp.ClientResponse | None = response
        self._timer = asyncio.get_running_loop().call_later(unclaimed_after, self.release)

    def take(self) -> aiohttp.ClientResponse | None:
        response, self._response = self._response, None
        self._timer.cancel()
        return response

    def release(self) -> None:
        response = self.take()
        if response is not None:
            response.release()
