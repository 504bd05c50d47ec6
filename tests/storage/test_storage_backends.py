"""Every backend keeps the KeyValue contract: order, misses, TTL, delete counts, prefix scans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.storage import KeyValue, MemoryKeyValue, open_store
from mlscale.storage.redis_store import RedisClusterKeyValue, RedisKeyValue
from mlscale.storage.sharded import ShardedKeyValue
from mlscale.storage.sqlite import SQLiteKeyValue, prefix_upper_bound


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster", "sharded"])
def store(request, tmp_path: Path, prefix: bytes) -> Iterator[KeyValue]:
    kind = request.param
    if kind == "memory":
        kv: KeyValue = MemoryKeyValue()
    elif kind == "sqlite":
        kv = SQLiteKeyValue(tmp_path / "kv.db")
    elif kind == "redis":
        kv = RedisKeyValue(request.getfixturevalue("redis_url"), prefix=prefix)
    elif kind == "redis-cluster":
        kv = RedisClusterKeyValue(request.getfixturevalue("redis_cluster_url"), prefix=prefix)
    else:
        kv = ShardedKeyValue({f"s{i}": SQLiteKeyValue(tmp_path / f"s{i}.db") for i in range(3)}, replicas=2)
    yield kv
    kv.delete(list(kv.scan()))
    kv.close()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_get_many_returns_values_in_order_with_none_for_misses(store: KeyValue) -> None:
    store.set_many({b"a": b"1", b"b": b"\x00\xff", b"c": b""})
    assert store.get_many([b"c", b"missing", b"a", b"b"]) == [b"", None, b"1", b"\x00\xff"]
    assert store.get_many([]) == []


def test_set_overwrites_and_delete_counts_only_existing_keys(store: KeyValue) -> None:
    store.set_many({b"k1": b"old", b"k2": b"x"})
    store.set(b"k1", b"new")
    assert store.get(b"k1") == b"new"
    assert store.delete([b"k1", b"k2", b"nope"]) == 2
    assert store.get_many([b"k1", b"k2"]) == [None, None]


def test_values_expire_after_their_ttl(store: KeyValue) -> None:
    store.set_many({b"short": b"1"}, ttl=0.2)
    store.set_many({b"long": b"2"}, ttl=60)
    assert store.get(b"short") == b"1"
    remaining = store.ttl_many([b"long"])[0]
    assert remaining is not None and 50 < remaining <= 60
    assert wait_until(lambda: store.get(b"short") is None)
    assert store.get(b"long") == b"2"
    assert b"short" not in set(store.scan())


def test_scan_returns_live_keys_with_the_prefix(store: KeyValue) -> None:
    store.set_many({b"user:1": b"a", b"user:2": b"b", b"item:1": b"c", b"user*[": b"glob"})
    assert set(store.scan(b"user:")) == {b"user:1", b"user:2"}
    assert set(store.scan(b"user*")) == {b"user*["}
    assert set(store.scan()) == {b"user:1", b"user:2", b"item:1", b"user*["}


def test_async_face_matches_the_blocking_calls(store: KeyValue) -> None:
    import asyncio

    async def roundtrip() -> list[bytes | None]:
        await store.aset_many({b"x": b"1", b"y": b"2"}, ttl=30)
        got = await store.aget_many([b"x", b"zz", b"y"])
        assert await store.adelete([b"x"]) == 1
        return got

    assert asyncio.run(roundtrip()) == [b"1", None, b"2"]
    assert store.get(b"x") is None


def test_prefix_upper_bound_orders_after_every_extension() -> None:
    assert prefix_upper_bound(b"ab") == b"ac"
    assert prefix_upper_bound(b"a\xff") == b"b"
    assert prefix_upper_bound(b"\xff\xff") is None


def test_sqlite_is_safe_for_several_writing_processes(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    script = (
        "import sys; from mlscale.storage.sqlite import SQLiteKeyValue\n"
        "kv = SQLiteKeyValue(sys.argv[1]); w = sys.argv[2]\n"
        "for b in range(40):\n"
        "    kv.set_many({f'{w}-{b}-{i}'.encode(): w.encode() for i in range(25)})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db), f"w{n}"]) for n in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    kv = SQLiteKeyValue(db)
    keys = list(kv.scan())
    assert len(keys) == 3 * 40 * 25
    assert kv.get(b"w2-39-24") == b"w2"


def test_sqlite_on_an_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ServiceUnavailable, match="SQLite store"):
        SQLiteKeyValue(blocker / "kv.db")


def test_redis_that_refuses_connections_fails_fast_with_service_unavailable(start_redis) -> None:
    server = start_redis()
    kv = RedisKeyValue(server.url, timeout=0.5)
    kv.set(b"k", b"v")
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{server.port}"):
        kv.get(b"k")
    assert time.monotonic() - started < 2


def test_stalled_redis_times_out_instead_of_hanging(start_redis) -> None:
    server = start_redis()
    kv = RedisKeyValue(server.url, timeout=0.3)
    kv.set(b"k", b"v")
    os.kill(server.process.pid, signal.SIGSTOP)  # accepts nothing, answers nothing: a hung host
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            kv.get_many([b"k"])
        with pytest.raises(ServiceUnavailable):
            kv.set_many({b"k2": b"v"})
        assert time.monotonic() - started < 3
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert wait_until(lambda: kv.ping())


def test_redis_cluster_against_a_plain_or_dead_server_fails_at_construction(start_redis, redis_url: str) -> None:
    # Misuse is a clear error, not a hang (a real cluster: test_storage_redis_cluster.py).
    with pytest.raises(ServiceUnavailable, match="Cluster"):
        RedisClusterKeyValue(redis_url.replace("redis://", "redis+cluster://"), timeout=0.5)
    server = start_redis()
    server.stop()
    with pytest.raises(ServiceUnavailable, match="Cluster"):
        open_store(server.url.replace("redis://", "redis+cluster://"), timeout=0.5)


def test_open_store_builds_each_backend_from_its_url(tmp_path: Path, redis_url: str) -> None:
    assert isinstance(open_store("memory://"), MemoryKeyValue)
    kv = open_store("sqlite:///data/kv.db", root=tmp_path)
    assert isinstance(kv, SQLiteKeyValue) and (tmp_path / "data" / "kv.db").exists()
    assert isinstance(open_store(f"sqlite:///{tmp_path}/abs.db"), SQLiteKeyValue)
    assert isinstance(open_store(redis_url), RedisKeyValue)
    sharded = open_store(["a=memory://", "b=memory://", "memory://?x"], replicas=2)
    assert isinstance(sharded, ShardedKeyValue) and sharded.ring.names == ["a", "b", "memory://?x"]
    assert isinstance(open_store("memory://,b=memory://"), ShardedKeyValue)


def test_open_store_rejects_bad_specs_with_a_message() -> None:
    with pytest.raises(ConfigError, match="scheme must be one of"):
        open_store("mongodb://host/db")
    with pytest.raises(ConfigError, match="empty store spec"):
        open_store(" , ")
    with pytest.raises(ConfigError, match="twice"):
        open_store("a=memory://,a=memory://")
    with pytest.raises(ConfigError, match="bad Redis URL"):
        open_store("redis://host:notaport/0")


def test_open_store_from_project_settings_resolves_paths_against_the_project(tmp_path: Path) -> None:
    from mlscale.config import parse_settings

    settings = parse_settings(
        {"storage": {"shards": ["a=sqlite:///data/a.db", "b=sqlite:///data/b.db"], "replicas": 2}}, root=tmp_path
    )
    store = open_store(settings.storage, root=settings.root)
    assert isinstance(store, ShardedKeyValue) and store.replicas == 2
    store.set_many({b"k": b"v"})
    assert (tmp_path / "data" / "a.db").exists() and (tmp_path / "data" / "b.db").exists()
    assert isinstance(open_store(parse_settings({}, root=tmp_path).storage, root=tmp_path), SQLiteKeyValue)
    assert (tmp_path / ".mlscale" / "store.db").exists()
    with pytest.raises(ConfigError, match="storage"):
        parse_settings({"storage": {"replica": 2}})
