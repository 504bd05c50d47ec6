"""The stream processor: same numbers as the DuckDB backfill, dead letters with reasons, exactly-once
under kills at random points, and takeover by another instance."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams.batch import compute, write_events
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import decode_value
from mlscale.streams.processor import StreamProcessor, dead_letter_topic

HERE = Path(__file__).parent
AGGS = ["count", "sum(amount)", "mean(amount)", "min(amount)", "max(amount)", "last(amount)", "distinct_count(item)"]


def _assert_online_equals_batch(feature, kv, events, folder):
    """Every window the backfill computes is in the online store with equal values, and no other."""
    write_events(events, folder / "events.parquet")
    f = feature.compile()
    rows = compute(f, folder / "events.parquet").to_pylist()
    expected = {f.online_key(r["e"], r["window_start"]): r for r in rows}
    got = {k: decode_value(kv.get(k)) for k in kv.scan(f.name.encode() + b"|")}
    assert set(got) == set(expected)
    for key, value in got.items():
        for name, v in value.items():
            assert v == expected[key][name], (key, name, v, expected[key][name])


def _dead_letters(broker, topic):
    out, group = [], f"inspect-{random.random()}"
    while batch := broker.read(dead_letter_topic(topic), group, "c", max_records=10_000, timeout=0.05):
        out.extend(msgspec.json.decode(m.value) for m in batch)
    return out


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 400),  # steps of 0.25 s: plenty of window boundaries and ties
        st.integers(-50, 50),
        st.sampled_from(["x", "y", "z"]),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=events_strategy,
    window=st.sampled_from(["tumbling", "hopping", "session"]),
    batch_size=st.integers(1, 50),
)
def test_stream_values_equal_the_duckdb_backfill_over_the_accepted_events(tmp_path, raw, window, batch_size):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    feature = WindowedFeature(
        name="f",
        source="ev",
        entity_key="user",
        window=window,
        size="10s",
        slide="2500ms",
        gap="3s",
        allowed_lateness="20s",
        aggregations=AGGS,
    )
    if window != "hopping":
        feature = msgspec.structs.replace(feature, slide=None)
    events = [
        {"id": i, "user": u, "ts": 1_700_000_000 + t / 4, "amount": float(a), "item": it}
        for i, (u, t, a, it) in enumerate(raw)
    ]
    broker = EmbeddedBroker(":memory:", partitions=3, key_fields={"ev": "user"})
    broker.append("ev", events)
    kv = MemoryKeyValue()
    proc = StreamProcessor(broker, [feature], kv, ":memory:", batch_size=batch_size, checkpoint_interval=0)
    proc.run(idle_exit=0.0)
    late = {d["record"]["id"] for d in _dead_letters(broker, "ev")}
    accepted = [e for e in events if e["id"] not in late]
    _assert_online_equals_batch(feature, kv, accepted, folder)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=events_strategy,
    retries=st.lists(st.tuples(st.integers(0, 119), st.integers(1, 15)), max_size=30),
    window=st.sampled_from(["tumbling", "hopping", "session"]),
    batch_size=st.integers(1, 50),
)
def test_with_dedup_key_retries_count_once_and_stream_equals_the_backfill(tmp_path, raw, retries, window, batch_size):
    """Retried events (same id, resent up to 15 records later) amid disorder and late events."""
    from mlscale.streams.broker import partition_for

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    feature = WindowedFeature(
        name="f",
        source="ev",
        entity_key="user",
        window=window,
        size="10s",
        slide="2500ms" if window == "hopping" else None,
        gap="3s",
        allowed_lateness="20s",
        aggregations=AGGS,
        dedup_key="id",
    )
    events = [
        {"id": i, "user": u, "ts": 1_700_000_000 + t / 4, "amount": float(a), "item": it}
        for i, (u, t, a, it) in enumerate(raw)
    ]
    log = list(events)
    for i, delay in retries:
        if i < len(events):
            log.insert(min(log.index(events[i]) + delay, len(log)), dict(events[i]))
    broker = EmbeddedBroker(":memory:", partitions=3, key_fields={"ev": "user"})
    offsets = broker.append("ev", log)
    kv = MemoryKeyValue()
    dups = []
    proc = StreamProcessor(broker, [feature], kv, ":memory:", batch_size=batch_size, checkpoint_interval=0)
    proc.run(idle_exit=0.0, on_step=lambda r: dups.append(r.duplicates))
    late = {(d["partition"], d["offset"]) for d in _dead_letters(broker, "ev")}
    accepted = [
        e for e, off in zip(log, offsets, strict=True) if (partition_for(e["user"].encode(), 3), off) not in late
    ]
    _assert_online_equals_batch(feature, kv, accepted, folder)
    assert sum(dups) == len(accepted) - len({e["id"] for e in accepted})


def test_late_and_malformed_records_reach_the_dead_letter_topic_with_a_reason():
    broker = EmbeddedBroker(":memory:", partitions=2, key_fields={"ev": "user"})
    feature = WindowedFeature(
        name="f",
        source="ev",
        entity_key="user",
        size="1m",
        allowed_lateness="10s",
        aggregations=["count", "sum(amount)"],
    )
    broker.append("ev", [{"user": "a", "ts": 1000.0, "amount": 1}, {"user": "a", "ts": 1100.0, "amount": 2}])
    broker.append(
        "ev",
        [
            {"user": "a", "ts": 1095.0, "amount": 3},  # 5 s late: within the allowed lateness, counted
            {"user": "a", "ts": 1080.0, "amount": 4},  # 20 s late: dead letter
            b"{not json",
            {"user": "a", "ts": 1101.0},  # no amount
            {"user": "a", "ts": "yesterday", "amount": 1},
        ],
        keys=["a"] * 5,
    )
    kv = MemoryKeyValue()
    StreamProcessor(broker, [feature], kv, ":memory:").run(idle_exit=0.0)
    dead = _dead_letters(broker, "ev")
    kinds = sorted(d["kind"] for d in dead)
    assert kinds == ["late", "malformed", "malformed", "malformed"]
    late = next(d for d in dead if d["kind"] == "late")
    assert late["record"]["amount"] == 4 and "watermark" in late["reason"]
    reasons = " ".join(d["reason"] for d in dead if d["kind"] == "malformed")
    assert "amount" in reasons and "ts" in reasons
    assert all({"topic", "partition", "offset", "feature"} <= set(d) for d in dead)
    # the window starting at 1080 s holds the on-time events 1100 and 1095 only
    value = decode_value(kv.get(feature.compile().online_key("a", 1_080_000)))
    assert value["count"] == 2 and value["sum_amount"] == 5.0


@pytest.mark.parametrize("backend", ["embedded", "redis", "nats"])
def test_a_processor_killed_at_random_points_neither_loses_nor_double_counts(tmp_path, backend, request):
    sys.path.insert(0, str(HERE))
    from kill_worker import FEATURES, FileKeyValue

    from mlscale.streams.connect import open_broker

    url = {
        "embedded": f"embedded:{tmp_path}/log.db",
        "redis": "redis_url",
        "nats": "nats_url",
    }[backend]
    if backend != "embedded":
        url = request.getfixturevalue(url)
    prefix = f"kill{uuid.uuid4().hex[:8]}" + (":" if backend == "redis" else "")
    rng = random.Random(7)
    broker = open_broker(url, partitions=4, key_fields={"orders": "user"}, prefix=prefix)
    events = [
        {
            "id": i,
            "user": f"u{rng.randrange(40)}",
            "ts": 1_700_000_000 + i * 0.05 - rng.random() * 2,
            "amount": float(rng.randrange(100)),
            "item": rng.randrange(5),
        }
        for i in range(3000)
    ]
    # client retries: 1 in 50 events sent again 1-5 s of log later (they straddle the kills)
    for e in rng.sample(events[:2900], 60):
        events.insert(events.index(e) + rng.randrange(20, 100), dict(e))
    broker.append("orders", events)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}

    def worker_cmd(idle: str) -> list[str]:
        return [sys.executable, str(HERE / "kill_worker.py"), str(tmp_path), idle, url, prefix]

    try:
        kills = 0
        for _ in range(5):
            worker = subprocess.Popen(worker_cmd("30"), stdout=subprocess.PIPE, env=env)
            assert worker.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.4))
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                kills += 1
            worker.wait()
        assert kills >= 3
        final = subprocess.run(worker_cmd("1.0"), env=env, capture_output=True, timeout=60)
        assert final.returncode == 0, final.stderr.decode()[-2000:]
        assert broker.lag("orders", "mlscale-features") == 0
        late = {d["record"]["id"] for d in _dead_letters(broker, "orders")}
        accepted = [e for e in events if e["id"] not in late]
        kv = FileKeyValue(str(tmp_path / "online.db"))
        for feature in FEATURES:
            _assert_online_equals_batch(feature, kv, accepted, tmp_path)
        # brute force: the counts add up to the DISTINCT accepted events, each retry dropped once
        counts = sum(decode_value(kv.get(k))["count"] for k in kv.scan(b"spend|"))
        assert counts == len({e["id"] for e in accepted}) == 3000 - len(late)
    finally:
        if hasattr(broker, "delete_namespace"):
            broker.delete_namespace()
        broker.close()


def test_a_second_processor_takes_over_the_partitions_of_a_dead_one(broker_factory, tmp_path):
    feature = WindowedFeature(
        name="g", source="events", entity_key="user", size="5s", aggregations=["count", "sum(amount)"]
    )
    make = lambda: broker_factory(partitions=4, key_fields={"events": "user"}, member_ttl=0.6)  # noqa: E731
    a_broker, b_broker = make(), make()
    events = [{"user": f"u{i % 13}", "ts": 1000 + i * 0.1, "amount": float(i % 7)} for i in range(800)]
    a_broker.append("events", events)
    kv = MemoryKeyValue()
    ckpt = tmp_path / "ckpt.db"
    a = StreamProcessor(a_broker, [feature], kv, ckpt, consumer="a", batch_size=50, checkpoint_interval=0.05)
    b = StreamProcessor(b_broker, [feature], kv, ckpt, consumer="b", batch_size=50, checkpoint_interval=0.05)
    # both run side by side for a while, until each works on its own share of the partitions
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        a.step(timeout=0.02)
        b.step(timeout=0.02)
        mine, theirs = set(a.parts["events"]), set(b.parts["events"])
        if mine and theirs and not mine & theirs:
            break
    assert mine and theirs and not mine & theirs and mine | theirs == set(range(4))
    # "a" dies without a word (no final checkpoint, no ack); "b" takes its partitions and finishes
    b.run(idle_exit=1.5, on_step=lambda r: print(sorted(b.parts["events"]), r))
    assert set(b.parts["events"]) == set(range(4)) or b_broker.lag("events", "mlscale-features") == 0
    _assert_online_equals_batch(feature, kv, events, tmp_path)
    assert b_broker.lag("events", "mlscale-features") == 0


class _FlakyStore(MemoryKeyValue):
    """An online store that goes down after a few writes (as a Redis that dies would)."""

    def __init__(self, writes_before_failure: int) -> None:
        super().__init__()
        self.left = writes_before_failure

    def set_many_if_newer(self, items, versions, ttl=None):
        if self.left <= 0:
            raise ConnectionError("online store is down")
        self.left -= 1
        super().set_many_if_newer(items, versions, ttl)


def test_a_store_failure_mid_run_loses_and_double_counts_nothing_after_restart(tmp_path):
    feature = WindowedFeature(
        name="h", source="ev", entity_key="user", size="10s", aggregations=["count", "sum(amount)"]
    )
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=2, key_fields={"ev": "user"})
    events = [{"user": f"u{i % 9}", "ts": 1000 + i * 0.05, "amount": float(i % 4)} for i in range(2000)]
    broker.append("ev", events)
    flaky = _FlakyStore(writes_before_failure=7)
    first = StreamProcessor(broker, [feature], flaky, tmp_path / "ck.db", batch_size=100, checkpoint_interval=0.0)
    with pytest.raises(ConnectionError):
        first.run(idle_exit=1.0)
    first.close()
    # the store comes back (with what was written before the failure); a new processor finishes
    healthy = MemoryKeyValue()
    healthy._data.update(flaky._data)
    StreamProcessor(broker, [feature], healthy, tmp_path / "ck.db", batch_size=100).run(idle_exit=0.2)
    _assert_online_equals_batch(feature, healthy, events, tmp_path)


def test_a_kill_between_checkpoint_and_group_commit_leaves_no_lag_behind(tmp_path):
    """The checkpoint is the truth; the group's offsets (what `mlscale stream lag` reads) follow it
    when a processor takes the partition, even if no record is left to process."""
    from mlscale.streams.checkpoint import CheckpointStore

    feature = WindowedFeature(name="k", source="ev", entity_key="user", size="10s")
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=1)
    broker.append("ev", [{"user": "a", "ts": 1000 + i} for i in range(10)])
    # a processor checkpointed offset 9, then died before committing the group's offsets
    store = CheckpointStore(tmp_path / "ck.db")
    epoch, _, _ = store.acquire("mlscale-features/ev", 0)
    store.commit("mlscale-features/ev", {0: (epoch, 9, {})})
    store.close()
    assert broker.lag("ev", "mlscale-features") == 10
    StreamProcessor(broker, [feature], MemoryKeyValue(), tmp_path / "ck.db").run(idle_exit=0.0)
    assert broker.lag("ev", "mlscale-features") == 0
