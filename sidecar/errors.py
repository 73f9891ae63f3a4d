"""Exceptions the sidecar raises, as one tree so callers catch what they mean.

    SidecarError
    ├── ConfigError                 bad YAML, bad rule, bad environment value
    ├── UpstreamError               the identity service did not answer usefully
    │   ├── UpstreamTimeout         (also asyncio.TimeoutError)  -> 504
    │   └── UpstreamUnavailable     refused, reset, DNS, protocol -> 502
    └── CacheUnavailable            Redis failed, timed out or the breaker is open;
        │                           never reaches a client: the request goes upstream
        └── CacheTimeout            (also TimeoutError) the backend did not answer in time

Backends raise only these: each translates its client's exceptions at its own boundary
(`redis_store.mapped`), so nothing above `store.py` imports a Redis exception.
"""

from __future__ import annotations

import asyncio


class SidecarError(Exception):
    """Base of everything the sidecar raises on purpose."""


class ConfigError(SidecarError):
    """A configuration problem; the message names the file, the rule and the problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class UpstreamError(SidecarError):
    """The upstream could not produce a response."""


class UpstreamTimeout(UpstreamError, asyncio.TimeoutError):
    """The upstream did not answer within its budget."""


class UpstreamUnavailable(UpstreamError, ConnectionError):
    """The upstream refused, reset or garbled the connection.

    `sent` is False only when no byte of the request can have reached the service (a
    refused connection, a connect timeout): such a write cannot have committed anything.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class CacheUnavailable(SidecarError):
    """A cache operation failed; the caller treats it as a miss."""


class CacheTimeout(CacheUnavailable, TimeoutError):
    """The backend did not answer within its budget (counted as `reason="timeout"`)."""
