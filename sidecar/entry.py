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
from typing import Any

from sidecar.headers import COMPUTED_PER_ANSWER, HOP_BY_HOP, TOKEN, UNSENDABLE

_MAGIC = b"SC1"
_LEN = struct.Struct(">I")
# Largest ttl / initial age a stored entry may carry; anything above is read as damage.
# Rules are capped far below it (`rules.MAX_TTL_SECONDS`), so every entry we write decodes.
MAX_STORED_SECONDS = 10**9 - 1
_NEVER_STORED = HOP_BY_HOP | COMPUTED_PER_ANSWER


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
    # `mode: rfc9111` only (None/False otherwise): what the origin's headers allow, already
    # capped by the rule (see freshness.lifetime).
    fresh_for: int | None = None
    while_revalidate: int | None = None
    if_error: int | None = None
    must_revalidate: bool = False
    _index: dict[str, str] | None = field(default=None, compare=False, repr=False)
    _wire: bytes | None = field(default=None, compare=False, repr=False)  # see wire.py

    def age(self, now: float) -> int:
        return max(0, int(now - self.stored_at)) + self.initial_age

    def remaining(self, now: float, ttl: int | None = None) -> float:
        """Seconds of freshness left; negative once stale.

        `ttl` is the rule's current TTL, so a hot-reloaded TTL applies to entries already
        stored; the store's own expiry (set from the TTL at write time) still ends them.
        An origin's lifetime (`mode: rfc9111`) counts within it.
        """
        life = self.ttl if ttl is None else ttl
        if self.fresh_for is not None:
            life = min(life, self.fresh_for)
        return life - (now - self.stored_at) - self.initial_age

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
        fields = {"s": self.status, "h": self.headers, "t": self.stored_at, "ttl": self.ttl,
                  "a": self.initial_age}
        if self.fresh_for is not None:
            fields.update(f=self.fresh_for, w=self.while_revalidate, e=self.if_error,
                          m=self.must_revalidate)
        meta = json.dumps(fields, separators=(",", ":")).encode()
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
                **_origin_terms(meta),
            )
            if not (math.isfinite(entry.stored_at) and 0 < entry.ttl <= MAX_STORED_SECONDS
                    and 0 <= entry.initial_age <= MAX_STORED_SECONDS
                    and entry.status == 200):  # the only status ever stored
                raise CorruptEntry("out-of-range header values")
            for name, value in entry.headers:
                # What a fill never stores: framing, per-answer headers, bytes no answer
                # may carry. A value altered in Redis must not reach a client.
                if (name.lower() in _NEVER_STORED or not TOKEN.fullmatch(name)
                        or (not value.isprintable() and UNSENDABLE.search(value))):
                    raise CorruptEntry("a header no fill stores")
            return entry
        except CorruptEntry:
            raise
        except Exception as exc:  # anything a damaged value can provoke is a miss
            raise CorruptEntry(type(exc).__name__) from None


def _origin_terms(meta: dict[str, Any]) -> dict[str, Any]:
    """The `mode: rfc9111` fields, range-checked (absent for `mode: ttl` entries)."""
    if "f" not in meta:
        return {}
    numbers = [int(meta["f"]), int(meta["w"]), int(meta["e"])]
    if not all(0 <= n <= MAX_STORED_SECONDS for n in numbers):
        raise CorruptEntry("out-of-range origin terms")
    return {"fresh_for": numbers[0], "while_revalidate": numbers[1], "if_error": numbers[2],
            "must_revalidate": bool(meta["m"])}
