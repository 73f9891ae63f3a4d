"""In-process store: variants under one key, key-level expiry, deletes, LRU byte budget."""

from __future__ import annotations

import pytest

from sidecar.memory_store import MemoryStore
from tests.unit.conftest import Clock


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(max_bytes=10_000, clock=clock)


async def test_variants_live_under_one_key(store: MemoryStore) -> None:
    await store.put("identity:patient:42", "alice|gzip|-", b"A-gzip", 60)
    await store.put("identity:patient:42", "alice|identity|-", b"A-plain", 60)
    await store.put("identity:patient:42", "bob|identity|-", b"B-plain", 60)
    assert await store.get("identity:patient:42", "alice|gzip|-") == b"A-gzip"
    assert await store.get("identity:patient:42", "alice|identity|-") == b"A-plain"
    assert await store.get("identity:patient:42", "bob|identity|-") == b"B-plain"
    assert await store.get("identity:patient:42", "carol|identity|-") is None
    assert await store.get("identity:patient:43", "alice|gzip|-") is None


async def test_put_replaces_a_variant(store: MemoryStore) -> None:
    await store.put("k:e:1", "f", b"old", 60)
    await store.put("k:e:1", "f", b"new", 60)
    assert await store.get("k:e:1", "f") == b"new"


async def test_expiry_is_per_key_and_rearmed_by_put(store: MemoryStore, clock: Clock) -> None:
    await store.put("k:e:1", "a", b"1", 10)
    clock.now += 8
    await store.put("k:e:1", "b", b"2", 10)  # re-arms the whole key
    clock.now += 8
    assert await store.get("k:e:1", "a") == b"1"
    assert store.ttl("k:e:1") == pytest.approx(2.0)
    clock.now += 2
    assert await store.get("k:e:1", "a") is None
    assert await store.get("k:e:1", "b") is None
    assert store.ttl("k:e:1") is None


async def test_expired_key_starts_empty_on_put(store: MemoryStore, clock: Clock) -> None:
    await store.put("k:e:1", "a", b"1", 10)
    clock.now += 10
    await store.put("k:e:1", "b", b"2", 10)
    assert await store.get("k:e:1", "a") is None
    assert await store.get("k:e:1", "b") == b"2"


async def test_delete_erases_every_variant(store: MemoryStore) -> None:
    for field in ("a", "b", "c"):
        await store.put("identity:patient:42", field, b"x", 60)
    await store.put("identity:patient:43", "a", b"y", 60)
    assert await store.delete(["identity:patient:42", "identity:patient:99"]) == 1
    for field in ("a", "b", "c"):
        assert await store.get("identity:patient:42", field) is None
    assert await store.get("identity:patient:43", "a") == b"y"
    assert await store.delete(["identity:patient:42"]) == 0


async def test_drop_field_removes_one_variant(store: MemoryStore) -> None:
    await store.put("k:e:1", "a", b"1", 60)
    await store.put("k:e:1", "b", b"2", 60)
    await store.drop_field("k:e:1", "a")
    await store.drop_field("k:e:1", "missing")
    await store.drop_field("k:e:2", "a")
    assert await store.get("k:e:1", "a") is None
    assert await store.get("k:e:1", "b") == b"2"
    await store.drop_field("k:e:1", "b")
    assert store.ttl("k:e:1") is None  # the empty entity is gone


async def test_delete_prefix_only_touches_its_prefix(store: MemoryStore) -> None:
    keys = ["identity:patient:1", "identity:patient:2", "identity:patients:3",
            "identity:patient-x:4", "identity:professional:1", "identity:stats:dashboard"]
    for key in keys:
        await store.put(key, "f", b"v", 60)
    assert await store.delete_prefix("identity:patient") == 2
    remaining = {k for k in keys if await store.get(k, "f") is not None}
    assert remaining == set(keys[2:])


async def test_lru_eviction_under_max_bytes(clock: Clock) -> None:
    # Each variant costs len(field) + len(value) = 1 + 39 = 40 bytes.
    store = MemoryStore(max_bytes=100, clock=clock)
    value = b"x" * 39
    await store.put("k:e:a", "f", value, 60)
    await store.put("k:e:b", "f", value, 60)
    assert await store.get("k:e:a", "f") == value  # a is now the most recently used
    await store.put("k:e:c", "f", value, 60)  # 120 > 100: the least recently used goes
    assert await store.get("k:e:b", "f") is None
    assert await store.get("k:e:a", "f") == value
    assert await store.get("k:e:c", "f") == value


async def test_byte_budget_counts_replaced_and_dropped_variants(clock: Clock) -> None:
    store = MemoryStore(max_bytes=100, clock=clock)
    for _ in range(10):  # replacing a variant must not leak budget
        await store.put("k:e:a", "f", b"x" * 39, 60)
    await store.put("k:e:b", "f", b"x" * 39, 60)
    assert await store.get("k:e:a", "f") is not None
    await store.drop_field("k:e:a", "f")
    await store.put("k:e:c", "f", b"x" * 39, 60)
    assert await store.get("k:e:b", "f") is not None
    assert await store.get("k:e:c", "f") is not None


async def test_a_value_larger_than_the_budget_is_not_stored(clock: Clock) -> None:
    store = MemoryStore(max_bytes=100, clock=clock)
    await store.put("k:e:a", "f", b"small", 60)
    await store.put("k:e:big", "f", b"x" * 100, 60)
    assert await store.get("k:e:big", "f") is None
    assert await store.get("k:e:a", "f") == b"small"


async def test_close_empties_the_store(store: MemoryStore) -> None:
    await store.put("k:e:a", "f", b"v", 60)
    await store.ping()
    await store.close()
    assert await store.get("k:e:a", "f") is None
