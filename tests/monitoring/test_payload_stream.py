"""The payload log over the broker: replicas publish to inference-log, one archiver writes Parquet that
the reader and the monitors read; the archive is exactly-once across a crash. Real Redis and the
embedded log; each test has its own key prefix or folder."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlscale.monitoring.payload_log import PayloadLog
from mlscale.monitoring.payload_reader import PayloadReader, to_numpy_columns
from mlscale.monitoring.payload_stream import (
    TOPIC,
    PayloadArchiver,
    PayloadPublisher,
    decode_record,
    encode_table,
)
from mlscale.streams.connect import open_broker


@pytest.fixture(params=["embedded", "redis"])
def brokers(request, tmp_path):
    """Makes brokers on one backend sharing one namespace (as replicas on several hosts would)."""
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), f"test:pl{uuid.uuid4().hex[:8]}:"
    else:
        url, prefix = f"embedded:{tmp_path}/log.db", None
    made = []

    def make():
        broker = open_broker(url, partitions=2, prefix=prefix)
        made.append(broker)
        return broker

    yield make
    cleanup = make()
    if hasattr(cleanup, "delete_namespace"):
        cleanup.delete_namespace()
    for broker in made:
        broker.close()


def _batch(rid: int, rows: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """A request of ``rows`` rows: ids ``rid..``, four float features, a city, and a score."""
    ids = np.arange(rid, rid + rows, dtype=np.int64)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    city = rng.choice(np.array(["ams", "ber", "par"], dtype=object), rows)
    return {"rid": ids, "x": x, "city": city}, {"score": x.sum(axis=1).astype(np.float64)}


def _replicas_send(brokers, directory, counts: list[int], model: str = "iris", first_id: int = 0) -> dict[int, tuple]:
    """Each replica records ``counts[i]`` requests of 1-5 rows; returns the oracle by row id."""
    rng = np.random.default_rng(5)
    oracle: dict[int, tuple] = {}
    rid = first_id
    for replica, requests in enumerate(counts):
        log = PayloadLog(directory / f"unused-{replica}", flush_interval=0.05, publish=PayloadPublisher(brokers()))
        for _ in range(requests):
            inputs, outputs = _batch(rid, int(rng.integers(1, 6)), rng)
            log.record(model, str(replica + 1), inputs, outputs)
            for j, r in enumerate(inputs["rid"].tolist()):
                oracle[r] = (*inputs["x"][j].tolist(), inputs["city"][j], float(outputs["score"][j]), str(replica + 1))
            rid += len(inputs["rid"])
        log.close()
        assert log.counts["logged"] == sum(1 for v in oracle.values() if v[-1] == str(replica + 1))
    return oracle


def _archived(directory, model: str = "iris") -> dict[int, tuple]:
    table = PayloadReader(directory).window(model, rows=10**9)
    cols = to_numpy_columns(table, drop=("model", "timestamp"))
    rows = {}
    for j, r in enumerate(cols["rid"].tolist()):
        assert r not in rows, f"row {r} archived twice"
        rows[r] = (
            *(float(cols[f"x_{k}"][j]) for k in range(4)),
            cols["city"][j],
            float(cols["out_score"][j]),
            cols["version"][j],
        )
    return rows


def test_one_archive_holds_the_rows_of_every_replica_exactly_once(brokers, tmp_path):
    archive = tmp_path / "payload-log"
    oracle = _replicas_send(brokers, tmp_path, [40, 25, 30])
    archiver = PayloadArchiver(brokers(), archive)
    assert archiver.archive() == len(oracle)
    assert _archived(archive) == oracle
    assert archiver.archive() == 0  # nothing new: nothing written again
    assert archiver.lag() == 0
    assert not (tmp_path / "unused-0").exists()  # publishing replicas write no files of their own


def test_a_crash_between_files_and_checkpoint_neither_loses_nor_duplicates_rows(brokers, tmp_path):
    class CrashAfterFiles(PayloadArchiver):
        def _save(self, positions):
            raise KeyboardInterrupt("killed after writing files, before the checkpoint")

    archive = tmp_path / "payload-log"
    # "iris" and "ranker" share a partition (keys hash alike): one fetched batch holds both models
    iris = _replicas_send(brokers, tmp_path, [30, 20], model="iris")
    ranker = _replicas_send(brokers, tmp_path, [10], model="ranker", first_id=5000)
    with pytest.raises(KeyboardInterrupt):
        CrashAfterFiles(brokers(), archive).archive()
    assert list(archive.glob("ranker/*.parquet")), "the crash came after both models' files were written"
    # more traffic comes before the archiver runs again, and it fetches in smaller batches: the
    # batch written before the crash is not the one written after it (its ranker file is stale)
    rng = np.random.default_rng(9)
    later = PayloadLog(tmp_path / "unused", flush_interval=0.05, publish=PayloadPublisher(brokers()))
    inputs, outputs = _batch(10_000, 3, rng)
    later.record("iris", "9", inputs, outputs)
    later.close()
    for j, r in enumerate(inputs["rid"].tolist()):
        iris[r] = (*inputs["x"][j].tolist(), inputs["city"][j], float(outputs["score"][j]), "9")
    PayloadArchiver(brokers(), archive, batch_size=2).archive()  # one record a partition
    assert _archived(archive, "iris") == iris
    assert _archived(archive, "ranker") == ranker


def test_models_go_to_their_own_folders_and_the_monitor_archives_from_settings(tmp_path):
    from mlscale.config import parse_settings
    from mlscale.monitoring.monitors import payload_archiver
    from mlscale.monitoring.payload_log import payload_log_from_settings

    settings = parse_settings(
        {"monitoring": {"payload_log": {"enabled": True, "directory": "payload-log", "broker": "embedded:log.db"}}},
        root=tmp_path,
    )
    rng = np.random.default_rng(3)
    sent: dict[str, int] = {"iris": 0, "wine": 0}
    for replica in range(2):  # two replicas configured alike
        log = payload_log_from_settings(settings.monitoring.payload_log, settings.resolve)
        for i in range(12):
            model = "iris" if i % 3 else "wine"
            inputs, outputs = _batch(1000 * replica + 10 * i, 2, rng)
            log.record(model, "1", inputs, outputs)
            sent[model] += 2
        log.close()
    assert (tmp_path / "log.db").exists()
    archiver = payload_archiver(settings.monitoring.payload_log, settings.resolve)
    assert archiver.archive() == sum(sent.values())
    archiver.close()
    archive = tmp_path / "payload-log"
    assert sorted(p.name for p in archive.iterdir() if not p.name.startswith(".")) == ["iris", "wine"]
    assert {m: len(_archived(archive, m)) for m in sent} == sent


def test_a_big_table_is_split_into_records_under_the_size_bound_and_joined_back():
    rows = 5000
    table = pa.table(
        {"model": ["m"] * rows, "v": np.arange(rows, dtype=np.float64), "s": [f"s{i}" for i in range(rows)]}
    )
    records = encode_table(table, max_record_bytes=16_000)
    assert len(records) > 5 and all(len(r) < 40_000 for r in records)
    assert pa.concat_tables([decode_record(r) for r in records]).equals(table)


def test_a_broker_that_is_down_drops_and_counts_rows_without_failing_a_request(tmp_path):
    dead = open_broker("redis://127.0.0.1:1/0?socket_connect_timeout=0.5", partitions=1, prefix="test:dead:")
    log = PayloadLog(tmp_path, flush_interval=3600, publish=PayloadPublisher(dead))
    rng = np.random.default_rng(1)
    log.record("iris", "1", *_batch(0, 4, rng))  # returns at once, as always
    log.flush()
    log.close()
    assert log.counts["logged"] == 0 and log.counts["dropped"] == 4


def test_a_record_that_is_no_arrow_stream_is_skipped_by_the_archiver(brokers, tmp_path):
    broker = brokers()
    broker.append(TOPIC, [b"not arrow"], keys=["iris"])
    rng = np.random.default_rng(2)
    log = PayloadLog(tmp_path / "unused", flush_interval=0.05, publish=PayloadPublisher(brokers()))
    log.record("iris", "1", *_batch(0, 3, rng))
    log.close()
    assert PayloadArchiver(brokers(), tmp_path / "archive").archive() == 3
    assert sum(pq.read_metadata(p).num_rows for p in (tmp_path / "archive").glob("iris/*.parquet")) == 3


def test_monitor_archive_command_writes_the_topic_or_says_what_is_missing(tmp_path, monkeypatch, capsys):
    import sys

    from mlscale.cli import main

    def mlscale(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["mlscale", *args])
        try:
            main()
        except SystemExit as exc:
            return exc.code or 0
        return 0

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlscale.toml").write_text("[monitoring.payload_log]\nenabled = true\n")
    assert mlscale("monitor", "archive", "--once") == 2
    assert "broker is not set" in capsys.readouterr().err
    (tmp_path / "mlscale.toml").write_text('[monitoring.payload_log]\nenabled = true\nbroker = "embedded:log.db"\n')
    log = PayloadLog(tmp_path / "unused", publish=PayloadPublisher(open_broker("embedded:log.db", partitions=4)))
    log.record("iris", "1", *_batch(0, 5, np.random.default_rng(4)))
    log.close()
    assert mlscale("monitor", "archive", "--once") == 0
    assert "archived 5 rows" in capsys.readouterr().out
    assert len(_archived(tmp_path / "payload-log")) == 5
