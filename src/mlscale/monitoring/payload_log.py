"""The payload log: sampled requests and responses written to Parquet without slowing inference.

``record`` only samples, checks a bound and appends a reference to the arrays under a lock held for
a few instructions; it never waits on disk and never raises. When the bounded buffer is full the
batch is dropped and counted. A background thread turns the buffer into Arrow tables and appends
them to one Parquet file per model and process, rolled by size and age.

Layout: ``<directory>/<model>/<model>-<start ms>-<pid>-<seq>.parquet``. A file is written as
``.parquet.tmp`` and renamed when rolled or closed, so readers only see complete files; the pid in
the name lets several server workers share one directory. Data in the open file becomes visible
when the file rolls (``roll_seconds``) and is lost only on a hard kill (SIGTERM → ``close()``).
With ``publish`` (payload_stream.PayloadPublisher) the writer appends each table to the broker's
``inference-log`` topic instead of a file, so one archiver and one monitor see every replica.

Columns, one row per batch item: ``model``, ``version``, ``timestamp`` (UTC), then each input by
name, and each output prefixed ``out_``. An input of shape [n] is one column; of shape [n, k] (or
more dimensions, flattened per row) becomes columns ``<name>_0 .. <name>_{k-1}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.monitoring.metrics import PAYLOAD_RECORDS

log = logging.getLogger(__name__)

OUTPUT_PREFIX = "out_"
# Batches converted per step of the writer, between which it hands the GIL back (about 1 ms each).
_CHUNK_ENTRIES = 512
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def flatten(prefix: str, tensors: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """One 1-D column per feature: [n] stays, [n, k, ...] becomes ``<name>_<j>`` for each j."""
    columns: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.ndim <= 1:
            columns[prefix + name] = array.reshape(rows)
            continue
        flat = array.reshape(rows, -1)
        for j in range(flat.shape[1]):
            columns[f"{prefix}{name}_{j}"] = flat[:, j]
    return columns


# One offered batch, as a plain tuple of strings, numbers and tuples of arrays:
#   (model, version, timestamp, rows, input names, input arrays, output names, output arrays).
# Why not a dataclass or the request's dicts: none of these objects is tracked by the garbage
# collector once a young collection has looked at it (NumPy arrays never are, such tuples get
# untracked), so thousands of buffered requests do not make the collector's full passes longer.
_Entry = tuple
_MODEL, _VERSION, _TIME, _ROWS, _IN_NAMES, _IN, _OUT_NAMES, _OUT = range(8)


class _ModelFile:
    """The open Parquet file of one model in this process."""

    def __init__(self, folder: Path, model: str, schema: pa.Schema, seq: int) -> None:
        self.started = time.time()
        stem = f"{_UNSAFE.sub('_', model)}-{int(self.started * 1000)}-{os.getpid()}-{seq}"
        self.final = folder / f"{stem}.parquet"
        self.temp = folder / f"{stem}.parquet.tmp"
        self.schema = schema
        # Dictionary encoding only where values repeat (model, version, string inputs): tried on
        # float columns it is wasted work, and it made writing five times slower per row.
        strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        self.writer = pq.ParquetWriter(self.temp, schema, use_dictionary=strings or False)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def size(self) -> int:
        return self.temp.stat().st_size

    def close(self) -> None:
        self.writer.close()
        os.replace(self.temp, self.final)


class PayloadLog:
    """Samples batches into a bounded buffer that a background thread writes to Parquet.

    sample_rate: a share in [0, 1] for every model, or model -> share (``default_rate`` for others).
    max_buffer_records: batch items held in memory at most; beyond it records are dropped, counted.
    roll_bytes / roll_seconds: a model's file is closed and a new one started past either bound.
    flush_interval: seconds between the writer's passes over the buffer.
    publish: ``publish(model, table)`` instead of files (the broker's topic); a table it fails to
    take is dropped and counted, as a full buffer is.
    """

    def __init__(
        self,
        directory: str | Path,
        sample_rate: float | Mapping[str, float] = 1.0,
        *,
        default_rate: float = 1.0,
        max_buffer_records: int = 100_000,
        roll_bytes: int = 64 * 1024 * 1024,
        roll_seconds: float = 60.0,
        flush_interval: float = 1.0,
        publish: Callable[[str, pa.Table], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.publish = publish
        if publish is None:
            self.directory.mkdir(parents=True, exist_ok=True)
        if isinstance(sample_rate, Mapping):
            self._rates = dict(sample_rate)
            self._default_rate = default_rate
        else:
            self._rates, self._default_rate = {}, float(sample_rate)
        self.max_buffer_records = max_buffer_records
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self.flush_interval = flush_interval
        self._counts = {"logged": 0, "dropped": 0, "sampled_out": 0}
        self._accepted = 0  # rows taken into the buffer (counted per model by the writer)
        self._unpublished: dict[tuple[str, str], int] = {}
        self._count_lock = threading.Lock()
        self._buffer: list[_Entry] = []
        self._children: dict[tuple[str, str], object] = {}
        self._buffered = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer pass at a time (thread, flush(), close())
        self._files: dict[str, _ModelFile] = {}
        self._seq = 0
        self._closed = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    # --- the hot path ---------------------------------------------------------------------------

    def record(
        self, model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        """Offer one batch; returns at once. The arrays are kept by reference: do not mutate them."""
        try:
            rate = self._rates.get(model, self._default_rate) if self._rates else self._default_rate
            shape = getattr(next(iter(inputs.values()), None), "shape", ())
            rows = int(shape[0]) if shape else 1
            if rate < 1.0 and random.random() >= rate:
                self._count(model, "sampled_out", rows)
                return
            with self._lock:
                if self._closed or self._buffered + rows > self.max_buffer_records:
                    outcome = "dropped"
                else:
                    self._buffer.append(
                        (
                            model,
                            version,
                            time.time(),
                            rows,
                            tuple(inputs),
                            tuple(inputs.values()),
                            tuple(outputs),
                            tuple(outputs.values()),
                        )
                    )
                    self._buffered += rows
                    self._accepted += rows
                    return  # the per-model count is the writer's job, off the request path
            self._count(model, outcome, rows)
        except Exception:  # never let logging fail a request
            log.debug("payload record rejected", exc_info=True)
            with contextlib.suppress(Exception):
                self._count(str(model), "dropped", 1)

    @property
    def counts(self) -> dict[str, int]:
        """Rows logged (accepted and not failed since), dropped and sampled out, in this process."""
        with self._count_lock:
            out = dict(self._counts)
        out["logged"] += self._accepted
        return out

    def _count(self, model: str, outcome: str, rows: int) -> None:
        # The Prometheus counter is bumped by the writer thread (``_publish_counts``): a counter
        # increment costs microseconds, too much to pay on every request.
        key = (model, outcome)
        with self._count_lock:
            if outcome != "logged":  # logged rows are counted once, in ``record`` (``_accepted``)
                self._counts[outcome] += rows
            self._unpublished[key] = self._unpublished.get(key, 0) + rows

    def _publish_counts(self) -> None:
        with self._count_lock:
            pending, self._unpublished = self._unpublished, {}
        for (model, outcome), rows in pending.items():
            child = self._children.get((model, outcome))
            if child is None:
                child = self._children[(model, outcome)] = PAYLOAD_RECORDS.labels(model, outcome)
            child.inc(rows)

    # --- the writer -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._write_pass()
            except Exception:
                log.exception("payload log write failed")

    def _write_pass(self, close_all: bool = False) -> None:
        with self._write_lock:
            with self._lock:
                entries, self._buffer, self._buffered = self._buffer, [], 0
            by_model: dict[str, list[_Entry]] = {}
            for entry in entries:
                by_model.setdefault(entry[_MODEL], []).append(entry)
            for model, items in by_model.items():
                self._write_model(model, items)
            self._publish_counts()
            now = time.time()
            for model, handle in list(self._files.items()):
                if close_all or now - handle.started >= self.roll_seconds or handle.size() >= self.roll_bytes:
                    handle.close()
                    del self._files[model]

    def _write_model(self, model: str, items: list[_Entry]) -> None:
        # Consecutive entries with the same columns form one table (a new version may change them).
        run: list[_Entry] = []
        names = None
        for entry in items:
            if run and (entry[_IN_NAMES] != names[0] or entry[_OUT_NAMES] != names[1]):
                self._append(model, run)
                run = []
            if not run:
                names = entry[_IN_NAMES], entry[_OUT_NAMES]
            run.append(entry)
        if run:
            self._append(model, run)

    def _append(self, model: str, run: list[_Entry]) -> None:
        tables = []
        for start in range(0, len(run), _CHUNK_ENTRIES):
            chunk = run[start : start + _CHUNK_ENTRIES]
            try:
                tables.append(self._to_table(chunk))
                self._count(model, "logged", sum(e[_ROWS] for e in chunk))
            except Exception as exc:  # a malformed batch is dropped, the rest still written
                log.warning("payload log: cannot convert batches of %s: %s", model, exc)
                rows = sum(e[_ROWS] for e in chunk)
                self._count(model, "dropped", rows)
                with self._count_lock:
                    self._counts["logged"] -= rows
            # Hand the GIL to the event loop between chunks: a thread holding it makes the loop
            # wait a whole switch interval (5 ms) for it, which showed as a 10x p99 at 100% logging.
            time.sleep(0)
        if not tables:
            return
        try:
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        except pa.ArrowInvalid:  # chunks whose inferred types differ: written one by one
            for part in tables:
                self._write_table(model, part)
            return
        self._write_table(model, table)

    def _write_table(self, model: str, table: pa.Table) -> None:
        if self.publish is not None:
            try:
                self.publish(model, table)
            except Exception as exc:  # the broker is down: these rows are lost, and counted
                log.warning("payload log: cannot publish %s rows of %s: %s", table.num_rows, model, exc)
                rows = table.num_rows
                with self._count_lock:
                    self._counts["logged"] -= rows
                    self._unpublished[(model, "logged")] = self._unpublished.get((model, "logged"), 0) - rows
                self._count(model, "dropped", rows)
            return
        handle = self._files.get(model)
        if handle is not None and (handle.schema != table.schema or handle.size() >= self.roll_bytes):
            handle.close()
            handle = None
        if handle is None:
            folder = self.directory / _UNSAFE.sub("_", model)
            folder.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            handle = self._files[model] = _ModelFile(folder, model, table.schema, self._seq)
        handle.write(table)

    @staticmethod
    def _to_table(run: list[_Entry]) -> pa.Table:
        # Join each tensor across the run first (one concatenate per tensor), then split it into
        # columns once: per-entry work stays a list append, which keeps the writer cheap at
        # thousands of requests per second.
        rows = [e[_ROWS] for e in run]
        total = sum(rows)
        first = run[0]

        def joined(parts: list) -> np.ndarray:
            try:  # the usual case: every part [rows, ...] with the same trailing shape
                whole = np.concatenate(parts)
                if len(whole) == total:
                    return whole if whole.ndim <= 2 else whole.reshape(total, -1)
            except ValueError:
                pass
            parts = [np.asarray(p) for p in parts]
            if parts[0].ndim <= 1:  # [n] stays one column named like the tensor
                return np.concatenate([p.reshape(n) for p, n in zip(parts, rows, strict=True)])
            return np.concatenate([p.reshape(n, -1) for p, n in zip(parts, rows, strict=True)])

        inputs = {n: joined([e[_IN][j] for e in run]) for j, n in enumerate(first[_IN_NAMES])}
        outputs = {n: joined([e[_OUT][j] for e in run]) for j, n in enumerate(first[_OUT_NAMES])}
        cols = flatten("", inputs, total) | flatten(OUTPUT_PREFIX, outputs, total)
        stamps = np.repeat(np.array([e[_TIME] for e in run]) * 1e6, rows).astype("datetime64[us]")
        arrays = {
            "model": _constant_or_repeated([e[_MODEL] for e in run], rows, total),
            "version": _constant_or_repeated([e[_VERSION] for e in run], rows, total),
            "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        }
        for name, values in cols.items():
            arrays[name] = pa.array(values.astype(object) if values.dtype.kind in "SUO" else values)
        return pa.table(arrays)

    # --- control ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the buffer now and close every open file, so readers see all records so far."""
        self._write_pass(close_all=True)

    def close(self) -> None:
        """Stop taking records, write everything buffered, close the files (call on SIGTERM)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
        self._write_pass(close_all=True)
        close = getattr(self.publish, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> PayloadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _constant_or_repeated(values: list[str], rows: list[int], total: int) -> pa.Array:
    """A string column from one value per batch; the usual single value is filled in C."""
    first = values[0]
    if values.count(first) == len(values):
        return pa.array(np.full(total, first, dtype=object), pa.string())
    return pa.array(np.repeat(np.array(values, dtype=object), rows), pa.string())


def payload_log_from_settings(settings, resolve) -> PayloadLog | None:
    """The server's payload log from ``[monitoring.payload_log]``, or None when disabled.

    ``settings`` is a PayloadLogSettings, ``resolve`` makes its directory absolute
    (``Settings.resolve``). Call once per worker process, after it starts.
    """
    if not settings.enabled:
        return None
    publish = None
    if settings.broker:
        from mlscale.monitoring.payload_stream import PayloadPublisher

        publish = PayloadPublisher(payload_broker(settings, resolve), settings.topic)
    return PayloadLog(
        resolve(settings.directory),
        settings.sample_rates or settings.sample_rate,
        default_rate=settings.sample_rate,
        max_buffer_records=settings.max_buffer_records,
        roll_bytes=settings.roll_bytes,
        roll_seconds=settings.roll_seconds,
        publish=publish,
    )


def payload_broker(settings, resolve):
    """The broker of ``[monitoring.payload_log] broker`` (publishers and the archiver open the same)."""
    from mlscale.streams.connect import open_broker

    return open_broker(settings.broker, partitions=settings.partitions, root=resolve("."))
