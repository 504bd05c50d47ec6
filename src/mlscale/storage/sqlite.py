"""SQLite key-value store: the embedded default, shared safely by several processes on one host.

WAL mode lets readers run while one process writes; a busy timeout makes writers queue instead of
failing at once; expiry uses wall-clock time (not monotonic) because every process must agree on it.
Each thread gets its own connection, so ``asyncio.to_thread`` callers never share a cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from pathlib import Path

from mlscale.errors import ServiceUnavailable
from mlscale.storage.base import KeyValue

# Well under SQLite's limit on host parameters (32766 since 3.32, 999 before).
_CHUNK = 500
# Every this many writes, expired rows are removed in one statement (reads already hide them).
_SWEEP_EVERY = 10_000
# Page cache per connection (SQLite's default is 2 MiB): an online store of a few hundred thousand
# keys then stays in memory, so random upserts stop re-reading pages from the OS.
_CACHE_KIB = 65_536
# Pages read through a memory map instead of a read() each: a connection's first touch of a page
# (every page, after a bulk load or a restart) costs a page fault rather than a syscall and a copy.
# bench/cache/run.py, back to back without and with it: get_many of 100 keys from one file 204 -> 140
# us, from 4 shards 302 -> 254 us (p50). Address space only: the pages are the OS's file cache,
# shared by every process that maps the file.
_MMAP_BYTES = 1 << 30

# Reads of up to this many keys from the event loop skip the worker thread (see ``aget_many``).
_INLINE_KEYS = 16
_GET_ONE = "SELECT value FROM kv WHERE key = ? AND (expires IS NULL OR expires > ?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    ver INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
"""

# The conditional write of ``set_many_if_newer`` as one statement: SQLite's upsert compares the
# versions inside the write, so no other writer can come between the compare and the write. A row
# written by plain ``set_many`` has no version (NULL) and is overwritten, as is an expired one.
_SET_IF_NEWER = """
INSERT INTO kv (key, value, expires, ver) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, ver = excluded.ver
WHERE kv.ver IS NULL OR kv.ver <= excluded.ver OR kv.expires <= ?
"""


# Writes of at least this many rows go in key order (see ``_in_key_order``).
_SORT_FROM = 256


def _in_key_order(rows: Iterable[tuple], count: int) -> Iterable[tuple]:
    """Rows sorted by key (their first field) when there are many.

    The table is a B-tree on the key: rows in key order touch each page once, in sequence, instead
    of jumping between pages at random. 50,000 upserts into 100,000 keys took 0.15-0.18 s of CPU in
    key order against 0.19-0.29 s in random order (8 alternating rounds, 2026-12-01, a busy machine).
    Keys are unique within a write, so the tuples never compare past their first field.
    """
    return sorted(rows) if count >= _SORT_FROM else rows


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _add_version_column(conn: sqlite3.Connection) -> None:
    """Files made before versioned writes lack ``ver``; their rows count as unversioned."""
    if any(row[1] == "ver" for row in conn.execute("PRAGMA table_info(kv)")):
        return
    try:
        conn.execute("ALTER TABLE kv ADD COLUMN ver INTEGER")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise


