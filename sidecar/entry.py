"""A stored response and its byte format.

Layout: magic `SC1`, 4-byte big-endian length of a JSON header, the JSON header, the body.
The header keeps only what a replay needs (status, replayable headers, timestamps);
per-exchange headers never enter it. Anything that does not parse is treated as a miss.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

_MAGIC = b"SC1"
_LEN = struct.Struct(">I")
# Largest ttl / initial age a stored entry may carry; anything above is read as damage.
# Rules are capped far below it (`rules.MAX_TTL_SECONDS`), so every entry we write decodes.
MAX_STORED_SECONDS = 10**9 - 1


class CorruptEntry(ValueError):
    """Stored bytes that are not an entry; the caller treats them as a miss."""


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float  # wall clock (epoch seconds): replicas must agree on it
    ttl: int
    initial_age: int = 0  # the upstream's Age when stored (RFC 9111 §4.2.3)
    _index: dict[str, str] | None = field(default=None, compare=False, repr=False)
    _wire: bytes | None = field(default=None, compare=False, repr=False)  # see wire.py

    def age(self, now: float) -> int:
        return max(0, int(now - self.stored_at)) + self.initial_age

    def remaining(self, now: float, ttl: int | None = None) -> float:
        """Seconds of freshness left; negative once stale.

        `ttl` is the rule's current TTL, so a hot-reloaded TTL applies to entries already
        stored; the store's own expiry (set from the TTL at write time) still ends them.
        """
        return (self.ttl if ttl is None else ttl) - (now - self.stored_at) - self.initial_age

    def header(self, name: str) -> str | None:
        """First value of a header; the index is built on first use (a hit asks 3-4 times)."""
        index = self._index
        if index is None:
            index = {}
            for k, v in self.headers:
                index.setdefault(k.lower(), v)
            object.__setattr__(self, "_index", index)
        return index.get(name.lower())

    @property
    def wire(self) -> bytes | None:
        """The stored headers serialised for the socket (b"" if they must be refused)."""
        return self._wire

    def remember_wire(self, block: bytes) -> None:
        object.__setattr__(self, "_wire", block)

    def encode(self) -> bytes:
        meta = json.dumps(
            {"s": self.status, "h": self.headers, "t": self.stored_at, "ttl": self.ttl,
             "a": self.initial_age},
            separators=(",", ":"),
        ).encode()
        return b"".join((_MAGIC, _LEN.pack(len(meta)), meta, self.body))

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        try:
            if data[:3] != _MAGIC:
                raise CorruptEntry("bad magic")
            (size,) = _LEN.unpack_from(data, 3)
            end = 3 + _LEN.size + size
            if end > len(data):
                raise CorruptEntry("truncated header")
            meta = json.loads(data[3 + _LEN.size:end])
            entry = cls(
                status=int(meta["s"]),
                headers=tuple((str(k), str(v)) for k, v in meta["h"]),
                body=data[end:],
                stored_at=float(meta["t"]),
                ttl=int(meta["ttl"]),
                initial_age=int(meta.get("a", 0)),
            )
            if not (math.isfinite(entry.stored_at) and 0 < entry.ttl <= MAX_STORED_SECONDS
                    and 0 <= entry.initial_age <= MAX_STORED_SECONDS
                    and 100 <= entry.status <= 599):
                raise CorruptEntry("out-of-range header values")
            return entry
        except CorruptEntry:
            raise
        except Exception as exc:  # anything a damaged value can provoke is a miss
            raise CorruptEntry(type(exc).__name__) from None
