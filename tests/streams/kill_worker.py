"""A stream processor run as its own process, so a test can SIGKILL it anywhere and start it again.

The online store here is a tiny durable SQLite KeyValue (the storage part's SQLite backend lives on
another branch); the processor only sees the KeyValue interface.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence

from mlscale.storage.base import KeyValue
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.processor import StreamProcessor

FEATURES = [
    WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="10s",
        allowed_lateness="5s",
        aggregations=["count", "sum(amount)", "mean(amount)", "max(amount)", "distinct_count(item)"],
    ),
    WindowedFeature(
        name="visits", source="orders", entity_key="user", window="session", gap="3s",
        allowed_lateness="5s", aggregations=["count", "last(amount)"],
    ),
]


class FileKeyValue(KeyValue):
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [(r[0] if (r := self.db.execute("SELECT v FROM kv WHERE k=?", (k,)).fetchone()) else None)
                for k in keys]

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?,?)", list(items.items()))
        self.db.execute("COMMIT")

    def delete(self, keys: Sequence[bytes]) -> int:
        return sum(self.db.execute("DELETE FROM kv WHERE k=?", (k,)).rowcount for k in keys)

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        return iter([r[0] for r in self.db.execute("SELECT k FROM kv") if r[0].startswith(prefix)])


def main(folder: str, idle_exit: str) -> None:
    broker = EmbeddedBroker(f"{folder}/log.db", partitions=4, key_fields={"orders": "user"}, member_ttl=0.5)
    proc = StreamProcessor(
        broker, FEATURES, FileKeyValue(f"{folder}/online.db"), f"{folder}/ckpt.db",
        consumer="worker", batch_size=97, checkpoint_interval=0.02,
    )
    print("ready", flush=True)
    proc.run(idle_exit=float(idle_exit))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
