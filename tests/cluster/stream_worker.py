"""A stream processor host for tests/cluster/test_cluster_streams.py, run inside a namespace host.

``python stream_worker.py '<json config>'``: events from Redis Streams, windows into the Redis
Cluster, checkpoints in PostgreSQL. It prints one JSON line when its partitions change or it finds
itself fenced (and every half second): ``{"t": wall time, "owned": [...], "fenced": [...],
"processed": n}``, ``fenced`` being the partitions whose epoch in the checkpoint store moved while
this processor held them (another host took them over while this one was cut off), as the
processor's own fencing checks saw them. An error (a store unreachable) is printed and the
processor made again, as an orchestrator would restart it; SIGTERM stops it after a final checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable

from mlscale.storage.redis_store import RedisClusterKeyValue
from mlscale.streams.checkpoint_postgres import PostgresCheckpoints
from mlscale.streams.connect import open_broker
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.processor import StreamProcessor

FEATURE = WindowedFeature(
    name="spend", source="orders", entity_key="user", size="2s", aggregations=["count", "sum(amount)"], dedup_key="id"
)


class WatchedCheckpoints(PostgresCheckpoints):
    """Notes each partition the processor holds at an epoch the store no longer has (it is fenced)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.held: Callable[[], dict[int, int]] = dict  # partition -> epoch the processor holds now
        self.fenced: set[int] = set()

    def epochs(self, name: str) -> dict[int, int]:
        current = super().epochs(name)
        self.fenced.update(p for p, epoch in self.held().items() if current.get(p) != epoch)
        return current

    def commit(self, name: str, updates: dict) -> list[int]:
        refused = super().commit(name, updates)
        self.fenced.update(refused)
        return refused


def main() -> None:
    cfg = json.loads(sys.argv[1])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    broker = open_broker(cfg["broker"], partitions=cfg["partitions"], member_ttl=cfg["member_ttl"],
                         key_fields={"orders": "user"}, prefix=cfg["prefix"])  # fmt: skip
    sink = RedisClusterKeyValue(cfg["sink"], timeout=cfg["timeout"], prefix=cfg["prefix"].encode())
    checkpoints = WatchedCheckpoints(cfg["checkpoints"])
    topic, consumer, group = "orders", cfg["consumer"], cfg["group"]
    state = {"owned": [], "processed": 0, "reported": 0.0}

    def say(**fields: object) -> None:
        print(json.dumps({"t": time.time(), **fields}), flush=True)

    print(json.dumps({"t": time.time(), "ready": consumer}), flush=True)
    while not stopping.is_set():
        proc = StreamProcessor(broker, [FEATURE], sink, checkpoints, group=group, consumer=consumer,
                               batch_size=200, checkpoint_interval=0.3, flush_interval=0.2)  # fmt: skip
        checkpoints.held = lambda proc=proc: {p: part.epoch for p, part in proc.parts[topic].items()}

        def on_step(res, proc=proc) -> None:
            state["processed"] += res.processed
            owned = sorted(proc.parts[topic])
            fenced, checkpoints.fenced = sorted(checkpoints.fenced), set()
            now = time.monotonic()
            if owned != state["owned"] or fenced or now - state["reported"] >= 0.5:
                state["reported"] = now
                say(owned=owned, fenced=fenced, processed=state["processed"])
            state["owned"] = owned

        try:
            proc.run(stop=stopping.is_set, on_step=on_step, poll_timeout=0.1)
        except Exception as exc:  # a store or the broker unreachable: restart, from the checkpoints
            state["owned"] = []
            say(error=f"{type(exc).__name__}: {exc}"[:300])
            stopping.wait(0.2)
    say(stopped=consumer, processed=state["processed"])


if __name__ == "__main__":
    main()
