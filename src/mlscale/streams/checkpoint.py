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
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

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


class CheckpointStore:
    """Per (processor name, partition): epoch, last processed offset and one state blob per feature."""

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
        """Current epoch per partition: a processor holding an older one has been taken over."""
        with self._lock:
            rows = self._db.execute("SELECT part, epoch FROM partitions WHERE name=?", (name,)).fetchall()
        return dict(rows)

    def offsets(self, name: str) -> dict[int, int]:
        with self._lock:
            return dict(self._db.execute("SELECT part, off FROM partitions WHERE name=?", (name,)).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
