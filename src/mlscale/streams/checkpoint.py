"""Checkpoints: window state and input offsets of each partition, committed in ONE SQLite transaction.

Why this gives exactly-once effect: the processor writes its online values (idempotent: keyed by
entity and window, whole values overwritten) BEFORE it commits a checkpoint, and acknowledges the broker
AFTER. A kill between the writes and the commit replays the same records from the previous
checkpoint's state, recomputing the same values; a kill after the commit is caught by the offsets
in the checkpoint (records at or below them are skipped). So no event is lost or counted twice.

Fencing: taking a partition over bumps its epoch; a commit from an instance holding an older epoch
(a paused "zombie") is refused, so two owners can never both move a partition's checkpoint. The
epoch also versions every online value the owner writes (the store keeps a value with a newer
one), so it must outrank every epoch that ever wrote to the online store, even from a checkpoint
file since deleted: a new epoch is the greater of the old one + 1 and the wall clock in ms.

Backends (one interface, ``Checkpoints``; ``open_checkpoints`` picks one from a spec):
- ``CheckpointStore``: embedded SQLite file, the default on one host;
- ``PostgresCheckpoints`` (checkpoint_postgres.py) and ``RedisCheckpoints`` (checkpoint_redis.py):
  shared by processors on several hosts, so a host that dies has its partitions taken over from
  its last checkpoint. Each keeps the same rules: acquire bumps the epoch atomically, a commit is
  refused for a partition whose epoch moved, and the new epoch comes from the store's clock (one
  clock for every host, so clock skew between hosts cannot make a new owner's epoch smaller).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

from mlscale.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    name TEXT NOT NULL, part INTEGER NOT NULL, epoch INTEGER NOT NULL, off INTEGER NOT NULL,
    PRIMARY KEY (name, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    name TEXT NOT NULL, part INTEGER NOT NULL, feature TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (name, part, feature)) WITHOUT ROWID;
"""


class Fenced(Exception):
    """Another instance took this partition over; drop it without committing."""


class Checkpoints(ABC):
    """Per (processor name, partition): epoch, last processed offset and one state blob per feature.

    A processor name is ``<group>/<topic>``; several processors (hosts) with the same name share
    the partitions, each taking some with ``acquire`` and committing them with ``commit``.
    """

    @abstractmethod
    def acquire(self, name: str, part: int) -> tuple[int, int, dict[str, bytes]]:
        """Take a partition: bump its epoch; return (epoch, offset, state blobs by feature).

        A partition never seen starts at offset -1 with no state."""

    @abstractmethod
    def commit(self, name: str, updates: dict[int, tuple[int, int, dict[str, bytes]]]) -> list[int]:
        """Commit {partition: (epoch, offset, blobs)} atomically; returns partitions fenced off (skipped).

        A partition is fenced when its epoch is no longer ``epoch`` (another instance acquired it):
        nothing of it is written. Blobs not named keep their previous value."""

    @abstractmethod
    def epochs(self, name: str) -> dict[int, int]:
        """Current epoch per partition: a processor holding an older one has been taken over."""

    @abstractmethod
    def offsets(self, name: str) -> dict[int, int]:
        """Last committed offset per partition."""

    @abstractmethod
    def forget(self, name: str) -> None:
        """Delete every partition of ``name`` (a reset; tests clean up with it)."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and files."""

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_checkpoints(spec: str | Path, root: str | Path = ".") -> Checkpoints:
    """``postgresql://...``, ``redis://...`` or an SQLite file (``sqlite:PATH`` or a bare path,
    relative to ``root``; ``:memory:`` for one process)."""
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")):
        from mlscale.streams.checkpoint_postgres import PostgresCheckpoints

        return PostgresCheckpoints(text)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from mlscale.streams.checkpoint_redis import RedisCheckpoints

        return RedisCheckpoints(text)
    if "://" in text and not text.startswith("sqlite:"):
        raise ConfigError(f"checkpoint store {text!r}: expected postgresql://..., redis://... or an SQLite path")
    path = text.removeprefix("sqlite:").removeprefix("//")
    if not path:
        raise ConfigError("checkpoint store 'sqlite:' needs a path")
    if path != ":memory:" and not Path(path).is_absolute():
        path = str(Path(root) / path)
    return CheckpointStore(path)


class CheckpointStore(Checkpoints):
    """The embedded backend: one SQLite file shared by the processors of one host."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def acquire(self, name: str, part: int) -> tuple[int, int, dict[str, bytes]]:
        """Take a partition: bump its epoch; return (epoch, offset, state blobs by feature)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT epoch, off FROM partitions WHERE name=? AND part=?", (name, part)
                ).fetchone()
                now_ms = int(time.time() * 1000)
                epoch, off = (max(row[0] + 1, now_ms), row[1]) if row else (now_ms, -1)
                self._db.execute(
                    "INSERT INTO partitions VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET epoch=excluded.epoch",
                    (name, part, epoch, off),
                )
                blobs = dict(
                    self._db.execute("SELECT feature, blob FROM state WHERE name=? AND part=?", (name, part)).fetchall()
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return epoch, off, blobs

    def commit(self, name: str, updates: dict[int, tuple[int, int, dict[str, bytes]]]) -> list[int]:
        """Commit {partition: (epoch, offset, blobs)} atomically; returns partitions fenced off (skipped)."""
        fenced: list[int] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for part, (epoch, off, blobs) in updates.items():
                    row = self._db.execute(
                        "SELECT epoch FROM partitions WHERE name=? AND part=?", (name, part)
                    ).fetchone()
                    if row is None or row[0] != epoch:
                        fenced.append(part)
                        continue
                    self._db.execute("UPDATE partitions SET off=? WHERE name=? AND part=?", (off, name, part))
                    self._db.executemany(
                        "INSERT OR REPLACE INTO state VALUES (?,?,?,?)",
                        [(name, part, feature, blob) for feature, blob in blobs.items()],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return fenced

    def epochs(self, name: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT part, epoch FROM partitions WHERE name=?", (name,)).fetchall()
        return dict(rows)

    def offsets(self, name: str) -> dict[int, int]:
        with self._lock:
            return dict(self._db.execute("SELECT part, off FROM partitions WHERE name=?", (name,)).fetchall())

    def forget(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM partitions WHERE name=?", (name,))
            self._db.execute("DELETE FROM state WHERE name=?", (name,))
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
