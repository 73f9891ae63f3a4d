"""The opened-entries memo (lookup.Decoded): keyed by key, field and bytes, and bounded."""

from __future__ import annotations

from sidecar.entry import Entry
from sidecar.lookup import Decoded


def _entry(body: bytes) -> Entry:
    return Entry(status=200, headers=(("Date", "x"),), body=body, stored_at=0.0, ttl=60)


def test_the_same_bytes_under_another_key_or_field_are_not_the_same_entry() -> None:
    memo = Decoded()
    entry = _entry(b"body")
    memo.put("identity:patient:42", "f", b"blob", entry)
    assert memo.get("identity:patient:42", "f", b"blob") is entry
    assert memo.get("identity:patient:43", "f", b"blob") is None
    assert memo.get("identity:patient:42", "g", b"blob") is None
    assert memo.get("identity:patient:42", "f", b"blob2") is None


def test_it_stays_within_its_bounds() -> None:
    memo = Decoded()
    memo.put("k:1", "f", b"x" * (Decoded.MAX_BLOB + 1), _entry(b""))  # too large: not kept
    assert memo.get("k:1", "f", b"x" * (Decoded.MAX_BLOB + 1)) is None
    blob = b"y" * Decoded.MAX_BLOB
    for n in range(2 * Decoded.MAX_BYTES // (2 * len(blob))):
        memo.put(f"k:{n}", "f", blob, _entry(blob))
        assert memo._bytes <= Decoded.MAX_BYTES
    for n in range(Decoded.MAX_ENTRIES + 1):
        memo.put(f"k:{n}", "f", b"z", _entry(b"z"))
    assert len(memo._entries) <= Decoded.MAX_ENTRIES
