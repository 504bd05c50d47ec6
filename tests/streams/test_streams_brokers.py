"""Every broker backend: order per key, ack and resume after a restart, takeover from a dead member."""

from __future__ import annotations

import time

import msgspec
import pytest

from mlscale.errors import InvalidInput


def _drain(broker, group, consumer, want, deadline=10.0):
    got = []
    end = time.monotonic() + deadline
    while len(got) < want and time.monotonic() < end:
        got.extend(broker.read("events", group, consumer, max_records=500, timeout=0.2))
    return got


def test_records_of_one_key_arrive_in_append_order(broker_factory):
    broker = broker_factory(partitions=4, key_fields={"events": "user"})
    records = [{"user": f"u{i % 7}", "n": i} for i in range(300)]
    offsets = broker.append("events", records[:150]) + broker.append("events", records[150:])
    assert len(offsets) == 300
    got = _drain(broker, "g", "c1", 300)
    assert len(got) == 300
    by_user: dict[str, list[int]] = {}
    for m in got:
        event = msgspec.json.decode(m.value)
        by_user.setdefault(event["user"], []).append(event["n"])
    assert all(ns == sorted(ns) for ns in by_user.values())
    assert sum(len(ns) for ns in by_user.values()) == 300
    # one user's records all live in one partition
    parts = {}
    for m in got:
        parts.setdefault(msgspec.json.decode(m.value)["user"], set()).add(m.partition)
    assert all(len(p) == 1 for p in parts.values())


def test_a_restarted_consumer_resumes_after_its_last_ack(broker_factory):
    broker = broker_factory(partitions=2, key_fields={"events": "user"})
    broker.append("events", [{"user": f"u{i}", "n": i} for i in range(40)])
    first = _drain(broker, "g", "c1", 40)
    acked = first[:25]
    broker.ack("events", "g", acked)
    committed = broker.committed("events", "g")
    assert committed  # acked offsets are visible to the group
    broker.close()

    again = broker_factory(partitions=2, key_fields={"events": "user"})
    rest = _drain(again, "g", "c1", 15)
    rest += again.read("events", "g", "c1", max_records=500, timeout=0.1)
    seen = {(m.partition, m.offset) for m in rest}
    # everything not acknowledged comes back; nothing acknowledged at or below the committed offset does
    unacked = {(m.partition, m.offset) for m in first[25:]}
    top_acked = {p: max(m.offset for m in acked if m.partition == p) for p in {m.partition for m in acked}}
    assert unacked <= seen
    assert all(off > top_acked.get(p, -1) for p, off in seen)


def test_a_live_member_takes_over_the_partitions_of_a_dead_one(broker_factory):
    a = broker_factory(partitions=6, key_fields={"events": "user"}, member_ttl=0.6)
    b = broker_factory(partitions=6, key_fields={"events": "user"}, member_ttl=0.6)
    assert set(a.assignment("events", "g", "a")) | set(b.assignment("events", "g", "b"))
    time.sleep(0.01)
    a._last_beat.clear()
    b._last_beat.clear()
    owned_a = set(a.assignment("events", "g", "a"))
    owned_b = set(b.assignment("events", "g", "b"))
    assert owned_a and owned_b and not owned_a & owned_b
    assert owned_a | owned_b == set(range(6))

    a.append("events", [{"user": f"u{i}", "n": i} for i in range(120)])
    got_a = _drain(a, "g", "a", 1, deadline=3.0)
    assert got_a  # a holds some records it will never acknowledge: it "dies" now
    # b alone is live once a's heartbeat expires; it gets every record, a's unacknowledged ones included
    end = time.monotonic() + 10
    seen = set()
    while time.monotonic() < end and len(seen) < 120:
        msgs = b.read("events", "g", "b", max_records=500, timeout=0.2)
        b.ack("events", "g", msgs)
        seen |= {msgspec.json.decode(m.value)["n"] for m in msgs}
    assert seen == set(range(120))
    assert set(b.assignment("events", "g", "b")) == set(range(6))


def test_fetch_columns_returns_what_fetch_does_and_resumes_after_any_offset(broker_factory):
    """The processor's columnar read against the record-per-Message one, from the start and from the
    middle of each partition (a checkpoint's offset), over backends with their own fast path."""
    broker = broker_factory(partitions=3, key_fields={"events": "user"})
    records = [{"user": f"u{i % 50}", "n": i, "note": "é" * (i % 3)} for i in range(300)]
    broker.append("events", records)
    start = {p: -1 for p in range(3)}
    by_fetch: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(3)}
    for m in broker.fetch("events", start, 1_000):
        by_fetch[m.partition].append((m.offset, bytes(m.value)))
    assert sum(map(len, by_fetch.values())) == 300

    def columns(positions: dict[int, int]) -> dict[int, list[tuple[int, bytes]]]:
        got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in positions}
        for p, offsets, values in broker.fetch_columns("events", positions, 1_000):
            assert offsets == sorted(offsets)
            got[p] += [(o, bytes(v)) for o, v in zip(offsets, values, strict=True)]
        return got

    assert columns(start) == by_fetch
    assert all(by_fetch.values()), "50 users over 3 partitions fill each"
    middle = {p: rows[len(rows) // 2][0] for p, rows in by_fetch.items()}
    assert columns(middle) == {p: [r for r in rows if r[0] > middle[p]] for p, rows in by_fetch.items()}


def test_a_record_that_is_neither_object_nor_bytes_is_refused(broker_factory):
    broker = broker_factory(partitions=1)
    with pytest.raises(InvalidInput, match="record 1"):
        broker.append("events", [{"ok": 1}, 42])


@pytest.mark.parametrize(
    ("url", "message"),
    [("nats://127.0.0.1:4222?replicas=9", "replicas must be 1 to 5"), ("nats://127.0.0.1:4222?replica=3", "unknown")],
)
def test_a_nats_url_with_a_bad_option_is_a_config_error(url, message):
    from mlscale.errors import ConfigError
    from mlscale.streams.nats_jetstream import NatsBroker

    with pytest.raises(ConfigError, match=message):
        NatsBroker(url)
