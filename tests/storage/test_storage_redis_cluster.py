"""RedisClusterKeyValue against a real 3-master Redis Cluster: batches that span every node, scans of
all nodes, the async face, sharding over clusters, and a node that dies or hangs mid-traffic.

The KeyValue contract itself (order, misses, TTL, delete counts, prefix scans) and the refusal of a
plain or dead Redis given as a cluster run in test_storage_backends.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mlscale.errors import ServiceUnavailable
from mlscale.storage import open_store
from mlscale.storage.localredis import LocalRedisCluster
from mlscale.storage.redis_store import RedisClusterKeyValue
from mlscale.storage.sharded import ShardedKeyValue

KEYS = [b"key-%d" % i for i in range(600)]  # spread over ~600 hash slots on all three masters


@pytest.fixture
def cluster_kv(redis_cluster_url: str, prefix: bytes) -> Iterator[RedisClusterKeyValue]:
    kv = RedisClusterKeyValue(redis_cluster_url, prefix=prefix)
    yield kv
    kv.delete(list(kv.scan()))
    kv.close()


def keys_per_node(url: str, prefix: bytes) -> dict[int, int]:
    """How many keys with ``prefix`` each master holds, asked of each node directly."""
    kv = RedisClusterKeyValue(url)
    counts = {}
    for node in kv.client.get_primaries():
        with redis.Redis(host=node.host, port=node.port) as client:
            counts[node.port] = sum(1 for _ in client.scan_iter(match=prefix + b"*", count=1000))
    kv.close()
    return counts


def owner_port(kv: RedisClusterKeyValue, key: bytes) -> int:
    return kv.client.get_node_from_key(kv.prefix + key).port


def test_batches_span_every_master_and_keep_order(cluster_kv: RedisClusterKeyValue, redis_cluster_url: str) -> None:
    cluster_kv.set_many({k: k[::-1] for k in KEYS})
    counts = keys_per_node(redis_cluster_url, cluster_kv.prefix)
    assert len(counts) == 3 and all(n > 100 for n in counts.values()) and sum(counts.values()) == len(KEYS)
    asked = [b"missing-1", *KEYS[::-1], b"missing-2", KEYS[0]]  # duplicates and misses in the batch
    assert cluster_kv.get_many(asked) == [None, *(k[::-1] for k in KEYS[::-1]), None, KEYS[0][::-1]]
    assert cluster_kv.delete([*KEYS[:300], b"missing"]) == 300
    assert cluster_kv.get_many(KEYS[299:301]) == [None, KEYS[300][::-1]]
    assert sorted(cluster_kv.scan()) == sorted(KEYS[300:])


def test_scan_visits_every_node_and_only_its_own_prefix(redis_cluster_url: str, prefix: bytes) -> None:
    mine = RedisClusterKeyValue(redis_cluster_url, prefix=prefix)
    other = RedisClusterKeyValue(redis_cluster_url, prefix=prefix + b"other:")
    try:
        mine.set_many({b"user:%d" % i: b"u" for i in range(200)} | {b"item:%d" % i: b"i" for i in range(50)})
        other.set_many({b"user:x": b"not mine to list"})
        assert set(mine.scan(b"user:")) == {b"user:%d" % i for i in range(200)}
        assert len({owner_port(mine, k) for k in mine.scan(b"user:")}) == 3
        assert sum(1 for _ in mine.scan()) == 250 + 1  # other's key is b"other:user:x" under mine
        assert list(other.scan()) == [b"user:x"]
    finally:
        for kv in (other, mine):
            kv.delete(list(kv.scan()))
            kv.close()


def test_ttls_across_slots_expire_and_are_reported(cluster_kv: RedisClusterKeyValue) -> None:
    cluster_kv.set_many({k: b"short" for k in KEYS[:100]}, ttl=0.3)
    cluster_kv.set_many_with_ttls({KEYS[100]: (b"long", 60.0), KEYS[101]: (b"forever", None)})
    ttls = cluster_kv.ttl_many([KEYS[100], KEYS[101], b"missing", KEYS[0]])
    assert ttls[0] is not None and 50 < ttls[0] <= 60
    assert ttls[1:3] == [None, None] and ttls[3] is not None and ttls[3] <= 0.3
    deadline = time.monotonic() + 5
    while any(cluster_kv.get_many(KEYS[:100])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster_kv.get_many(KEYS[:102]) == [None] * 100 + [b"long", b"forever"]


def test_async_face_spans_every_master(cluster_kv: RedisClusterKeyValue) -> None:
    async def roundtrip() -> tuple[list[bytes | None], int]:
        await cluster_kv.aset_many({k: k for k in KEYS}, ttl=30)
        got = await cluster_kv.aget_many([*KEYS, b"missing"])
        removed = await cluster_kv.adelete([*KEYS[:400], b"missing"])
        await cluster_kv.aclose()
        return got, removed

    got, removed = asyncio.run(roundtrip())
    assert got == [*KEYS, None] and removed == 400
    assert sorted(cluster_kv.scan()) == sorted(KEYS[400:])
    assert all(t is not None and t <= 30 for t in cluster_kv.ttl_many(KEYS[400:]))


def test_sharded_store_over_a_cluster_and_sqlite(redis_cluster_url: str, prefix: bytes, tmp_path: Path) -> None:
    cluster_url = f"{redis_cluster_url}?prefix={prefix.decode()}"
    store = open_store([f"cluster={cluster_url}", f"disk=sqlite:///{tmp_path}/disk.db"], replicas=1)
    assert isinstance(store, ShardedKeyValue) and isinstance(store.shards["cluster"], RedisClusterKeyValue)
    try:
        store.set_many({k: k for k in KEYS[:200]})
        assert store.get_many(KEYS[:200]) == KEYS[:200]
        on_cluster = set(store.shards["cluster"].scan())
        assert 0 < len(on_cluster) < 200 and on_cluster | set(store.shards["disk"].scan()) == set(KEYS[:200])
        assert asyncio.run(store.aget_many(KEYS[:50])) == KEYS[:50]
        assert store.delete(KEYS[:200]) == 200
    finally:
        store.close()


def test_batches_follow_a_slot_moved_to_another_node(start_redis_cluster) -> None:
    cluster = start_redis_cluster()
    kv = RedisClusterKeyValue(cluster.url)
    kv.set_many({k: k for k in KEYS})
    moved = KEYS[7]
    slot = kv.client.keyslot(moved)
    source = kv.client.get_node_from_key(moved)
    target = next(n for n in kv.client.get_primaries() if n.name != source.name)
    ids = {n.name: n.redis_connection.cluster("MYID") for n in kv.client.get_primaries()}
    src, dst = (redis.Redis(host=n.host, port=n.port) for n in (source, target))
    # The standard slot migration (what redis-cli --cluster reshard does), behind the client's back.
    dst.cluster("SETSLOT", slot, "IMPORTING", ids[source.name])
    src.cluster("SETSLOT", slot, "MIGRATING", ids[target.name])
    src.migrate(target.host, target.port, [moved], 0, 5000)
    for node in (dst, src):
        node.cluster("SETSLOT", slot, "NODE", ids[target.name])
    for client in (src, dst):
        client.close()
    cluster.wait_ok()
    assert kv.get_many(KEYS) == KEYS  # MOVED: the slot table is reloaded and the batch resent
    assert kv.client.get_node_from_key(moved).name == target.name
    kv.set_many({moved: b"new"}, ttl=60)
    assert kv.get(moved) == b"new" and kv.delete([moved]) == 1
    kv.close()


def split_by_victim(kv: RedisClusterKeyValue, cluster: LocalRedisCluster) -> tuple[list[bytes], list[bytes]]:
    victim = cluster.nodes[1].port
    on_victim = [k for k in KEYS if owner_port(kv, k) == victim]
    elsewhere = [k for k in KEYS if owner_port(kv, k) != victim]
    assert on_victim and elsewhere
    return on_victim, elsewhere


def run_async(kv: RedisClusterKeyValue, coro) -> object:
    async def call_then_close() -> object:
        try:
            return await coro
        finally:
            await kv.aclose()

    return asyncio.run(call_then_close())


def assert_every_call_fails_fast(kv: RedisClusterKeyValue, keys: list[bytes], bound: float) -> None:
    calls = {
        "get_many": lambda: kv.get_many(keys),
        "set_many": lambda: kv.set_many({k: b"x" for k in keys}, ttl=30),
        "delete": lambda: kv.delete(keys),
        "ttl_many": lambda: kv.ttl_many(keys),
        "scan": lambda: list(kv.scan()),
        "aget_many": lambda: run_async(kv, kv.aget_many(keys)),
        "aset_many": lambda: run_async(kv, kv.aset_many({k: b"x" for k in keys})),
        "adelete": lambda: run_async(kv, kv.adelete(keys)),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="Redis Cluster"):
            call()
        elapsed = time.monotonic() - started
        assert elapsed < bound, f"{name} took {elapsed:.2f}s"


def test_a_killed_node_mid_traffic_fails_calls_within_the_timeout(start_redis_cluster) -> None:
    cluster = start_redis_cluster()
    timeout = 0.5
    kv = RedisClusterKeyValue(cluster.url, timeout=timeout)
    on_victim, elsewhere = split_by_victim(kv, cluster)
    kv.set_many({k: k for k in KEYS})
    outcomes: list[tuple[str, float]] = []
    served = threading.Event()
    stop = threading.Event()

    def traffic() -> None:  # one client thread reading and writing batches over all nodes
        while not stop.is_set():
            started = time.monotonic()
            try:
                assert kv.get_many(KEYS) == KEYS
                kv.set_many({k: k for k in KEYS[:50]}, ttl=60)
                outcomes.append(("ok", time.monotonic() - started))
            except ServiceUnavailable:
                outcomes.append(("unavailable", time.monotonic() - started))
            if len(outcomes) >= 20:
                served.set()

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert served.wait(10)
        cluster.nodes[1].stop()  # a crash while requests are in flight: no replica takes over
        deadline = time.monotonic() + 10
        while sum(o == "unavailable" for o, _ in outcomes) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()  # never hung
    assert {o for o, _ in outcomes} == {"ok", "unavailable"}
    assert outcomes[-1][0] == "unavailable"
    assert max(elapsed for _, elapsed in outcomes) < 5 * timeout
    assert_every_call_fails_fast(kv, KEYS, bound=5 * timeout)
    assert_every_call_fails_fast(kv, on_victim[:5], bound=5 * timeout)
    # The surviving masters still answer for their slots (a failed batch may have reached them).
    kv.set_many({k: b"again" for k in elsewhere})
    assert kv.get_many(elsewhere) == [b"again"] * len(elsewhere)
    assert RedisClusterKeyValue(cluster.url, timeout=timeout).get(elsewhere[0]) == b"again"
    kv.close()


def test_a_hung_node_times_out_instead_of_hanging(start_redis_cluster) -> None:
    cluster = start_redis_cluster()
    timeout = 0.3
    kv = RedisClusterKeyValue(cluster.url, timeout=timeout)
    _, elsewhere = split_by_victim(kv, cluster)
    kv.set_many({k: k for k in KEYS})
    pid = cluster.nodes[1].process.pid
    os.kill(pid, signal.SIGSTOP)  # accepts nothing, answers nothing: a hung host
    try:
        # redis-py's own cluster pipeline retried each failed slot in turn: ~200 timeouts for KEYS.
        # The regression costs ~200 timeouts (a minute); 20 timeouts leaves room for a loaded machine.
        assert_every_call_fails_fast(kv, KEYS, bound=20 * timeout)
        kv.set_many({k: k for k in elsewhere})
        assert kv.get_many(elsewhere) == elsewhere
    finally:
        os.kill(pid, signal.SIGCONT)
    cluster.wait_ok()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            kv.set_many({k: k for k in KEYS})
            assert kv.get_many(KEYS) == KEYS  # the node answers again
            break
        except ServiceUnavailable:
            time.sleep(0.05)
    else:
        pytest.fail("the cluster did not answer again after the node resumed")
    kv.close()
