"""The checkpoint contract, run on every backend: SQLite (embedded), the REAL PostgreSQL and Redis.

Each test makes its stores as separate processes would (separate connections) and uses a unique
processor name, so runs side by side on the shared services do not collide.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

import pytest

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams.checkpoint import Checkpoints, CheckpointStore, open_checkpoints
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import decode_value
from mlscale.streams.processor import StreamProcessor


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def stores(request, tmp_path):
    """A function making checkpoint stores on one backend that share their data; and a unique name."""
    kind = request.param
    spec = {
        "sqlite": str(tmp_path / "ckpt.db"),
        "postgres": request.getfixturevalue("postgres_dsn") if kind == "postgres" else "",
        "redis": f"{request.getfixturevalue('redis_url')}?prefix=test:ckpt:{uuid.uuid4().hex[:8]}:"
        if kind == "redis"
        else "",
    }[kind]
    made: list[Checkpoints] = []

    def make() -> Checkpoints:
        store = open_checkpoints(spec)
        made.append(store)
        return store

    make.kind = kind
    make.name = f"g{uuid.uuid4().hex[:10]}/orders"
    yield make
    cleanup = make()
    cleanup.forget(make.name)
    for store in made:
        store.close()


def test_a_new_partition_starts_before_the_first_offset_and_each_acquire_bumps_the_epoch(stores):
    a, b = stores(), stores()
    e1, off, blobs = a.acquire(stores.name, 0)
    assert (off, blobs) == (-1, {})
    e2, _, _ = b.acquire(stores.name, 0)
    e3, _, _ = a.acquire(stores.name, 0)
    assert e1 < e2 < e3
    assert a.epochs(stores.name) == b.epochs(stores.name) == {0: e3}
    assert b.offsets(stores.name) == {0: -1}


def test_a_commit_is_read_back_by_the_next_owner_with_every_blob(stores):
    a, b = stores(), stores()
    epoch, _, _ = a.acquire(stores.name, 3)
    binary = bytes(range(256)) * 4000  # NULs and every byte value, 1 MB
    big_offset = (1_764_000_000_000 << 20) | 17  # a Redis Streams offset: above 2^53
    assert a.commit(stores.name, {3: (epoch, big_offset, {"spend": binary, "spend#dedup": b"\x00"})}) == []
    # a later commit that names one blob leaves the other as it was
    assert a.commit(stores.name, {3: (epoch, big_offset + 1, {"spend": b"v2"})}) == []
    taken, off, blobs = b.acquire(stores.name, 3)
    assert taken > epoch and off == big_offset + 1
    assert blobs == {"spend": b"v2", "spend#dedup": b"\x00"}
    assert b.offsets(stores.name) == {3: big_offset + 1}


def test_a_zombie_commit_after_a_takeover_writes_nothing_while_its_other_partitions_commit(stores):
    zombie, owner = stores(), stores()
    old0, _, _ = zombie.acquire(stores.name, 0)
    old1, _, _ = zombie.acquire(stores.name, 1)
    assert zombie.commit(stores.name, {0: (old0, 10, {"f": b"zombie-10"})}) == []
    new0, _, _ = owner.acquire(stores.name, 0)  # the zombie's membership lapsed; partition 0 moved
    fenced = zombie.commit(stores.name, {0: (old0, 99, {"f": b"zombie-99"}), 1: (old1, 5, {"f": b"one"})})
    assert fenced == [0]
    assert owner.offsets(stores.name) == {0: 10, 1: 5}
    assert owner.epochs(stores.name) == {0: new0, 1: old1}
    _, off, blobs = owner.acquire(stores.name, 0)
    assert (off, blobs) == (10, {"f": b"zombie-10"})  # what was committed before the takeover, no more


def test_a_commit_for_a_partition_never_acquired_is_fenced(stores):
    store = stores()
    assert store.commit(stores.name, {5: (123, 7, {"f": b"x"})}) == [5]
    assert store.offsets(stores.name) == {}


def test_concurrent_owners_never_share_an_epoch_and_only_the_last_one_commits(stores):
    # Four processes race for one partition, 15 takeovers each: every acquire is atomic.
    handed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def race(store: Checkpoints) -> None:
        try:
            for _ in range(15):
                epoch, _, _ = store.acquire(stores.name, 0)
                with lock:
                    handed.append(epoch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    racers = [threading.Thread(target=race, args=(stores(),)) for _ in range(4)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(timeout=60)
    assert not errors and len(handed) == 60
    assert max(Counter(handed).values()) == 1, "two owners were handed the same epoch"
    store = stores()
    last = max(handed)
    assert store.epochs(stores.name) == {0: last}
    stale = random.Random(1).choice([e for e in handed if e != last])
    assert store.commit(stores.name, {0: (stale, 1, {})}) == [0]
    assert store.commit(stores.name, {0: (last, 2, {})}) == []
    assert store.offsets(stores.name) == {0: 2}


def test_forget_removes_every_partition_of_a_name_and_no_other(stores):
    store = stores()
    other = f"{stores.name}-other"
    try:
        for p in range(3):
            epoch, _, _ = store.acquire(stores.name, p)
            store.commit(stores.name, {p: (epoch, p, {"f": b"s"})})
        epoch, _, _ = store.acquire(other, 0)
        store.forget(stores.name)
        assert store.epochs(stores.name) == {} and store.offsets(stores.name) == {}
        assert store.acquire(stores.name, 1)[1:] == (-1, {})
        assert store.epochs(other) == {0: epoch}
    finally:
        store.forget(other)


def test_a_processor_killed_mid_run_is_finished_by_another_through_the_store_exactly_once(stores, tmp_path):
    # Retries (same id, same event time) straddle the kill: dedup state lives in the checkpoint.
    group, topic = stores.name.split("/")
    feature = WindowedFeature(
        name="spend", source=topic, entity_key="user", size="10s", aggregations=["count", "sum(amount)"],
        dedup_key="id",
    )  # fmt: skip
    rng = random.Random(3)
    events = [
        {"id": i, "user": f"u{rng.randrange(12)}", "ts": 1_700_000_000 + i * 0.02, "amount": float(rng.randrange(50))}
        for i in range(1500)
    ]
    for e in rng.sample(events[:1400], 40):
        events.insert(events.index(e) + rng.randrange(5, 60), dict(e))
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=3, key_fields={topic: "user"})
    broker.append(topic, events)
    kv = MemoryKeyValue()
    first = StreamProcessor(broker, [feature], kv, stores(), group=group, consumer="a", batch_size=100,
                            checkpoint_interval=0.0)  # fmt: skip
    for _ in range(6):  # some batches, each checkpointed; then it dies (no final checkpoint, no leave)
        first.step(timeout=0.2)
    assert sum(first.checkpoints.offsets(stores.name).values()) > 0
    # a batch processed but never checkpointed: the next owner must replay it, not lose it
    first.checkpoint_interval = 3600
    first.step(timeout=0.2)
    broker.leave(topic, group, "a")
    second = StreamProcessor(broker, [feature], kv, stores(), group=group, consumer="b", batch_size=100)
    second.run(idle_exit=0.3)
    expected: dict[tuple[str, int], list[float]] = {}
    for e in {e["id"]: e for e in events}.values():
        start = int(e["ts"] * 1000) // 10_000 * 10_000
        expected.setdefault((e["user"], start), []).append(e["amount"])
    f = feature.compile()
    for (user, start), amounts in expected.items():
        got = decode_value(kv.get(f.online_key(user, start)))
        assert (got["count"], got["sum_amount"]) == (len(amounts), sum(amounts)), (user, start)
    assert sum(decode_value(kv.get(k))["count"] for k in kv.scan(b"spend|")) == 1500


def test_open_checkpoints_names_what_is_wrong():
    with pytest.raises(ConfigError, match=r"mysql://db.*expected postgresql"):
        open_checkpoints("mysql://db/x")
    with pytest.raises(ConfigError, match="needs a path"):
        open_checkpoints("sqlite:")
    assert isinstance(open_checkpoints(":memory:"), CheckpointStore)


def test_an_unreachable_postgres_is_a_clear_service_error():
    # Port 1 refuses at once: the error names the store instead of a bare driver message.
    with pytest.raises(ServiceUnavailable, match=r"checkpoint store PostgreSQL 127\.0\.0\.1:1"):
        open_checkpoints("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_the_stream_settings_take_a_shared_checkpoint_url(tmp_path, postgres_dsn):
    from mlscale.config import load_settings

    (tmp_path / "mlscale.toml").write_text(f'[streams]\ncheckpoint = "{postgres_dsn}"\n')
    settings = load_settings(tmp_path / "mlscale.toml")
    assert settings.streams.checkpoint == postgres_dsn
    with open_checkpoints(settings.streams.checkpoint, root=settings.root) as store:
        assert type(store).__name__ == "PostgresCheckpoints"


def test_stream_run_keeps_its_checkpoints_in_the_configured_postgres(tmp_path, postgres_dsn):
    # Through the real CLI: [streams] checkpoint names PostgreSQL, so no checkpoint folder appears
    # and a second run (another host, say) resumes from the rows the first committed.
    import subprocess
    import sys

    group = f"g{uuid.uuid4().hex[:10]}"
    (tmp_path / "mlscale.toml").write_text(
        f'[streams]\nbroker = "embedded:log.db"\nonline = "sqlite:///online.db"\npartitions = 2\n'
        f'group = "{group}"\ncheckpoint = "{postgres_dsn}"\n'
        '[[streams.features]]\nname = "spend"\nsource = "orders"\nentity_key = "user"\nsize = "10s"\n'
        'dedup_key = "id"\naggregations = ["count"]\n'
    )
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=2, key_fields={"orders": "user"})
    run = [sys.executable, "-m", "mlscale", "stream", "run", "--idle-exit", "0.3", "--quiet"]
    try:
        broker.append("orders", [{"id": i, "user": f"u{i % 3}", "ts": 1000 + i} for i in range(8)])
        first = subprocess.run(run, cwd=tmp_path, capture_output=True, timeout=120)
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        assert not (tmp_path / "streams" / "checkpoints").exists()
        with open_checkpoints(postgres_dsn) as store:
            assert sum(o + 1 for o in store.offsets(f"{group}/orders").values()) == 8
        broker.append("orders", [{"id": 3, "user": "u0", "ts": 1003}, {"id": 8, "user": "u2", "ts": 1008}])
        second = subprocess.run(run, cwd=tmp_path, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        assert b"processed 2 events" in second.stderr and b"1 duplicates dropped" in second.stderr
    finally:
        broker.close()
        with open_checkpoints(postgres_dsn) as store:
            store.forget(f"{group}/orders")


def test_a_host_cut_off_mid_commit_does_not_block_the_takeover(postgres_dsn):
    """A zombie whose commit transaction holds the partition's row lock and then goes silent (its
    link cut) is ended by the server after ``zombie_timeout``: the next owner's acquire goes through
    and the zombie's commit is lost, not applied."""
    from mlscale.streams.checkpoint_postgres import PostgresCheckpoints

    name = f"zombie-{uuid.uuid4().hex[:8]}"
    zombie, owner = PostgresCheckpoints(postgres_dsn, zombie_timeout=1.0), PostgresCheckpoints(postgres_dsn)
    try:
        old, _, _ = zombie.acquire(name, 0)
        conn = zombie._conn  # the zombie's own session, as its commit left it: lock held, then silence
        conn.execute("BEGIN")
        conn.execute("SELECT epoch FROM mlscale_stream_partitions WHERE name = %s AND part = 0 FOR UPDATE", (name,))
        taken = {}
        taker = threading.Thread(target=lambda: taken.update(epoch=owner.acquire(name, 0)[0]), daemon=True)
        taker.start()
        taker.join(timeout=20)
        assert "epoch" in taken, "the takeover waited on the silent zombie's lock"
        assert taken["epoch"] > old
        # The zombie comes back: its session is gone (a clear service error, then a new session),
        # and its commit with the old epoch is fenced.
        with pytest.raises(ServiceUnavailable, match="idle-in-transaction"):
            zombie.commit(name, {0: (old, 99, {"f": b"zombie"})})
        assert zombie.commit(name, {0: (old, 99, {"f": b"zombie"})}) == [0]
        assert owner.offsets(name) == {0: -1}
    finally:
        owner.forget(name)
        owner.close()
        zombie.close()
