"""`mlscale stream produce` on files of any size with bad lines, `stream read`, `stream dead-letters`,
the loud warning of a run that is mostly dead letters, and the live table's lag equal to `stream lag`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pyarrow.parquet as pq

from mlscale.storage import open_store
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import window_rows

T0 = 1_793_491_200  # 2026-11-01T00:00:00Z

CONFIG = (
    '[streams]\nbroker = "embedded:log.db"\nonline = "sqlite:///online.db"\npartitions = 3\n'
    "[[streams.features]]\n"
    'name = "spend"\nsource = "orders"\nentity_key = "user"\nsize = "10s"\nallowed_lateness = "1h"\n'
    'dedup_key = "id"\naggregations = ["count", "sum(amount)", "max(amount)"]\n'
)


def _mlscale(*args, cwd, input=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "mlscale", *args], cwd=cwd, input=input, capture_output=True, timeout=timeout
    )


def _project(tmp_path: Path) -> Path:
    (tmp_path / "mlscale.toml").write_text(CONFIG)
    return tmp_path


def _total(tmp_path: Path, topic: str) -> int:
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=3)
    try:
        return sum(o + 1 for o in broker.end_offsets(topic).values())
    finally:
        broker.close()


def test_produce_streams_a_file_of_more_than_100000_events(tmp_path):
    _project(tmp_path)
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for i in range(120_005):
            fh.write(msgspec.json.encode({"id": i, "user": f"u{i % 97}", "ts": T0 + i / 1000, "amount": 1.0}) + b"\n")
    done = _mlscale("stream", "produce", "orders", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"appended 120005 events to orders"
    assert _total(tmp_path, "orders") == 120_005


def test_a_bad_line_is_named_and_every_line_before_it_is_appended_once(tmp_path):
    _project(tmp_path)
    lines = [msgspec.json.encode({"id": i, "user": f"u{i % 7}", "ts": T0 + i, "amount": 1.0}) for i in range(25_000)]
    lines.insert(12, b"")  # blank lines are skipped, and still counted as lines
    lines[21_000] = b'{"id": 21000, "user": "u1", "ts": '  # cut off: not JSON
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad = _mlscale("stream", "produce", "orders", str(path), cwd=tmp_path)
    assert bad.returncode == 2
    err = bad.stderr.decode()
    assert "line 21001" in err and "appended the 20999 events before it" in err and "tail -n +21001" in err
    assert _total(tmp_path, "orders") == 20_999
    # resuming from the named line after fixing it completes the topic: nothing lost, nothing twice
    lines[21_000] = msgspec.json.encode({"id": 20_999, "user": "u1", "ts": T0, "amount": 1.0})
    path.write_bytes(b"\n".join(lines[21_000:]) + b"\n")
    assert _mlscale("stream", "produce", "orders", str(path), cwd=tmp_path).returncode == 0
    assert _total(tmp_path, "orders") == 25_000
    array = _mlscale("stream", "produce", "orders", cwd=tmp_path, input=b'[{"a": 1}, 2]')
    assert array.returncode == 2 and b"event 1 is a int" in array.stderr and _total(tmp_path, "orders") == 25_000


def test_read_and_dead_letters_show_what_the_processor_wrote_and_set_aside(tmp_path):
    _project(tmp_path)
    events = [
        {"id": 1, "user": "ann", "ts": "2026-11-01T00:00:01.500Z", "amount": 3.0},
        {"id": 2, "user": "ann", "ts": "2026-11-01T05:30:04+05:30", "amount": 4.0},
        {"id": 1, "user": "ann", "ts": "2026-11-01T00:00:01.500Z", "amount": 3.0},  # a retry
        {"id": 3, "user": "bo|x", "ts": (T0 + 12) * 1000, "amount": 5.0},  # epoch ms
        {"id": 4, "user": "bo", "ts": T0 + 13.25, "amount": 6.0},  # epoch s
        {"id": 5, "user": "bo", "ts": "soon", "amount": 1.0},
    ]
    text = b"\n".join(msgspec.json.encode(e) for e in events) + b"\n{oops\n"
    # the bad last line stops produce; the six before it are in
    assert _mlscale("stream", "produce", "orders", cwd=tmp_path, input=text).returncode == 2
    ran = _mlscale("stream", "run", "--idle-exit", "0.3", "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert b"processed 6 events, 1 dead letters, 1 duplicates dropped" in ran.stderr

    shown = _mlscale("stream", "read", "spend", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert b"2026-11-01T00:00:00.000Z" in shown.stdout and b"bo|x" in shown.stdout
    out = tmp_path / "rows.parquet"
    assert _mlscale("stream", "read", "spend", "-o", str(out), cwd=tmp_path).returncode == 0
    rows = pq.read_table(out).to_pylist()
    assert rows == [
        {
            "user": "ann",
            "window_start": T0 * 1000,
            "window_end": T0 * 1000 + 10_000,
            "count": 2,
            "sum_amount": 7.0,
            "max_amount": 4.0,
        },
        {
            "user": "bo",
            "window_start": T0 * 1000 + 10_000,
            "window_end": T0 * 1000 + 20_000,
            "count": 1,
            "sum_amount": 6.0,
            "max_amount": 6.0,
        },
        {
            "user": "bo|x",
            "window_start": T0 * 1000 + 10_000,
            "window_end": T0 * 1000 + 20_000,
            "count": 1,
            "sum_amount": 5.0,
            "max_amount": 5.0,
        },
    ]
    one = tmp_path / "bo.jsonl"
    assert _mlscale("stream", "read", "spend", "--entity", "bo", "-o", str(one), cwd=tmp_path).returncode == 0
    assert [json.loads(x)["user"] for x in one.read_text().splitlines()] == ["bo"]
    unknown = _mlscale("stream", "read", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and b"no such feature" in unknown.stderr

    letters = _mlscale("stream", "dead-letters", "orders", cwd=tmp_path)
    assert letters.returncode == 0, letters.stderr
    assert b"1 dead letters (1 malformed)" in letters.stdout and b"soon" in letters.stdout
    dumped = tmp_path / "dead.jsonl"
    assert _mlscale("stream", "dead-letters", "orders", "-o", str(dumped), cwd=tmp_path).returncode == 0
    (letter,) = [json.loads(x) for x in dumped.read_text().splitlines()]
    assert letter["record"]["id"] == 5 and "ts" in letter["reason"] and letter["kind"] == "malformed"

    store = open_store("sqlite:///online.db", root=tmp_path)
    assert [r["user"] for r in window_rows(store, _spend_feature())] == ["ann", "bo", "bo|x"]
    store.close()


def _spend_feature():
    from mlscale.streams.definitions import WindowedFeature

    return WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="10s",
        aggregations=["count", "sum(amount)", "max(amount)"],
    )


def test_a_run_where_every_event_is_a_dead_letter_says_so_and_fails_with_idle_exit(tmp_path):
    (tmp_path / "mlscale.toml").write_text(CONFIG.replace('"1h"', '"1h"\nevent_time_unit = "s"'))
    events = [{"id": i, "user": "u", "ts": f"{T0 + i}", "amount": 1.0} for i in range(150)]  # numbers as text
    assert (
        _mlscale(
            "stream", "produce", "orders", cwd=tmp_path, input=b"\n".join(msgspec.json.encode(e) for e in events)
        ).returncode
        == 0
    )
    ran = _mlscale("stream", "run", "--idle-exit", "0.3", cwd=tmp_path)  # with the live table
    assert ran.returncode == 1
    err = ran.stderr.decode()
    assert "WARNING: 150 of 150 events (100%) were dead letters" in err
    assert "every one of the 150 events failed" in err
    assert err.count("WARNING") >= 3  # under the live table, in the log, in the summary
    quiet = _mlscale("stream", "run", "--idle-exit", "0.3", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0  # nothing new to process: not a failure


def test_the_live_table_shows_the_lag_that_stream_lag_reports(tmp_path):
    _project(tmp_path)
    events = [{"id": i, "user": f"u{i % 5}", "ts": T0 + i, "amount": 1.0} for i in range(500)]
    _mlscale("stream", "produce", "orders", cwd=tmp_path, input=b"\n".join(msgspec.json.encode(e) for e in events))
    ran = _mlscale("stream", "run", "--idle-exit", "0.3", cwd=tmp_path)  # with the live table
    assert ran.returncode == 0, ran.stderr
    lag = _mlscale("stream", "lag", cwd=tmp_path)
    assert lag.stdout.strip() == b"orders\t0"
    # the last table drawn (non-terminal: printed once at the end) and the summary say 0 too
    last_table = ran.stderr.decode().rsplit("mlscale stream run", 1)[1]
    row = next(line for line in last_table.splitlines() if "orders" in line and "│" in line)
    assert row.split("│")[-2].strip() == "0"
    assert b"lag orders=0" in ran.stderr
