"""Stored entries: the byte format, and sealing them with AES-GCM bound to key and field."""

from __future__ import annotations

import base64
import json
import os
import struct

import pytest

from sidecar.codec import AesGcmCodec, PlainCodec, SealError, build_codec
from sidecar.entry import CorruptEntry, Entry
from sidecar.errors import ConfigError

ENTRY = Entry(
    status=200,
    headers=(("Content-Type", "application/json"), ("ETag", '"v1"'),
             ("Content-Language", "fr")),
    body=b'{"id": 42, "name": "No\xc3\xa9"}\x00\xff',
    stored_at=1_700_000_000.25,
    ttl=600,
    initial_age=7,
)
KEY, FIELD = "identity:patient:42", "anon|identity|-"


# -- entry --------------------------------------------------------------------------------


def test_entry_round_trip() -> None:
    assert Entry.decode(ENTRY.encode()) == ENTRY
    empty = Entry(status=200, headers=(), body=b"", stored_at=0.0, ttl=1)
    assert Entry.decode(empty.encode()) == empty


def test_entry_without_initial_age_field_reads_as_zero() -> None:
    meta = json.dumps({"s": 200, "h": [], "t": 5.0, "ttl": 60}).encode()
    entry = Entry.decode(b"SC1" + struct.pack(">I", len(meta)) + meta + b"body")
    assert (entry.initial_age, entry.body) == (0, b"body")


def test_header_lookup_ignores_case() -> None:
    assert ENTRY.header("etag") == '"v1"'
    assert ENTRY.header("CONTENT-TYPE") == "application/json"
    assert ENTRY.header("Set-Cookie") is None


def test_age_and_remaining_count_the_upstream_age() -> None:
    entry = Entry(status=200, headers=(), body=b"", stored_at=1000.0, ttl=600, initial_age=100)
    assert entry.age(1000.0) == 100
    assert entry.age(1010.9) == 110
    assert entry.remaining(1010.0) == pytest.approx(490.0)
    assert entry.remaining(1500.0) == pytest.approx(0.0)
    assert entry.remaining(1600.0) == pytest.approx(-100.0)  # stale for 100 s
    # A replica whose clock is behind never reports less than the upstream's age.
    assert entry.age(900.0) == 100


@pytest.mark.parametrize("data", [
    b"",
    b"SC",
    b"SC1",
    b"SC1\x00\x00",
    b"XYZ" + ENTRY.encode()[3:],
    b"sc1" + ENTRY.encode()[3:],
    b"SE1" + os.urandom(40),
    b"SC1\x00\x00\x00\x02{}",
    b"SC1\x00\x00\x00\x02[]body",
    b"SC1\x00\x00\x00\x04null",
    b"SC1\x00\x00\x00\x03\xff\xfe\xfd",
    b"SC1\xff\xff\xff\xff{}",
    b'{"s":200,"h":[],"t":1,"ttl":1}',
    b"\x00" * 64,
])
def test_garbage_is_a_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        Entry.decode(data)


@pytest.mark.parametrize("meta", [
    {"h": [], "t": 1.0, "ttl": 60},
    {"s": "OK", "h": [], "t": 1.0, "ttl": 60},
    {"s": 200, "h": [["a"]], "t": 1.0, "ttl": 60},
    {"s": 200, "h": "ab", "t": 1.0, "ttl": 60},
    {"s": 200, "h": None, "t": 1.0, "ttl": 60},
    {"s": 200, "h": [], "t": "yesterday", "ttl": 60},
    {"s": 200, "h": [], "t": 1.0, "ttl": None},
    {"s": 200, "h": [], "t": 1.0, "ttl": 60, "a": "old"},
])
def test_wrong_shaped_header_is_a_corrupt_entry(meta: dict[str, object]) -> None:
    raw = json.dumps(meta).encode()
    with pytest.raises(CorruptEntry):
        Entry.decode(b"SC1" + struct.pack(">I", len(raw)) + raw)


def test_every_truncation_inside_the_header_is_a_corrupt_entry() -> None:
    data = ENTRY.encode()
    header_end = len(data) - len(ENTRY.body)
    for n in range(header_end):
        with pytest.raises(CorruptEntry):
            Entry.decode(data[:n])


def test_non_finite_timestamp_is_a_corrupt_entry() -> None:
    raw = b'{"s":200,"h":[],"t":NaN,"ttl":60}'
    with pytest.raises(CorruptEntry):
        Entry.decode(b"SC1" + struct.pack(">I", len(raw)) + raw)


# -- codec --------------------------------------------------------------------------------

K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_aes_round_trip_and_fresh_nonce() -> None:
    codec = AesGcmCodec(K1, [])
    data = ENTRY.encode()
    a, b = codec.seal(KEY, FIELD, data), codec.seal(KEY, FIELD, data)
    assert a != b
    assert data not in a
    assert b"Noe" not in a and b'"id"' not in a
    assert codec.open(KEY, FIELD, a) == codec.open(KEY, FIELD, b) == data


