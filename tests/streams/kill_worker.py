"""A stream processor run as its own process, so a test can SIGKILL it anywhere and start it again.

The online store is the storage part's SQLite KeyValue (durable across the kills).
"""

from __future__ import annotations

import sys

from mlscale.storage.sqlite import SQLiteKeyValue
from mlscale.streams.connect import open_broker
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.processor import StreamProcessor

FEATURES = [
    WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="10s",
        allowed_lateness="5s",
        aggregations=["count", "sum(amount)", "mean(amount)", "max(amount)", "distinct_count(item)"],
        dedup_key="id",
    ),
    WindowedFeature(
        name="visits",
        source="orders",
        entity_key="user",
        window="session",
        gap="3s",
        allowed_lateness="5s",
        aggregations=["count", "last(amount)"],
        dedup_key="id",
    ),
]


def FileKeyValue(path: str):
    return SQLiteKeyValue(path)


def main(folder: str, idle_exit: str, url: str, prefix: str) -> None:
    broker = open_broker(url, partitions=4, key_fields={"orders": "user"}, member_ttl=0.5, prefix=prefix)
    proc = StreamProcessor(
        broker,
        FEATURES,
        FileKeyValue(f"{folder}/online.db"),
        f"{folder}/ckpt.db",
        consumer="worker",
        batch_size=97,
        checkpoint_interval=0.02,
    )
    print("ready", flush=True)
    proc.run(idle_exit=float(idle_exit))


if __name__ == "__main__":
    main(*sys.argv[1:5])
