"""Stream checkpoints in PostgreSQL: processors on several hosts share partitions and take over.

Why PostgreSQL: a checkpoint is a small transaction over a few rows (epoch and offset per partition,
a state blob per feature) that must be durable and serialised against a takeover; that is what a
relational database does, and teams already run one (the feature registry can live there too).

Two tables (created on first use): ``mlscale_stream_partitions`` (name, part, epoch, off) and
``mlscale_stream_state`` (name, part, feature, blob). The rules of checkpoint.py hold:
- ``acquire`` is one upsert that sets the epoch to the greater of the old one + 1 and the SERVER's
  clock in ms (one clock for all hosts), and returns it with the offset; the state is read in the
  same transaction, while the partition row is locked, so no old owner can commit in between;
- ``commit`` locks the partition rows in ascending order (``FOR UPDATE``: two committers can never
  deadlock), skips every partition whose epoch moved, and writes offsets and blobs of the rest in
  one transaction. A zombie holding an old epoch writes nothing.

Connection problems raise ServiceUnavailable and the next call reconnects. Put libpq's timeouts in
the URL (``?connect_timeout=2&tcp_user_timeout=5000``) so a host cut off fails within seconds
instead of waiting on TCP for minutes.

A host cut off in the middle of a commit leaves its transaction open on the server, holding the
partition rows' locks: the server does not notice a silent client for hours (TCP keepalive), and
every other host's ``acquire`` of those partitions would wait as long, so no one could take over.
Each session therefore sets ``idle_in_transaction_session_timeout`` (``zombie_timeout``, 5 s): a
transaction whose client sends nothing for that long is ended by the server and its locks freed.
A checkpoint's statements follow each other within milliseconds, so a live host never meets it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from mlscale.errors import ServiceUnavailable
from mlscale.streams.checkpoint import Checkpoints

T = TypeVar("T")

_PARTS = "mlscale_stream_partitions"
_STATE = "mlscale_stream_state"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_PARTS} (name TEXT NOT NULL, part INTEGER NOT NULL, epoch BIGINT NOT NULL,"
    " off BIGINT NOT NULL, PRIMARY KEY (name, part))",
    f"CREATE TABLE IF NOT EXISTS {_STATE} (name TEXT NOT NULL, part INTEGER NOT NULL, feature TEXT NOT NULL,"
    " blob BYTEA NOT NULL, PRIMARY KEY (name, part, feature))",
)
# Two processes creating the tables at once would collide in the catalog: one creates, the other waits.
_SCHEMA_LOCK = zlib.crc32(b"mlscale_stream_checkpoints")
_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"


class PostgresCheckpoints(Checkpoints):
    """``PostgresCheckpoints("postgresql://user@host:5432/db")``: the shared checkpoint store."""

    def __init__(self, dsn: str, zombie_timeout: float = 5.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn = dsn
        self.zombie_timeout = zombie_timeout
        self._conn: Any = None
        self._lock = threading.Lock()
        self._run(lambda conn: None)  # connect and create the tables now: a wrong URL fails at start

    def _where(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.dsn)
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def _connect(self) -> Any:
        conn = self._psycopg.connect(self.dsn, autocommit=True)
        # A cut-off host's open transaction is ended by the server (see the module's note).
        conn.execute(f"SET idle_in_transaction_session_timeout = {max(1, round(self.zombie_timeout * 1000))}")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement)
        return conn

    def _run(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)``; a broken connection is dropped (the next call reconnects)."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                return work(self._conn)
            except (
                self._psycopg.OperationalError,
                self._psycopg.InterfaceError,
                # The server ended this session's silent transaction (a zombie back from a cut).
                self._psycopg.errors.IdleInTransactionSessionTimeout,
            ) as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise ServiceUnavailable(f"checkpoint store PostgreSQL {self._where()}: {exc}".strip()) from exc

    def acquire(self, name: str, part: int) -> tuple[int, int, dict[str, bytes]]:
        def work(conn: Any) -> tuple[int, int, dict[str, bytes]]:
            with conn.transaction():
                epoch, off = conn.execute(
                    f"INSERT INTO {_PARTS} AS p (name, part, epoch, off) VALUES (%s, %s, {_NOW_MS}, -1)"
                    " ON CONFLICT (name, part) DO UPDATE SET epoch = GREATEST(p.epoch + 1, EXCLUDED.epoch)"
                    " RETURNING p.epoch, p.off",
                    (name, part),
                ).fetchone()
                rows = conn.execute(
                    f"SELECT feature, blob FROM {_STATE} WHERE name = %s AND part = %s", (name, part)
                ).fetchall()
            return epoch, off, {feature: bytes(blob) for feature, blob in rows}

        return self._run(work)

    def commit(self, name: str, updates: dict[int, tuple[int, int, dict[str, bytes]]]) -> list[int]:
        if not updates:
            return []

        def work(conn: Any) -> list[int]:
            with conn.transaction():
                current = dict(
                    conn.execute(
                        f"SELECT part, epoch FROM {_PARTS} WHERE name = %s AND part = ANY(%s) ORDER BY part FOR UPDATE",
                        (name, sorted(updates)),
                    ).fetchall()
                )
                kept = [p for p in sorted(updates) if current.get(p) == updates[p][0]]
                if kept:
                    conn.execute(
                        f"UPDATE {_PARTS} AS p SET off = u.off FROM unnest(%s::int[], %s::bigint[]) AS u(part, off)"
                        " WHERE p.name = %s AND p.part = u.part",
                        (kept, [updates[p][1] for p in kept], name),
                    )
                    rows = [(p, f, b) for p in kept for f, b in updates[p][2].items()]
                    if rows:
                        conn.execute(
                            f"INSERT INTO {_STATE} (name, part, feature, blob)"
                            " SELECT %s, * FROM unnest(%s::int[], %s::text[], %s::bytea[])"
                            " ON CONFLICT (name, part, feature) DO UPDATE SET blob = EXCLUDED.blob",
                            (name, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                        )
            return [p for p in updates if p not in kept]

        return self._run(work)

    def epochs(self, name: str) -> dict[int, int]:
        return self._run(
            lambda conn: dict(conn.execute(f"SELECT part, epoch FROM {_PARTS} WHERE name = %s", (name,)).fetchall())
        )

    def offsets(self, name: str) -> dict[int, int]:
        return self._run(
            lambda conn: dict(conn.execute(f"SELECT part, off FROM {_PARTS} WHERE name = %s", (name,)).fetchall())
        )

    def forget(self, name: str) -> None:
        def work(conn: Any) -> None:
            with conn.transaction():
                conn.execute(f"DELETE FROM {_PARTS} WHERE name = %s", (name,))
                conn.execute(f"DELETE FROM {_STATE} WHERE name = %s", (name,))

        self._run(work)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PostgresCheckpoints({self._where()})"
