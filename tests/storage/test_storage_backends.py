"""Every backend keeps the KeyValue contract: order, misses, TTL, delete counts, prefix scans."""

from __future__ import annotations

import asyncio
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


def _versioned(version: int, payload: bytes) -> bytes:
    """A value as versioned writers store it: the version (little-endian int64), then the payload."""
    return version.to_bytes(8, "little", signed=True) + payload


def test_set_many_if_newer_keeps_a_stored_value_with_a_greater_version(store: KeyValue) -> None:
    # 600 keys: more than one script call on Redis (256 keys each), and every shard of the sharded store
    keys = [b"v%d" % i for i in range(600)]
    store.set_many_if_newer({k: _versioned(5, b"five") for k in keys}, [5] * len(keys))
    store.set_many_if_newer({k: _versioned(3, b"three") for k in keys}, [3] * len(keys))
    assert set(store.get_many(keys)) == {_versioned(5, b"five")}
    # an equal version is the same writer writing again: it wins, as does a greater one
    store.set_many_if_newer({keys[0]: _versioned(5, b"again"), keys[1]: _versioned(6, b"six")}, [5, 6])
    assert store.get_many(keys[:3]) == [_versioned(5, b"again"), _versioned(6, b"six"), _versioned(5, b"five")]
    # one batch mixing a refused write, an accepted one and a new key
    store.set_many_if_newer(
        {keys[1]: _versioned(2, b"old"), keys[2]: _versioned(9, b"nine"), b"new": _versioned(-4, b"neg")},
        [2, 9, -4],
    )
    assert store.get_many([keys[1], keys[2], b"new"]) == [
        _versioned(6, b"six"),
        _versioned(9, b"nine"),
        _versioned(-4, b"neg"),
    ]


def test_set_many_if_newer_with_too_few_versions_is_refused_before_any_write(store: KeyValue) -> None:
    items = {b"a": _versioned(1, b"a"), b"b": _versioned(1, b"b")}
    with pytest.raises(ValueError, match="2 items but 1 versions"):
        store.set_many_if_newer(items, [1])
    assert store.get_many([b"a", b"b"]) == [None, None]


def test_set_many_if_newer_overwrites_an_expired_value_and_sets_the_ttl(store: KeyValue) -> None:
    store.set_many_if_newer({b"k": _versioned(10**12, b"newer")}, [10**12], ttl=0.05)
    time.sleep(0.15)
    store.set_many_if_newer({b"k": _versioned(1, b"older")}, [1], ttl=30)
    assert store.get(b"k") == _versioned(1, b"older")
    assert 0 < store.ttl_many([b"k"])[0] <= 30


def test_sqlite_files_made_before_versions_accept_conditional_writes(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID")
        conn.execute("INSERT INTO kv VALUES (?, ?, NULL)", (b"k", _versioned(50, b"before")))
    kv = SQLiteKeyValue(path)
    assert kv.get(b"k") == _versioned(50, b"before")
    # a row from before has no version: the first conditional write replaces it, later ones compare
    kv.set_many_if_newer({b"k": _versioned(7, b"after")}, [7])
    kv.set_many_if_newer({b"k": _versioned(6, b"stale")}, [6])
    assert kv.get(b"k") == _versioned(7, b"after")
    kv.close()


def test_set_many_if_newer_replaces_a_value_written_without_a_version(store: KeyValue) -> None:
    # JSON as stream values were stored before they carried a version (on Redis its first 8 bytes
    # read as 8.6e18: text, not a version); a conditional write replaces it.
    store.set_many({b"w": b'{"window_start":0,"count":3}'})
    store.set_many_if_newer({b"w": _versioned(2, b"{}")}, [2])
    assert store.get(b"w") == _versioned(2, b"{}")


def test_the_default_conditional_write_reads_versions_from_the_values() -> None:
    # What a KeyValue without its own (atomic) set_many_if_newer gets: read, compare, write.
    class PlainStore(MemoryKeyValue):
        set_many_if_newer = KeyValue.set_many_if_newer

    kv = PlainStore()
    kv.set_many({b"text": b'{"window_start":0}'})
    kv.set_many_if_newer({b"a": _versioned(5, b"five"), b"text": _versioned(1, b"one")}, [5, 1])
    kv.set_many_if_newer({b"a": _versioned(4, b"four"), b"b": _versioned(4, b"four")}, [4, 4])
    assert kv.get_many([b"a", b"b", b"text"]) == [_versioned(5, b"five"), _versioned(4, b"four"), _versioned(1, b"one")]


def test_redis_cluster_conditional_writes_on_a_one_node_cluster(tmp_path: Path) -> None:
    from mlscale.storage.localredis import free_port

    redis = pytest.importorskip("redis")
    port = free_port()
    # the cluster bus port is given too: by default it is port + 10000, beyond 65535 for high ports
    options = ["--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf"]
    options += ["--save", "", "--appendonly", "no"]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--dir", str(tmp_path), *options], stdout=subprocess.DEVNULL
    )
    try:
        plain = redis.Redis(port=port)
        assert wait_until(lambda: _pings(plain))
        plain.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        assert wait_until(lambda: b"cluster_state:ok" in plain.execute_command("CLUSTER", "INFO"))
        kv = RedisClusterKeyValue(f"redis+cluster://127.0.0.1:{port}")
        keys = [b"k%d" % i for i in range(300)]
        kv.set_many_if_newer({k: _versioned(5, b"five") for k in keys}, [5] * len(keys))
        kv.set_many_if_newer({k: _versioned(3, b"three") for k in keys}, [3] * len(keys), ttl=60)
        assert set(kv.get_many(keys)) == {_versioned(5, b"five")}
        plain.script_flush()  # a node that lost its scripts (a restart): loaded again, batch resent
        kv.set_many_if_newer({keys[0]: _versioned(6, b"six")}, [6], ttl=60)
        assert kv.get(keys[0]) == _versioned(6, b"six") and kv.ttl_many([keys[0]])[0] > 0
        kv.close()
    finally:
        server.terminate()
        server.wait(10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def test_redis_wait_refuses_a_write_no_replica_confirms(redis_url: str, prefix: bytes) -> None:
    # The local Redis has no replica: with wait=1 a write is not acknowledged (it may sit on the
    # primary alone, which a failover would lose); reads and wait=0 are unaffected. The cluster
    # case, with a replica promoted under load: tests/cluster/test_cluster_redis_failover.py.
    waiting = open_store(f"{redis_url}?wait=1&prefix={prefix.decode()}", timeout=0.4)
    plain = RedisKeyValue(redis_url, prefix=prefix)
    try:
        assert waiting.wait == 1 and waiting.prefix == prefix
        with pytest.raises(ServiceUnavailable, match="0 of the 1 replicas"):
            waiting.set_many({b"a": b"1"})
        with pytest.raises(ServiceUnavailable, match="0 of the 1 replicas"):
            asyncio.run(waiting.aset_many({b"b": b"1"}))
        assert waiting.get(b"a") == b"1"  # on the primary, but not acknowledged as safe
        plain.set_many({b"c": b"1"})
        assert plain.delete([b"a", b"b", b"c"]) == 3
        with pytest.raises(ConfigError, match="wait= must be"):
            RedisKeyValue(f"{redis_url}?wait=-1")
    finally:
        plain.delete([b"a", b"b", b"c"])
        waiting.close()
        plain.close()
