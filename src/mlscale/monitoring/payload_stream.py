"""The payload log over the broker: every replica publishes to one topic, one archiver writes Parquet.

Why: a payload log written as Parquet per process only shows a drift monitor the traffic of the
host it runs on. With ``[monitoring.payload_log] broker = ...`` each replica's writer thread
publishes its tables to the topic ``inference-log`` instead (keyed by model), and the archiver,
run by ``mlscale monitor run`` before each evaluation (or alone: ``mlscale monitor archive``),
writes them as Parquet in the payload log's own layout, so ``PayloadReader`` and the monitors read
every replica's rows unchanged.

Records are Arrow IPC streams (schema + one record batch): typed, compact for numbers, decoded
without a per-row step. A table is split so no record passes ``max_record_bytes`` (NATS refuses
messages over 1 MB by default).

Exactly-once archive without a transaction spanning broker and files: the files of one fetched
batch of a partition are named after the batch's first offset
(``<model>/<model>-<first row ms>-<partition>-<first offset>.parquet``, the reader's pattern), written
to a temporary name and renamed; then the partition's last offset goes into
``<directory>/.archive/<topic>.json`` (the archiver's checkpoint: the files are the truth, the
broker group's offsets only feed lag). A crash between the files and the checkpoint leaves files of
a batch the next run fetches again, perhaps with more records: those files (first offset after the
checkpoint) are deleted before it starts. One archiver per directory: a lock file makes a second
one skip its turn.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlscale.streams.broker import Broker

log = logging.getLogger(__name__)

TOPIC = "inference-log"
GROUP = "mlscale-payload-archiver"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NAME = re.compile(r"-\d+-(\d+)-(\d+)\.parquet$")


def encode_table(table: pa.Table, max_record_bytes: int = 512 * 1024) -> list[bytes]:
    """The table as Arrow IPC records of at most about ``max_record_bytes`` each (whole rows)."""
    rows = table.num_rows
    per_row = max(1, table.nbytes // max(rows, 1))
    step = max(1, max_record_bytes // per_row)
    out = []
    for start in range(0, max(rows, 1), step):
        sink = pa.BufferOutputStream()
        part = table.slice(start, step)
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        out.append(sink.getvalue().to_pybytes())
    return out


def decode_record(raw: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(raw)) as reader:
        return reader.read_all()


class PayloadPublisher:
    """What the payload log's writer thread calls instead of writing a file: append to the topic."""

    def __init__(self, broker: Broker, topic: str = TOPIC, max_record_bytes: int = 512 * 1024) -> None:
        self.broker = broker
        self.topic = topic
        self.max_record_bytes = max_record_bytes

    def __call__(self, model: str, table: pa.Table) -> None:
        records = encode_table(table, self.max_record_bytes)
        self.broker.append(self.topic, records, keys=[model] * len(records))

    def close(self) -> None:
        self.broker.close()


class PayloadArchiver:
    """Copies the topic into ``directory`` as the payload log's Parquet files, exactly once."""

    def __init__(self, broker: Broker, directory: str | Path, topic: str = TOPIC, batch_size: int = 10_000) -> None:
        self.broker = broker
        self.directory = Path(directory)
        self.topic = topic
        self.batch_size = batch_size
        self._state_dir = self.directory / ".archive"
        self._checkpoint = self._state_dir / f"{_UNSAFE.sub('_', topic)}.json"

    def positions(self) -> dict[int, int]:
        """Last archived offset per partition (-1: nothing yet)."""
        try:
            saved = {int(p): int(o) for p, o in json.loads(self._checkpoint.read_text()).items()}
        except FileNotFoundError:
            saved = {}
        return {p: saved.get(p, -1) for p in range(self.broker.partitions)}

    def _save(self, positions: dict[int, int]) -> None:
        temp = self._checkpoint.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(positions))
        os.replace(temp, self._checkpoint)

    def _drop_unfinished(self, positions: dict[int, int]) -> None:
        """Delete files of batches written after the checkpoint (a crash before it was saved)."""
        for path in self.directory.glob("*/*.parquet"):
            match = _NAME.search(path.name)
            if match and int(match.group(2)) > positions.get(int(match.group(1)), -1):
                path.unlink()

    def archive(self) -> int:
        """Archive every record after the checkpoint; returns rows written (0 if another archiver runs)."""
        self._state_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self._state_dir / "lock", os.O_CREAT | os.O_RDWR)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            positions = self.positions()
            self._drop_unfinished(positions)
            written = 0
            while True:
                batches = self.broker.fetch_columns(self.topic, positions, self.batch_size)
                if not batches:
                    return written
                for p, offsets, values in batches:
                    written += self._write_batch(p, offsets[0], values)
                    positions[p] = offsets[-1]
                    self._save(positions)
                    self.broker.commit(self.topic, GROUP, {p: offsets[-1]})
        finally:
            os.close(lock)  # releases the lock

    def _write_batch(self, partition: int, first: int, values: list[bytes]) -> int:
        by_model: dict[str, list[pa.Table]] = {}
        for raw in values:
            try:
                table = decode_record(raw)
            except (pa.ArrowInvalid, OSError) as exc:
                log.warning("payload archive: a record of partition %s is no Arrow stream: %s", partition, exc)
                continue
            if table.num_rows == 0 or "model" not in table.column_names:
                continue
            by_model.setdefault(str(table.column("model")[0]), []).append(table)
        rows = 0
        for model, tables in by_model.items():
            try:
                table = pa.concat_tables(tables, promote_options="permissive")
            except pa.ArrowInvalid:  # columns changed between versions with clashing types
                table = None
            parts = [table] if table is not None else tables
            folder = self.directory / _UNSAFE.sub("_", model)
            folder.mkdir(parents=True, exist_ok=True)
            for i, part in enumerate(parts):
                start_ms = int(pc.min(part.column("timestamp")).value // 1000)
                # one file per schema when they cannot be joined: the offset keeps names apart
                name = folder / f"{_UNSAFE.sub('_', model)}-{start_ms}-{partition}-{first + i}.parquet"
                temp = name.with_suffix(".parquet.tmp")
                pq.write_table(part, temp)
                os.replace(temp, name)
                rows += part.num_rows
        return rows

    def lag(self) -> int:
        return self.broker.lag(self.topic, GROUP)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.broker.close()
