"""HTTP ingestion glue and the `mlscale stream` commands, end to end on the embedded log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from prometheus_client import REGISTRY

from mlscale.errors import ConfigError, InvalidInput
from mlscale.storage import open_store
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.ingest import ingest_events
from mlscale.streams.online import decode_value


def test_ingest_accepts_a_list_or_an_events_object_and_returns_offsets():
    broker = EmbeddedBroker(":memory:", partitions=2, key_fields={"clicks": "user"})
    first = ingest_events(broker, "clicks", b'[{"user": "a", "ts": 1}, {"user": "b", "ts": 2}]')
    second = ingest_events(broker, "clicks", {"events": [{"user": "a", "ts": 3}]})
    assert first["accepted"] == 2 and second["accepted"] == 1
    assert sum(broker.end_offsets("clicks").values()) + len(broker.end_offsets("clicks")) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{oops", "not valid JSON"),
        (b'{"data": []}', "expected a JSON list"),
        (b"[]", "no events"),
        (b'[{"user": "a"}, 3]', "event 1"),
        (b'"text"', "expected a JSON list"),
    ],
)
def test_ingest_refuses_bad_bodies_and_appends_nothing(body, message):
    broker = EmbeddedBroker(":memory:", partitions=1)
    with pytest.raises(InvalidInput, match=message):
        ingest_events(broker, "clicks", body)
    assert broker.end_offsets("clicks") == {}


def test_ingest_refuses_a_bad_topic_name():
    broker = EmbeddedBroker(":memory:", partitions=1)
    with pytest.raises(InvalidInput, match="topic"):
        ingest_events(broker, "../etc", b'[{"a": 1}]')


def test_a_definition_with_a_bad_window_is_a_config_error():
    with pytest.raises(ConfigError, match="slide"):
        WindowedFeature(name="x", source="s", entity_key="u", window="hopping", size="1m", slide="7s").compile()
    with pytest.raises(ConfigError, match="aggregation"):
        WindowedFeature(name="x", source="s", entity_key="u", aggregations=["median(x)"]).compile()


def _mlscale(*args, cwd, input=None):
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlscale"), *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        timeout=60,
    )


def test_cli_produce_run_and_backfill_give_the_same_online_values(tmp_path):
    (tmp_path / "mlscale.toml").write_text(
        '[streams]\nbroker = "embedded:log.db"\nonline = "sqlite:///online.db"\npartitions = 3\n'
        "[[streams.features]]\n"
        'name = "spend"\nsource = "orders"\nentity_key = "user"\nsize = "10s"\nallowed_lateness = "1h"\n'
        'aggregations = ["count", "sum(amount)", "max(amount)"]\n'
    )
    events = [{"user": f"u{i % 5}", "ts": 1000 + i, "amount": float(i)} for i in range(60)]
    lines = b"\n".join(msgspec.json.encode(e) for e in events)
    produced = _mlscale("stream", "produce", "orders", cwd=tmp_path, input=lines)
    assert produced.returncode == 0, produced.stderr
    bad = _mlscale("stream", "produce", "orders", cwd=tmp_path, input=b"[1, 2]")
    assert bad.returncode == 2 and b"not a JSON object" in bad.stderr
    ran = _mlscale("stream", "run", "--idle-exit", "0.5", "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert b"processed 60 events, 0 dead letters" in ran.stderr
    lag = _mlscale("stream", "lag", cwd=tmp_path)
    assert lag.stdout.strip() == b"orders\t0"

    archived = _mlscale("stream", "archive", "orders", "--out", "history", cwd=tmp_path)
    assert archived.returncode == 0 and b"archived 60 records" in archived.stdout, archived.stderr
    again = _mlscale("stream", "archive", "orders", "--out", "history", cwd=tmp_path)
    assert b"archived 0 records" in again.stdout  # resumes after its committed offsets
    filled = _mlscale("stream", "backfill", "--events", "history", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "offline" / "spend" / "backfill.parquet").to_pylist()
    online = open_store("sqlite:///online.db", root=tmp_path)
    assert len(rows) == len(list(online.scan(b"spend|")))
    for row in rows:
        got = decode_value(online.get(f"spend|{row['user']}|{row['window_start']}".encode()))
        assert got["count"] == row["count"] and got["sum_amount"] == row["sum_amount"]
        assert got["max_amount"] == row["max_amount"]
    unknown = _mlscale("stream", "backfill", "--events", "history", "--feature", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and b"no such feature" in unknown.stderr


def test_processor_metrics_count_events_and_dead_letters():
    from mlscale.storage.memory import MemoryKeyValue
    from mlscale.streams.processor import StreamProcessor

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    broker = EmbeddedBroker(":memory:", partitions=1)
    feature = WindowedFeature(name="m", source="metered", entity_key="user", aggregations=["count"])
    before = value("mlscale_stream_events_total", topic="metered", outcome="processed")
    dead_before = value("mlscale_stream_dead_letters_total", topic="metered", reason="malformed")
    broker.append("metered", [{"user": "a", "ts": 1}, {"user": "a", "ts": 2}, b"nope"])
    proc = StreamProcessor(broker, [feature], MemoryKeyValue(), ":memory:")
    proc.run(idle_exit=0.0)
    assert value("mlscale_stream_events_total", topic="metered", outcome="processed") - before == 3
    assert value("mlscale_stream_dead_letters_total", topic="metered", reason="malformed") - dead_before == 1
    proc.lag()
    assert value("mlscale_stream_lag", topic="metered", group="mlscale-features") == 0
