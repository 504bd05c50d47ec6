"""Reading the current window of an entity back from the online store."""

from __future__ import annotations

import pytest

from mlscale.errors import InvalidInput
from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams import StreamProcessor, WindowedFeature, online_values, sessions
from mlscale.streams.embedded import EmbeddedBroker


def _run(features, events):
    broker = EmbeddedBroker(":memory:", partitions=2, key_fields={"ev": "user"})
    broker.append("ev", events)
    kv = MemoryKeyValue()
    StreamProcessor(broker, features, kv, ":memory:").run(idle_exit=0.0)
    return kv


def test_online_values_reads_the_window_containing_the_given_time():
    tumbling = WindowedFeature(name="t", source="ev", entity_key="user", size="10s", aggregations=["count"])
    hopping = WindowedFeature(
        name="h", source="ev", entity_key="user", window="hopping", size="10s", slide="5s", aggregations=["count"]
    )
    events = [{"user": "a", "ts": t} for t in (100.0, 101.0, 107.0, 112.0)]
    kv = _run([tumbling, hopping], events)
    assert [v["count"] for v in online_values(kv, tumbling, ["a"], at=105.0)] == [3]
    assert online_values(kv, tumbling, ["a", "nobody"], at=113.0)[0]["count"] == 1
    assert online_values(kv, tumbling, ["nobody"], at=113.0) == [None]
    # hopping: the newest window containing 108 s is [105, 115): events at 107 and 112
    assert online_values(kv, hopping, ["a"], at=108.0)[0]["count"] == 2


def test_sessions_are_read_by_scan_and_refused_by_point_reads():
    feature = WindowedFeature(
        name="s", source="ev", entity_key="user", window="session", gap="5s", aggregations=["count"]
    )
    kv = _run([feature], [{"user": "a", "ts": t} for t in (100.0, 103.0, 120.0)])
    assert [(s["window_start"], s["count"]) for s in sessions(kv, feature, "a")] == [(100_000, 2), (120_000, 1)]
    with pytest.raises(InvalidInput, match="session"):
        online_values(kv, feature, ["a"])
