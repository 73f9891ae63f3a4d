"""The one backend seam: everything Redis-shaped the sidecar does goes through `CacheStore`.

Backends (`memory_store.py`, `redis_store.py` for standalone, Sentinel and Cluster) only
move bytes and raise nothing but `CacheUnavailable` (`errors.py`); deciding what to store,
and hiding failures from the request path, is the job of `policy.py` and `guarded_store.py`.
Coordination (`coordination.py`) and purge (`admin.py`) use the same interface, so no
module above this one holds a Redis client.

Key layout: the entity is one hash (`identity:patient:42`); what must share its slot on a
cluster (the lease) is hash-tagged with the entity key: `{identity:patient:42}:lease:...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


def lease_name(key: str, variant: str) -> str:
    """The lease of one variant, in the entity's slot (`{key}` is the cluster hash tag)."""
    return f"{{{key}}}:lease:{variant}"


@dataclass(frozen=True, slots=True)
class Release:
    """Give the lease back (only if still ours) and publish `message` on `channel`."""

    lease: str
    token: str
    channel: str
    message: str


class Subscription(Protocol):
    """One long-lived pub/sub connection (the coordinator's wake-ups and invalidations)."""

    async def subscribe(self, *channels: str) -> None: ...

    async def get_message(self, wait: float) -> dict[str, Any] | None:
        """The next message (or subscribe/pong confirmation), None after `wait` seconds."""

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class CacheStore(Protocol):
    name: str
    # True when other replicas share this store: only then is there a lease, a wake-up
    # channel and a reason to announce invalidations (memory:// is one process).
    shared: bool

    async def start(self) -> None:
        """Check the topology once at start-up (ConfigError for a wrong URL) and watch it."""

    @property
    def up(self) -> bool:
        """False while the backend is known unusable (for /readyz and `cache_backend_up`)."""

    async def get(self, key: str, field: str) -> bytes | None:
        """One round trip: the variant `field` of entity `key`, or None."""

    async def put(self, key: str, field: str, value: bytes, keep: int,
                  release: Release | None = None) -> None:
        """Store a variant and (re)arm the entity's expiry to `keep` seconds; with
        `release`, give the lease back and wake the waiters in the same round trip."""

    async def drop_field(self, key: str, field: str) -> None:
        """Remove one variant that is past its stale window."""

    async def delete(self, keys: list[str]) -> int:
        """Erase whole entities (every variant); returns how many existed."""

    async def delete_prefix(self, prefix: str) -> int:
        """Erase every entity under `prefix:` (on every primary); the caller validates it."""

    async def acquire(self, lease: str, token: str, ttl_ms: int) -> bool:
        """`SET lease token NX PX ttl_ms`: True when this caller now holds the lease."""

    async def release(self, release: Release) -> None:
        """Give the lease back without a store (the fill was not storable)."""

    async def publish(self, channel: str, message: str) -> None: ...

    def subscription(self) -> Subscription:
        """A new pub/sub connection (no read timeout: it waits for messages)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


