"""The default broker: a durable log in one SQLite file (WAL mode), shared safely by several processes.

Why SQLite: it is in the standard library, an append is one transaction that survives a crash or a
kill, WAL lets readers run beside one writer across processes, and ``BEGIN IMMEDIATE`` serialises the
offset assignment so two producers never hand out the same offset. Offsets are 0, 1, 2... per
partition.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlscale.streams.broker import Broker, Message

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (topic, part, off)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS committed (
    topic TEXT NOT NULL, grp TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    topic TEXT NOT NULL, grp TEXT NOT NULL, consumer TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (topic, grp, consumer)) WITHOUT ROWID;
"""


class EmbeddedBroker(Broker):
    """A partitioned log in a SQLite file; ``path`` may be ":memory:" for one process."""

    def __init__(
        self,
        path: str | Path,
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
    ) -> None:
        super().__init__(partitions, key_fields, member_ttl)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB: consumers re-read recent pages
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        # Read position per (topic, group, consumer, partition): the next read starts after it.
        self._position: dict[tuple[str, str, str, int], int] = {}
        self._rotate = 0

    def _append(
        self, topic: str, payloads: list[bytes], partitions: list[int], call_id: str | None = None
    ) -> list[int]:
        offsets = [0] * len(payloads)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                nxt: dict[int, int] = {}
                for p in set(partitions):
                    row = self._db.execute("SELECT max(off) FROM log WHERE topic=? AND part=?", (topic, p)).fetchone()
                    nxt[p] = -1 if row[0] is None else row[0]
                rows = []
                for i, (payload, p) in enumerate(zip(payloads, partitions, strict=True)):
                    nxt[p] += 1
                    offsets[i] = nxt[p]
                    rows.append((topic, p, nxt[p], payload))
                self._db.executemany("INSERT INTO log VALUES (?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return offsets

    def _heartbeat(self, topic: str, group: str, consumer: str) -> list[str]:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO members VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET expires=excluded.expires",
                (topic, group, consumer, now + self.member_ttl),
            )
            rows = self._db.execute(
                "SELECT consumer FROM members WHERE topic=? AND grp=? AND expires>?", (topic, group, now)
            ).fetchall()
        return sorted(r[0] for r in rows)

    def leave(self, topic: str, group: str, consumer: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM members WHERE topic=? AND grp=? AND consumer=?", (topic, group, consumer))
        self._owned.pop((topic, group, consumer), None)

    def _acquire(self, topic: str, group: str, consumer: str, partition: int) -> None:
        self._position[(topic, group, consumer, partition)] = self.committed(topic, group).get(partition, -1)

    def _read(self, topic: str, group: str, consumer: str, partitions: list[int], max_records: int) -> list[Message]:
        out: list[Message] = []
        # Start at a rotating partition so one busy partition cannot starve the others.
        self._rotate = (self._rotate + 1) % len(partitions)
        order = partitions[self._rotate :] + partitions[: self._rotate]
        with self._lock:
            for p in order:
                want = max_records - len(out)
                if want <= 0:
                    break
                pos_key = (topic, group, consumer, p)
                rows = self._db.execute(
                    "SELECT off, value FROM log WHERE topic=? AND part=? AND off>? ORDER BY off LIMIT ?",
                    (topic, p, self._position.get(pos_key, -1), want),
                ).fetchall()
                if rows:
                    self._position[pos_key] = rows[-1][0]
                    out.extend(Message(topic, p, off, value) for off, value in rows)
        return out

    def fetch(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[Message]:
        out: list[Message] = []
        items = list(positions.items())
        self._rotate = (self._rotate + 1) % max(1, len(items))
        with self._lock:
            for p, after in items[self._rotate :] + items[: self._rotate]:
                if len(out) >= max_records:
                    break
                rows = self._db.execute(
                    "SELECT off, value FROM log WHERE topic=? AND part=? AND off>? ORDER BY off LIMIT ?",
                    (topic, p, after, max_records - len(out)),
                ).fetchall()
                out.extend(Message(topic, p, off, value) for off, value in rows)
        return out

    def fetch_columns(
        self, topic: str, positions: Mapping[int, int], max_records: int
    ) -> list[tuple[int, list[int], list[bytes]]]:
        out: list[tuple[int, list[int], list[bytes]]] = []
        items = list(positions.items())
        self._rotate = (self._rotate + 1) % max(1, len(items))
        got = 0
        with self._lock:
            for p, after in items[self._rotate :] + items[: self._rotate]:
                if got >= max_records:
                    break
                rows = self._db.execute(
                    "SELECT value FROM log WHERE topic=? AND part=? AND off>? ORDER BY off LIMIT ?",
                    (topic, p, after, max_records - got),
                ).fetchall()
                if rows:
                    # offsets are dense (max + 1 under BEGIN IMMEDIATE, never deleted)
                    out.append((p, list(range(after + 1, after + 1 + len(rows))), [r[0] for r in rows]))
                    got += len(rows)
        return out

    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO committed VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET off=max(off, excluded.off)",
                [(topic, group, p, off) for p, off in offsets.items()],
            )

    def ack(self, topic: str, group: str, messages: Sequence[Message]) -> None:
        top: dict[int, int] = defaultdict(lambda: -1)
        for m in messages:
            top[m.partition] = max(top[m.partition], m.offset)
        if not top:
            return
        with self._lock:
            self._db.executemany(
                "INSERT INTO committed VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET off=max(off, excluded.off)",
                [(topic, group, p, off) for p, off in top.items()],
            )

    def committed(self, topic: str, group: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT part, off FROM committed WHERE topic=? AND grp=?", (topic, group)
            ).fetchall()
        return dict(rows)

    def end_offsets(self, topic: str) -> dict[int, int]:
        out: dict[int, int] = {}
        with self._lock:
            for p in range(self.partitions):
                row = self._db.execute("SELECT max(off) FROM log WHERE topic=? AND part=?", (topic, p))
                top = row.fetchone()[0]
                if top is not None:
                    out[p] = top
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
