"""A stream processor host for tests/cluster/test_cluster_streams.py, run inside a namespace host.

``python stream_worker.py '<json config>'``: events from Redis Streams, windows into the Redis
Cluster, checkpoints in PostgreSQL. It prints one JSON line when its partitions change (and every
half second): ``{"t": wall time, "owned": [...], "dropped": [...], "processed": n}``, ``dropped``
being partitions it lost without its group membership moving them (fenced: another host took them
over while this one was cut off). An error (a store unreachable) is printed and the processor made
again, as an orchestrator would restart it; SIGTERM stops it after a final checkpoint.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from mlscale.storage.redis_store import RedisClusterKeyValue
from mlscale.streams.checkpoint_postgres import PostgresCheckpoints
from mlscale.streams.connect import open_broker
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.processor import StreamProcessor

FEATURE = WindowedFeature(
    name="spend", source="orders", entity_key="user", size="2s", aggregations=["count", "sum(amount)"], dedup_key="id"
)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    broker = open_broker(cfg["broker"], partitions=cfg["partitions"], member_ttl=cfg["member_ttl"],
                         key_fields={"orders": "user"}, prefix=cfg["prefix"])  # fmt: skip
    sink = RedisClusterKeyValue(cfg["sink"], timeout=cfg["timeout"], prefix=cfg["prefix"].encode())
    checkpoints = PostgresCheckpoints(cfg["checkpoints"])
    topic, consumer, group = "orders", cfg["consumer"], cfg["group"]
    state = {"owned": [], "processed": 0, "reported": 0.0}

    def say(**fields: object) -> None:
        print(json.dumps({"t": time.time(), **fields}), flush=True)

    print(json.dumps({"t": time.time(), "ready": consumer}), flush=True)
    while not stopping.is_set():
        proc = StreamProcessor(broker, [FEATURE], sink, checkpoints, group=group, consumer=consumer,
                               batch_size=200, checkpoint_interval=0.3, flush_interval=0.2)  # fmt: skip

        def on_step(res, proc=proc) -> None:
            state["processed"] += res.processed
            owned = sorted(proc.parts[topic])
            assigned = set(broker.assignment(topic, group, consumer))
            dropped = sorted(set(state["owned"]) - set(owned) & assigned)
            now = time.monotonic()
            if owned != state["owned"] or dropped or now - state["reported"] >= 0.5:
                state["reported"] = now
                say(owned=owned, dropped=dropped, processed=state["processed"])
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
