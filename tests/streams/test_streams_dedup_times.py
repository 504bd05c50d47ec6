"""Exactly-once per event: client retries dropped by ``dedup_key`` (also after a restart from the
checkpoint), and event times as RFC 3339 strings with offsets or epoch seconds / milliseconds;
checked against a brute-force oracle of distinct events and against the DuckDB backfill."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from prometheus_client import REGISTRY

from mlscale.errors import ConfigError
from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams.batch import compute, write_events
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import decode_value
from mlscale.streams.processor import StreamProcessor, dead_letter_topic

T0_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
SIZE_MS = 10_000
OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3))]


def _feature(**kw) -> WindowedFeature:
    return WindowedFeature(
        name=kw.pop("name", "spend"),
        source=kw.pop("source", "orders"),
        entity_key="user",
        size="10s",
        allowed_lateness=kw.pop("allowed_lateness", "1h"),
        aggregations=["count", "sum(amount)", "max(amount)"],
        **kw,
    )


def _as(ms: int, form: str, rng: random.Random):
    """One event time in a form producers really send (ms is exact in every form)."""
    if form == "s":
        return ms / 1000
    if form == "ms":
        return ms
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(rng.choice(OFFSETS))
    text = dt.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def _events(n: int, seed: int, forms=("s", "ms", "iso")) -> tuple[list[dict], list[int]]:
    """``n`` distinct events (disorder up to 3 s) with event times in mixed forms, then 1 in 30
    resent a few seconds of log later (same id and content): the log and the oracle's ms per id."""
    rng = random.Random(seed)
    true_ms = []
    events = []
    for i in range(n):
        ms = T0_MS + i * 50 - rng.randrange(3000)
        true_ms.append(ms)
        events.append(
            {
                "id": f"e{i}",
                "user": rng.choice(["ann", "bo", "чжан", "42"]),
                "ts": _as(ms, rng.choice(forms), rng),
                "amount": float(rng.randrange(100)),
            }
        )
    log = list(events)
    for e in rng.sample(events, n // 30):
        pos = log.index(e) + rng.randrange(20, 120)  # 1-6 s of event time later: "seconds apart"
        log.insert(min(pos, len(log)), dict(e))
    return log, true_ms


def _oracle(events: list[dict], true_ms: list[int]) -> dict[tuple[str, int], dict]:
    """Brute force over DISTINCT events: count, sum and max per (user, 10 s window)."""
    out: dict[tuple[str, int], dict] = defaultdict(lambda: {"count": 0, "sum_amount": 0.0, "max_amount": None})
    seen = set()
    for e in events:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        ms = true_ms[int(e["id"][1:])]
        w = out[(e["user"], ms - ms % SIZE_MS)]
        w["count"] += 1
        w["sum_amount"] += e["amount"]
        w["max_amount"] = e["amount"] if w["max_amount"] is None else max(w["max_amount"], e["amount"])
    return dict(out)


def _online(kv, feature) -> dict[tuple[str, int], dict]:
    f = feature.compile()
    out = {}
    for key in kv.scan(f.name.encode() + b"|"):
        value = decode_value(kv.get(key))
        entity = key.decode()[len(f.name) + 1 :].rsplit("|", 1)[0]
        out[(entity, value["window_start"])] = {k: value[k] for k in ("count", "sum_amount", "max_amount")}
    return out


def _dead_letters(broker, topic):
    out = []
    positions = dict.fromkeys(range(broker.partitions), -1)
    while batch := broker.fetch(dead_letter_topic(topic), positions, 10_000):
        for m in batch:
            positions[m.partition] = m.offset
            out.append(msgspec.json.decode(m.value))
    return out


def _metric(topic: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("mlscale_stream_events_total", {"topic": topic, "outcome": outcome}) or 0.0


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_retried_events_in_mixed_time_forms_count_once_like_the_brute_force_oracle(batch_size):
    log, true_ms = _events(1500, seed=batch_size)
    retries = len(log) - 1500
    bad = [
        b"{not json",
        {"user": "ann", "ts": "yesterday", "id": "x1", "amount": 1.0},
        {"user": "bo", "ts": T0_MS, "amount": 2.0},
        {"user": "ann", "ts": "2026-11-01", "id": "x2", "amount": 1.0},
    ]
    records: list = list(log)
    for i, b in enumerate(bad):
        records.insert(100 + 300 * i, b)
    topic = f"orders{batch_size}"
    feature = _feature(source=topic, dedup_key="id")
    broker = EmbeddedBroker(":memory:", partitions=3, key_fields={topic: "user"})
    broker.append(topic, records)
    kv = MemoryKeyValue()
    dup_before = _metric(topic, "duplicate")
    proc = StreamProcessor(broker, [feature], kv, ":memory:", batch_size=batch_size, checkpoint_interval=0)
    totals = defaultdict(int)

    def on_step(r):
        totals["dup"] += r.duplicates
        totals["failed"] += r.failed

    proc.run(idle_exit=0.0, on_step=on_step)
    assert _online(kv, feature) == _oracle(log, true_ms)
    assert totals["dup"] == retries and _metric(topic, "duplicate") - dup_before == retries
    dead = _dead_letters(broker, topic)
    assert len(dead) == len(bad) == totals["failed"] and {d["kind"] for d in dead} == {"malformed"}
    assert any("id" in d["reason"] for d in dead)  # the event without its dedup key


def test_without_dedup_key_every_delivery_counts():
    log, _ = _events(300, seed=3)
    feature = _feature()
    broker = EmbeddedBroker(":memory:", partitions=2, key_fields={"orders": "user"})
    broker.append("orders", log)
    kv = MemoryKeyValue()
    StreamProcessor(broker, [feature], kv, ":memory:").run(idle_exit=0.0)
    assert sum(v["count"] for v in _online(kv, feature).values()) == len(log) > 300


@pytest.mark.parametrize("form", ["iso", "ms"])
def test_the_backfill_drops_the_same_duplicates_and_reads_the_same_times(tmp_path, form):
    log, true_ms = _events(800, seed=11, forms=(form,))
    feature = _feature(dedup_key="id")
    broker = EmbeddedBroker(":memory:", partitions=3, key_fields={"orders": "user"})
    broker.append("orders", log)
    kv = MemoryKeyValue()
    StreamProcessor(broker, [feature], kv, ":memory:", batch_size=64, checkpoint_interval=0).run(idle_exit=0.0)
    write_events(log, tmp_path / "events.parquet")
    rows = compute(feature, tmp_path / "events.parquet").to_pylist()
    batch = {(r["e"], r["window_start"]): {k: r[k] for k in ("count", "sum_amount", "max_amount")} for r in rows}
    assert batch == _online(kv, feature) == _oracle(log, true_ms)


def test_dedup_state_is_in_the_checkpoint_a_new_processor_drops_retries_of_old_events(tmp_path):
    feature = _feature(dedup_key="id", allowed_lateness="5s")
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=2, key_fields={"orders": "user"})
    first = [{"id": i, "user": f"u{i % 3}", "ts": (T0_MS + i * 100) / 1000, "amount": 1.0} for i in range(100)]
    broker.append("orders", first)
    kv = MemoryKeyValue()
    a = StreamProcessor(broker, [feature], kv, tmp_path / "ck.db", consumer="a")
    a.run(idle_exit=0.0)
    a.close()
    # the client retries the last 20 events; another instance (same checkpoints) reads them
    broker.append("orders", first[-20:])
    b = StreamProcessor(broker, [feature], kv, tmp_path / "ck.db", consumer="b")
    dups = []
    b.run(idle_exit=0.0, on_step=lambda r: dups.append(r.duplicates))
    assert sum(dups) == 20
    assert sum(v["count"] for v in _online(kv, feature).values()) == 100


def test_dedup_memory_is_bounded_by_the_horizon_in_event_time():
    feature = _feature(dedup_key="id", allowed_lateness="0s", dedup_horizon="2s")
    broker = EmbeddedBroker(":memory:", partitions=1, key_fields={"orders": "user"})
    broker.append("orders", [{"id": i, "user": "u", "ts": T0_MS + i * 10, "amount": 1.0} for i in range(5000)])
    proc = StreamProcessor(broker, [feature], MemoryKeyValue(), ":memory:", batch_size=100)
    proc.run(idle_exit=0.0)
    seen = proc.parts["orders"][0].dedup["spend"].seen
    # 50 s of events, 100 per second: at most ~1.5 horizons (300 keys) are remembered
    assert 0 < len(seen) <= 300


def test_a_retry_beyond_the_horizon_is_a_new_event_in_stream_and_batch(tmp_path):
    feature = _feature(dedup_key="id", dedup_horizon="1s")
    events = [
        {"id": "a", "user": "u", "ts": T0_MS, "amount": 1.0},
        {"id": "a", "user": "u", "ts": T0_MS + 1000, "amount": 2.0},  # exactly the horizon: duplicate
        {"id": "a", "user": "u", "ts": T0_MS + 2001, "amount": 4.0},
    ]  # 1001 ms after the last: new
    broker = EmbeddedBroker(":memory:", partitions=1)
    broker.append("orders", events)
    kv = MemoryKeyValue()
    StreamProcessor(broker, [feature], kv, ":memory:").run(idle_exit=0.0)
    write_events(events, tmp_path / "e.parquet")
    (row,) = compute(feature, tmp_path / "e.parquet").to_pylist()
    assert row["count"] == 2 and row["sum_amount"] == 5.0
    assert _online(kv, feature)[("u", row["window_start"])]["sum_amount"] == 5.0


@pytest.mark.parametrize(
    ("ts", "unit", "expected_ms"),
    [
        ("2026-11-01T00:00:05.250Z", "auto", T0_MS + 5250),
        ("2026-11-01T05:30:05.250+05:30", "auto", T0_MS + 5250),
        ("2026-10-31T21:00:05.250-03:00", "s", T0_MS + 5250),
        ("2026-11-01T00:00:05.25", "auto", T0_MS + 5250),  # no offset: UTC
        ("2026-11-01 00:00:05.250Z", "auto", T0_MS + 5250),
        ((T0_MS + 5250) / 1000, "auto", T0_MS + 5250),
        (T0_MS + 5250, "auto", T0_MS + 5250),
        (T0_MS + 5250, "ms", T0_MS + 5250),
        ((T0_MS + 5250) / 1000, "s", T0_MS + 5250),
        (1000.5, "auto", 1_000_500),
        (1000.5, "ms", 1000),
    ],
)
def test_event_time_forms_land_in_the_same_window_in_stream_and_batch(tmp_path, ts, unit, expected_ms):
    feature = WindowedFeature(name="t", source="ev", entity_key="user", size="1s", event_time_unit=unit)
    broker = EmbeddedBroker(":memory:", partitions=1)
    broker.append("ev", [{"user": "u", "ts": ts}])
    kv = MemoryKeyValue()
    StreamProcessor(broker, [feature], kv, ":memory:").run(idle_exit=0.0)
    start = expected_ms - expected_ms % 1000
    assert decode_value(kv.get(feature.compile().online_key("u", start)))["count"] == 1
    write_events([{"user": "u", "ts": ts}], tmp_path / "e.parquet")
    assert [r["window_start"] for r in compute(feature, tmp_path / "e.parquet").to_pylist()] == [start]


def test_the_batch_ignores_strings_that_are_no_time_as_the_stream_dead_letters_them(tmp_path):
    feature = WindowedFeature(name="t", source="ev", entity_key="user", size="1s")
    events = [{"user": "u", "ts": s} for s in ("2026-11-01T00:00:05Z", "yesterday", "2026-11-01", "1793491205")]
    write_events(events, tmp_path / "e.parquet")
    assert [r["count"] for r in compute(feature, tmp_path / "e.parquet").to_pylist()] == [1]
    broker = EmbeddedBroker(":memory:", partitions=1)
    broker.append("ev", events)
    StreamProcessor(broker, [feature], MemoryKeyValue(), ":memory:").run(idle_exit=0.0)
    assert len(_dead_letters(broker, "ev")) == 3


def test_a_bad_dedup_horizon_is_a_config_error():
    with pytest.raises(ConfigError, match="dedup_horizon"):
        _feature(dedup_key="id", dedup_horizon="soon").compile()
    assert _feature(dedup_key="id").compile().dedup_horizon_ms == SIZE_MS + 3_600_000


def test_a_dedup_key_on_the_topic_applies_to_its_features_unless_they_name_their_own():
    from mlscale.streams.settings import StreamSettings

    settings = msgspec.toml.decode(
        b'dedup_keys = {orders = "id"}\n'
        b'[[features]]\nname = "a"\nsource = "orders"\nentity_key = "user"\n'
        b'[[features]]\nname = "b"\nsource = "orders"\nentity_key = "user"\ndedup_key = "event_id"\n'
        b'[[features]]\nname = "c"\nsource = "clicks"\nentity_key = "user"\n',
        type=StreamSettings,
    )
    assert [f.compile().dedup_key for f in settings.features] == ["id", "event_id", None]
