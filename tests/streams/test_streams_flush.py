"""When the processor writes to the online store: coalesced under a backlog, at once when caught up."""

from __future__ import annotations

import msgspec
import numpy as np

from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.embedded import EmbeddedBroker
from mlscale.streams.online import decode_value
from mlscale.streams.processor import StreamProcessor
from mlscale.streams.windows import TimeWindowState

FEATURE = WindowedFeature(
    name="clicks_1m", source="clicks", entity_key="user", size="1m", aggregations=["count", "sum(n)"]
)
T0 = 1_700_000_000.0


class CountingStore(MemoryKeyValue):
    """The in-process store, counting how many rows each (conditional) write call wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def set_many_if_newer(self, items, versions, ttl=None) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(len(items))
        super().set_many_if_newer(items, versions, ttl=ttl)


def _processor(tmp_path, sink, **kw) -> tuple[EmbeddedBroker, StreamProcessor]:
    broker = EmbeddedBroker(tmp_path / "log.db", partitions=1, key_fields={"clicks": "user"})
    proc = StreamProcessor(broker, [FEATURE], sink, tmp_path / "ckpt.db", **kw)
    return broker, proc


def _value(sink, user: str, t: float) -> dict | None:
    start = int(t * 1000) - int(t * 1000) % 60_000
    raw = sink.get(f"clicks_1m|{user}|{start}".encode())
    return None if raw is None else decode_value(raw)


def test_a_backlog_is_written_once_per_window_not_once_per_batch(tmp_path):
    sink = CountingStore()
    broker, proc = _processor(tmp_path, sink, batch_size=100, flush_interval=3600, checkpoint_interval=3600)
    broker.append("clicks", [{"user": "u1", "ts": T0 + i / 1000, "n": 1} for i in range(1000)])
    batches = 0
    while _value(sink, "u1", T0) is None:
        assert proc.step(timeout=0.05).processed in (0, 100)
        batches += 1
        assert batches <= 11, "ten full batches and one empty fetch must have flushed"
    # ten batches touched the same window; it was written once, with every event in it
    assert sink.calls == [1]
    assert _value(sink, "u1", T0)["count"] == 1000


def test_a_caught_up_processor_writes_each_batch_at_once(tmp_path):
    sink = CountingStore()
    broker, proc = _processor(tmp_path, sink, batch_size=100, flush_interval=3600, checkpoint_interval=3600)
    for round_ in range(3):
        broker.append("clicks", [{"user": "u2", "ts": T0 + round_, "n": 2}] * 5)
        assert proc.step(timeout=0.05).processed == 5  # short fetch: nothing more is waiting
        assert _value(sink, "u2", T0)["sum_n"] == 10.0 * (round_ + 1)
    assert sink.calls == [1, 1, 1]


def test_a_restarted_processor_rewrites_what_it_had_not_flushed(tmp_path):
    """Windows changed after the last checkpoint are recomputed from the replay, not lost."""
    sink = CountingStore()
    broker, proc = _processor(
        tmp_path, sink, batch_size=50, flush_interval=3600, checkpoint_interval=3600, consumer="worker-1"
    )
    broker.append("clicks", [{"user": f"u{i % 7}", "ts": T0 + i / 100, "n": i} for i in range(400)])
    proc.step(timeout=0.05)
    proc.checkpoint()  # 50 events committed
    assert proc.step(timeout=0.05).processed == 50  # 50 more in memory only: the process "dies" here
    assert _value(sink, "u0", T0)["count"] == 8  # what the checkpoint flushed: u0's events among the first 50
    proc.close()
    _, again = _processor(tmp_path, sink, batch_size=50, consumer="worker-1")  # the same worker, restarted
    again.run(idle_exit=0.2)
    for u in range(7):
        events = [i for i in range(400) if i % 7 == u]
        assert _value(sink, f"u{u}", T0) == {
            "window_start": int(T0 * 1000) - int(T0 * 1000) % 60_000,
            "window_end": int(T0 * 1000) - int(T0 * 1000) % 60_000 + 60_000,
            "count": len(events),
            "sum_n": float(sum(events)),
        }


def test_window_state_saved_in_the_earlier_layout_restores():
    """Checkpoints written before the per-start slot tables still load (a pair list of keys)."""
    f = FEATURE.compile()
    old = msgspec.msgpack.encode(
        {
            "max_ts": 1_700_000_030_000,
            "keys": [["a", 1_699_999_980_000], [7, 1_699_999_980_000]],
            "count": np.array([3, 4], np.int64).tobytes(),
            "num": {
                "n": [np.array(x, float).tobytes() for x in ([6, 8], [1, 1], [3, 3])]
                + [np.array([1, 2], np.int64).tobytes(), np.array([3.0, 2.0]).tobytes()]
            },
            "sets": {},
        }
    )
    state = TimeWindowState(f)
    state.restore(old)
    state.dirty[:] = state.count > 0
    puts, _ = state.drain()
    values = {k.decode(): msgspec.json.decode(v) for k, v in puts.items()}
    assert values["clicks_1m|a|1699999980000"]["sum_n"] == 6.0
    assert values["clicks_1m|7|1699999980000"]["count"] == 4
