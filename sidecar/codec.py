"""Sealing stored values: AES-256-GCM with the Redis key and variant as associated data.

Binding the key means a value copied under another key (another patient) does not open.
The key id is derived from the key itself, so rotation is: set the new key, move the old
one to `CACHE_ENCRYPTION_KEY_PREVIOUS`, and entries sealed with either still open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.errors import ConfigError

_MAGIC = b"SE1"
_NONCE = 12
_KID = 4
_TAG = 16


class SealError(ValueError):
    """A stored value that does not open: wrong key, tampered, or moved."""


class Codec(Protocol):
    encrypted: bool

    def seal(self, key: str, field: str, data: bytes) -> bytes: ...

    def open(self, key: str, field: str, blob: bytes) -> bytes: ...


class PlainCodec:
    encrypted = False

    def seal(self, key: str, field: str, data: bytes) -> bytes:
        return data

    def open(self, key: str, field: str, blob: bytes) -> bytes:
        if blob.startswith(_MAGIC):
            raise SealError("value is encrypted but no CACHE_ENCRYPTION_KEY is set")
        return blob


def _aad(key: str, field: str) -> bytes:
    return key.encode() + b"\x00" + field.encode()


def key_id(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:_KID]


class AesGcmCodec:
    encrypted = True

    def __init__(self, current: bytes, previous: list[bytes]) -> None:
        self._current_id = key_id(current)
        self._current = AESGCM(current)
        self._keys = {key_id(k): AESGCM(k) for k in (*previous, current)}

    def seal(self, key: str, field: str, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._current.encrypt(nonce, data, _aad(key, field))
        return b"".join((_MAGIC, self._current_id, nonce, sealed))

    def open(self, key: str, field: str, blob: bytes) -> bytes:
        if not blob.startswith(_MAGIC):
            raise SealError("clear-text value while encryption is on")
        if len(blob) < len(_MAGIC) + _KID + _NONCE + _TAG:
            raise SealError("truncated value")
        kid = blob[3:3 + _KID]
        aead = self._keys.get(kid)
        if aead is None:
            raise SealError("sealed with an unknown key")
        nonce = blob[3 + _KID:3 + _KID + _NONCE]
        try:
            return aead.decrypt(nonce, blob[3 + _KID + _NONCE:], _aad(key, field))
        except InvalidTag:
            raise SealError("value does not open under its key") from None


KEY_FORM = "base64 of exactly 32 random bytes, e.g. from `openssl rand -base64 32`"


def parse_key(name: str, value: str) -> bytes:
    """One AES-256 key; the same check runs in `Settings.from_env` and at start-up.

    The message never quotes the value: it is a secret, or one pasted in the wrong place.
    """
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError([f"environment: {name} is not valid base64 "
                           f"(accepted: {KEY_FORM})"]) from None
    if len(raw) != 32:
        raise ConfigError([f"environment: {name} decodes to {len(raw)} bytes, not 32 "
                           f"(accepted: {KEY_FORM})"])
    return raw


def build_codec(current: str | None, previous: str | None) -> Codec:
    if not current:
        return PlainCodec()
    old = [parse_key("CACHE_ENCRYPTION_KEY_PREVIOUS", p)
           for p in (previous or "").split(",") if p.strip()]
    return AesGcmCodec(parse_key("CACHE_ENCRYPTION_KEY", current), old)
