"""Consistent hashing spreads keys evenly, moves ~1/N of them per change; replicas survive a dead shard."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlscale.errors import ServiceUnavailable
from mlscale.storage import HashRing, MemoryKeyValue
from mlscale.storage.redis_store import RedisKeyValue
from mlscale.storage.sharded import ShardedKeyValue
from mlscale.storage.sqlite import SQLiteKeyValue

KEYS = [f"user:{i}".encode() for i in range(40_000)]


def test_keys_spread_evenly_over_shards() -> None:
    ring = HashRing([f"s{i}" for i in range(4)], vnodes=160)
    counts = Counter(ring.primaries(KEYS))
    assert set(counts) == {"s0", "s1", "s2", "s3"}
    for count in counts.values():
        assert abs(count / len(KEYS) - 0.25) < 0.25 * 0.2, counts


def test_adding_a_shard_moves_about_one_in_n_keys_all_to_the_new_shard() -> None:
    before = HashRing([f"s{i}" for i in range(4)]).primaries(KEYS)
    after = HashRing([f"s{i}" for i in range(5)]).primaries(KEYS)
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    fraction = len(moved) / len(KEYS)
    assert 0.2 * 0.8 < fraction < 0.2 * 1.2, fraction
    assert {b for _, b in moved} == {"s4"}


def test_removing_a_shard_moves_only_that_shards_keys() -> None:
    before = HashRing([f"s{i}" for i in range(5)]).primaries(KEYS)
    after = HashRing([f"s{i}" for i in range(5) if i != 2]).primaries(KEYS)
    moved = [a for a, b in zip(before, after, strict=True) if a != b]
    assert set(moved) == {"s2"}
    assert abs(len(moved) / len(KEYS) - 0.2) < 0.2 * 0.2


def test_replica_owners_are_distinct_and_stable_across_instances() -> None:
    names = ["a", "b", "c"]
    owners = HashRing(names, replicas=2).owner_indices(KEYS[:1000])
    assert (owners[:, 0] != owners[:, 1]).all()
    again = HashRing(list(reversed(names)), replicas=2).owner_indices(KEYS[:1000])
    assert (owners == again).all()
    assert HashRing(["only"], replicas=3).replicas == 1


def test_sharded_store_places_each_key_on_its_owner_shard(tmp_path: Path) -> None:
    shards = {f"s{i}": SQLiteKeyValue(tmp_path / f"s{i}.db") for i in range(3)}
    store = ShardedKeyValue(shards)
    items = {k: k[::-1] for k in KEYS[:3000]}
    store.set_many(items)
    assert store.get_many(list(items)) == list(items.values())
    for name, shard in shards.items():
        held = set(shard.scan())
        assert held and all(store.ring.owners(k) == [name] for k in held)
    assert sum(len(list(s.scan())) for s in shards.values()) == 3000


def test_replicated_store_loses_no_reads_when_a_redis_shard_dies(start_redis, prefix: bytes) -> None:
    servers = [start_redis() for _ in range(3)]
    shards = {f"r{i}": RedisKeyValue(s.url, timeout=0.3) for i, s in enumerate(servers)}
    store = ShardedKeyValue(shards, replicas=2, retry_after=30)
    items = {prefix + k: k for k in KEYS[:2000]}
    store.set_many(items, ttl=300)
    servers[1].stop()
    started = time.monotonic()
    assert store.get_many(list(items)) == list(items.values())
    assert asyncio.run(store.aget_many(list(items)[:500])) == list(items.values())[:500]
    # Writes keep working on the surviving owner, and are readable at once.
    store.set_many({prefix + b"new": b"1"})
    assert store.get(prefix + b"new") == b"1"
    assert set(store.scan(prefix)) >= set(items)
    assert time.monotonic() - started < 5


def test_unreplicated_store_reports_a_dead_shard_clearly(start_redis) -> None:
    servers = [start_redis() for _ in range(2)]
    store = ShardedKeyValue({f"r{i}": RedisKeyValue(s.url, timeout=0.3) for i, s in enumerate(servers)})
    store.set_many({k: b"v" for k in KEYS[:200]})
    servers[0].stop()
    with pytest.raises(ServiceUnavailable, match="no owner of"):
        store.get_many(KEYS[:200])


def test_replicated_sqlite_shard_deleted_from_disk_loses_no_reads(tmp_path: Path) -> None:
    shards = {f"s{i}": SQLiteKeyValue(tmp_path / f"s{i}" / "kv.db") for i in range(3)}
    store = ShardedKeyValue(shards, replicas=2)
    items = {k: b"v" + k for k in KEYS[:1000]}
    store.set_many(items)
    # Wipe one shard's data, as if its disk were replaced: its replicas still answer.
    shards["s0"].delete(list(shards["s0"].scan()))
    assert store.get_many(list(items)) == list(items.values())


keys_st = st.binary(min_size=0, max_size=6)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.dictionaries(keys_st, st.binary(max_size=8), max_size=8)),
        st.tuples(st.just("delete"), st.lists(keys_st, max_size=8)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops_st, probe=st.lists(keys_st, max_size=20))
def test_sharded_store_behaves_like_one_store(ops, probe) -> None:
    single = MemoryKeyValue()
    sharded = ShardedKeyValue({n: MemoryKeyValue() for n in "abc"}, replicas=2, vnodes=16)
    for op, arg in ops:
        if op == "set":
            single.set_many(arg)
            sharded.set_many(arg)
        else:
            assert sharded.delete(arg) == single.delete(list(dict.fromkeys(arg)))
            single.delete(arg)
    assert sharded.get_many(probe) == single.get_many(probe)
    assert set(sharded.scan()) == set(single.scan())


def test_one_key_lookup_agrees_with_the_batch_lookup() -> None:
    ring = HashRing(["a", "b", "c", "d"], vnodes=64)
    keys = [f"key-{i}".encode() for i in range(5000)]
    assert [ring.names[ring.primary_index(k)] for k in keys] == ring.primaries(keys)
