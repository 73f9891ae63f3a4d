"""The one interface every cache backend implements: bytes in, bytes out.

Backends only move bytes; deciding what to store, and hiding their failures from the
request path, is the job of `policy.py` and `guarded_store.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class CacheStore(Protocol):
    name: str

    async def get(self, key: str, field: str) -> bytes | None:
        """One round trip: the variant `field` of entity `key`, or None."""

    async def put(self, key: str, field: str, value: bytes, keep: int,
                  after: Sequence[tuple[str | int, ...]] = ()) -> None:
        """Store a variant and (re)arm the entity's expiry to `keep` seconds.

        `after`: raw commands sent in the same round trip (the lease release and its
        wake-up); only a store that has a coordinator is ever given any.
        """

    async def drop_field(self, key: str, field: str) -> None:
        """Remove one variant that is past its stale window."""

    async def delete(self, keys: list[str]) -> int:
        """Erase whole entities (every variant); returns how many existed."""

    async def delete_prefix(self, prefix: str) -> int:
        """Erase every entity under `prefix:`; the prefix is validated by the caller."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