@pytest.mark.parametrize("key, field", [
    ("identity:patient:43", FIELD),  # copied under another patient
    ("identity:patient:4", FIELD),
    (KEY, "0123456789abcdef|identity|-"),  # served to another caller
    (KEY, "anon|gzip|-"),
    ("identity:patient:42\x00anon", "identity|-"),
])
def test_value_moved_to_another_key_or_field_does_not_open(key: str, field: str) -> None:
    codec = AesGcmCodec(K1, [])
    blob = codec.seal(KEY, FIELD, b"patient 42")
    with pytest.raises(SealError):
        codec.open(key, field, blob)


def test_any_flipped_byte_does_not_open() -> None:
    codec = AesGcmCodec(K1, [])
    blob = codec.seal(KEY, FIELD, b"patient 42 data")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SealError):
            codec.open(KEY, FIELD, bytes(tampered))


def test_truncated_blob_with_a_full_nonce_does_not_open() -> None:
    codec = AesGcmCodec(K1, [])
    blob = codec.seal(KEY, FIELD, b"patient 42 data")
    for n in (*range(7), *range(3 + 4 + 12, len(blob))):
        with pytest.raises(SealError):
            codec.open(KEY, FIELD, blob[:n])


def test_truncated_blob_inside_the_nonce_does_not_open() -> None:
    codec = AesGcmCodec(K1, [])
    blob = codec.seal(KEY, FIELD, b"patient 42 data")
    for n in range(7, 3 + 4 + 8):
        with pytest.raises(SealError):
            codec.open(KEY, FIELD, blob[:n])


def test_previous_key_still_opens_after_rotation() -> None:
    old_blob = AesGcmCodec(K1, []).seal(KEY, FIELD, b"sealed before rotation")
    rotated = AesGcmCodec(K2, [K1])
    assert rotated.open(KEY, FIELD, old_blob) == b"sealed before rotation"
    new_blob = rotated.seal(KEY, FIELD, b"sealed after rotation")
    assert AesGcmCodec(K2, []).open(KEY, FIELD, new_blob) == b"sealed after rotation"
    with pytest.raises(SealError, match="unknown key"):
        AesGcmCodec(K1, []).open(KEY, FIELD, new_blob)  # new values use the new key


def test_unknown_key_does_not_open() -> None:
    blob = AesGcmCodec(K1, []).seal(KEY, FIELD, b"x")
    with pytest.raises(SealError, match="unknown key"):
        AesGcmCodec(K2, [K3]).open(KEY, FIELD, blob)


def test_clear_text_is_refused_when_encryption_is_on() -> None:
    with pytest.raises(SealError, match="clear-text"):
        AesGcmCodec(K1, []).open(KEY, FIELD, ENTRY.encode())


def test_plain_codec_passes_bytes_and_refuses_an_encrypted_blob() -> None:
    plain = PlainCodec()
    assert not plain.encrypted
    data = ENTRY.encode()
    assert plain.open(KEY, FIELD, plain.seal(KEY, FIELD, data)) == data
    with pytest.raises(SealError, match="no CACHE_ENCRYPTION_KEY"):
        plain.open(KEY, FIELD, AesGcmCodec(K1, []).seal(KEY, FIELD, data))


def test_build_codec() -> None:
    assert isinstance(build_codec(None, None), PlainCodec)
    assert isinstance(build_codec("", "ignored"), PlainCodec)
    codec = build_codec(f" {b64(K2)}\n", f"{b64(K1)}, {b64(K3)},")
    assert codec.encrypted
    for old in (K1, K3):
        blob = AesGcmCodec(old, []).seal(KEY, FIELD, b"old")
        assert codec.open(KEY, FIELD, blob) == b"old"


@pytest.mark.parametrize("current, previous, fragment", [
    ("not base64!", None, "CACHE_ENCRYPTION_KEY is not valid base64"),
    (b64(K1)[:-2], None, "CACHE_ENCRYPTION_KEY is not valid base64"),
    (b64(os.urandom(16)), None, "CACHE_ENCRYPTION_KEY decodes to 16 bytes, not 32"),
    (b64(os.urandom(33)), None, "CACHE_ENCRYPTION_KEY decodes to 33 bytes, not 32"),
    (b64(K1), "%%%", "CACHE_ENCRYPTION_KEY_PREVIOUS is not valid base64"),
    (b64(K1), f"{b64(K2)},{b64(b'short')}",
     "CACHE_ENCRYPTION_KEY_PREVIOUS decodes to 5 bytes, not 32"),
])
def test_bad_keys_are_config_errors(current: str, previous: str | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_codec(current, previous)
    message = str(info.value)
    assert fragment in message
    assert current not in message  # the key material is never echoed
