"""The header work of revalidation (RFC 9111 §3.2, §4.3.1, §4.3.4)."""

from __future__ import annotations

from multidict import CIMultiDict

from sidecar.entry import Entry
from sidecar.revalidation import conditional_headers, refreshed_headers


def _entry(*headers: tuple[str, str]) -> Entry:
    return Entry(status=200, headers=headers, body=b"{}", stored_at=0.0, ttl=600)


def test_validators_become_conditionals() -> None:
    entry = _entry(("ETag", '"v1"'), ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"))
    assert conditional_headers(entry) == [
        ("If-None-Match", '"v1"'), ("If-Modified-Since", "Tue, 01 Dec 2026 10:00:00 GMT")]


def test_the_sidecars_own_etag_is_never_sent_and_no_validator_means_no_conditional() -> None:
    assert conditional_headers(_entry(("ETag", '"sc-abc"'))) == []
    assert conditional_headers(_entry(("Content-Type", "application/json"))) == []


def test_a_304_updates_headers_but_not_the_bodys_framing_or_coding() -> None:
    entry = _entry(("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
                   ("ETag", '"v1"'), ("Date", "old"), ("X-Kept", "1"))
    fresh = CIMultiDict([("Date", "new"), ("ETag", 'W/"v1"'), ("Content-Length", "0"),
                         ("Content-Encoding", "br"), ("Connection", "X-Hop"), ("X-Hop", "1"),
                         ("Cache-Control", "max-age=60"), ("Age", "3")])
    merged = refreshed_headers(entry, fresh)
    assert merged is not None
    assert merged["Date"] == "new" and merged["Cache-Control"] == "max-age=60"
    assert merged["Content-Encoding"] == "gzip" and merged["X-Kept"] == "1"
    assert merged["ETag"] == 'W/"v1"'
    for absent in ("Content-Length", "X-Hop", "Connection", "Age"):
        assert absent not in merged


def test_a_304_about_another_entity_tag_updates_nothing() -> None:
    assert refreshed_headers(_entry(("ETag", '"v1"')), CIMultiDict([("ETag", '"v2"')])) is None