class _ThreadConnection:
    """One thread's connection, held in a thread-local so its end can be noticed."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class SQLiteKeyValue(KeyValue):
    """A table ``kv(key, value, expires)`` in one SQLite file (or ``:memory:``)."""

    def __init__(self, path: str | Path, *, timeout: float = 5.0, page_cache_kib: int | None = None) -> None:
        self.path = str(path)
        self.timeout = timeout
        # Per connection, and a store has one connection per thread that uses it: the memory bound
        # is this times those threads (the event loop and the default executor's, up to 6 on 2 cores).
        self.page_cache_kib = _CACHE_KIB if page_cache_kib is None else page_cache_kib
        self._memory = self.path == ":memory:"
        if not self._memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceUnavailable(f"SQLite store {self.path}: {exc}") from exc
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writes = 0
        # An in-memory database exists per connection, so it gets exactly one (guarded by a lock).
        self._shared = self._open() if self._memory else None
        self._connection()  # create the schema now, so a bad path fails at construction

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{self.page_cache_kib}")
            conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            conn.executescript(_SCHEMA)
            _add_version_column(conn)
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"SQLite store {self.path}: {exc}") from exc
        with self._lock:
            self._connections.append(conn)
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        holder = getattr(self._local, "holder", None)
        if holder is None:
            holder = self._local.holder = _ThreadConnection(self._open())
            # A thread that ends drops its thread-local holder: its connection (and the page cache
            # it holds) is closed then, not kept for the store's lifetime. Threads come and go in
            # some callers; each one left a connection behind before.
            weakref.finalize(holder, self._forget, holder.conn)
        return holder.conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
                conn.close()

    def _run(self, fn):  # type: ignore[no-untyped-def]
        """Call ``fn(conn)``; a locked or broken database becomes ServiceUnavailable."""
        try:
            if self._shared is not None:
                with self._lock:
                    return fn(self._shared)
            return fn(self._connection())
        except sqlite3.Error as exc:
            raise ServiceUnavailable(f"SQLite store {self.path}: {exc}") from exc

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        if len(keys) == 1:
            return [self._get_one(keys[0])]

        def read(conn: sqlite3.Connection) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            now = time.time()
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, value FROM kv WHERE key IN ({marks}) AND (expires IS NULL OR expires > ?)",
                    (*chunk, now),
                )
                found.update(rows)
            return found

        found = self._run(read)
        return [found.get(bytes(key)) for key in keys]

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Small reads run on the caller's thread; larger ones in a worker thread.

        A WAL reader never waits for the writer, and a few keys from a local file take a few
        microseconds, while the hand-off to a worker thread and back costs 50-150 us: for the
        server's single-entity feature reads the hop was most of the request.
        """
        if len(keys) <= _INLINE_KEYS:
            return self.get_many(keys)
        return await asyncio.to_thread(self.get_many, keys)

    def _get_one(self, key: bytes) -> bytes | None:
        """One key with one constant statement: the online store's single-entity reads."""

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(_GET_ONE, (key, time.time())).fetchone()
            return None if row is None else row[0]

        return self._run(read)

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        if not items:
            return
        expires = time.time() + ttl if ttl is not None else None
        # sqlite3 binds any bytes-like object as a BLOB: no per-row tuple or copy is needed.
        self._write_rows(
            "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
            _in_key_order(zip(items.keys(), items.values(), repeat(expires)), len(items)),
            len(items),
        )

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        now = time.time()
        expires = now + ttl if ttl is not None else None
        rows = zip(items.keys(), items.values(), repeat(expires), versions, repeat(now))
        self._write_rows(_SET_IF_NEWER, _in_key_order(rows, len(items)), len(items))

    def _write_rows(self, statement: str, rows: Iterable[tuple], count: int) -> None:
        """``statement`` for every row in one immediate transaction; every ``_SWEEP_EVERY`` rows
        written, expired rows are deleted in the same transaction."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(statement, rows)
                self._writes += count
                if self._writes >= _SWEEP_EVERY:
                    self._writes = 0
                    conn.execute("DELETE FROM kv WHERE expires <= ?", (time.time(),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(write)

    def set_many_with_ttls(self, items: Mapping[bytes, tuple[bytes, float | None]]) -> None:
        """Write items each with its own ttl (used by resharding to carry expiries over)."""
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                    [(k, v, None if t is None else now + t) for k, (v, t) in items.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        if items:
            self._run(write)

    def delete(self, keys: Sequence[bytes]) -> int:
        if not keys:
            return 0

        def remove(conn: sqlite3.Connection) -> int:
            removed = 0
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(keys), _CHUNK):
                    chunk = keys[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    # Count only live keys as existing, like Redis (expired ones are gone there).
                    removed += conn.execute(
                        f"SELECT count(*) FROM kv WHERE key IN ({marks}) AND (expires IS NULL OR expires > ?)",
                        (*chunk, now),
                    ).fetchone()[0]
                    conn.execute(f"DELETE FROM kv WHERE key IN ({marks})", chunk)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return removed

        return self._run(remove)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        upper = prefix_upper_bound(prefix)

        def keys(conn: sqlite3.Connection) -> list[bytes]:
            sql = "SELECT key FROM kv WHERE key >= ? AND (expires IS NULL OR expires > ?)"
            args: tuple = (prefix, time.time())
            if upper is not None:
                sql += " AND key < ?"
                args = (*args, upper)
            return [row[0] for row in conn.execute(sql, args)]

        return iter(self._run(keys))

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """Seconds left for each key (None: no expiry or missing)."""

        def read(conn: sqlite3.Connection) -> dict[bytes, float | None]:
            found: dict[bytes, float | None] = {}
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(conn.execute(f"SELECT key, expires FROM kv WHERE key IN ({marks})", chunk))
            return found

        found = self._run(read)
        now = time.time()
        return [None if found.get(k) is None else max(found[k] - now, 0.001) for k in keys]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._shared = None

    def __repr__(self) -> str:
        return f"SQLiteKeyValue({self.path!r})"
