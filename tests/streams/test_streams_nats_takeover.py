"""NATS JetStream as users run it: `mlscale stream produce` calls fed live while processors are SIGKILLed
and a second one takes the partitions over, on a private nats-server (killing things there disturbs
no one else). Clients retry: 1% of the events are delivered again in a later call. Every produce call
must succeed; the windows of a feature without a dedup key must equal the DuckDB backfill of every
delivery, those of a feature with ``dedup_key = "id"`` must count each event once; and a clean exit
leaves no consumer behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from mlscale.storage.sqlite import SQLiteKeyValue
from mlscale.streams.batch import compute, write_events
from mlscale.streams.definitions import WindowedFeature
from mlscale.streams.online import decode_value

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

FEATURES = [
    WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="10s",
        allowed_lateness="5s",
        aggregations=["count", "sum(amount)", "max(amount)", "distinct_count(item)"],
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
CONFIG = """
[streams]
broker = "{url}"
partitions = 4
member_ttl = 1.0
checkpoint_interval = 0.5
online = "sqlite:///online.db"
{features}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_nats(tmp_path):
    """A nats-server with JetStream of this test's own, on a free port, storing in the test's folder."""
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip("nats-server is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "nats-server did not start"
        assert server.poll() is None, "nats-server exited"
        time.sleep(0.02)
    yield f"nats://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


def _consumers(url: str) -> dict[str, list[str]]:
    """Descriptions of the consumers per stream on the server, straight from the JetStream API."""
    import nats

    async def go() -> dict[str, list[str]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            out = {}
            for info in await js.streams_info():
                names = [c.config.description or c.name for c in await js._jsm.consumers_info(info.config.name)]
                out[info.config.name] = names
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def _toml_features() -> str:
    out = []
    for f in FEATURES:
        fields = msgspec.structs.asdict(f)
        lines = ["[[streams.features]]"]
        for k, v in fields.items():
            if v is not None:
                lines.append(f"{k} = {msgspec.json.encode(v).decode()}")
        out.append("\n".join(lines))
    return "\n".join(out)


def _events(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "user": f"u{rng.randrange(300)}",
            "ts": 1_700_000_000 + i * 0.004 - rng.random() * 3,  # disorder up to 3 s, lateness 5 s
            "amount": float(rng.randrange(1000)),
            "item": f"i{rng.randrange(20)}",
        }
        for i in range(n)
    ]


def test_live_produce_with_kills_and_takeover_loses_nothing_and_leaves_no_consumers(private_nats, tmp_path):
    from mlscale.streams.connect import open_broker

    (tmp_path / "mlscale.toml").write_text(CONFIG.format(url=private_nats, features=_toml_features()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    cli = [sys.executable, "-m", "mlscale"]

    def processor(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*cli, "stream", "run", "--quiet", "--consumer", name],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    events = _events(24_000, seed=19)
    chunks = [events[i : i + 3_000] for i in range(0, len(events), 3_000)]
    rng = random.Random(7)
    for i in range(1, len(chunks)):  # retries of the previous call's events, seconds later
        chunks[i] = chunks[i] + rng.sample(chunks[i - 1], 30)
    procs = {"a": processor("a"), "b": processor("b")}
    produced = []
    try:
        for i, chunk in enumerate(chunks):
            path = tmp_path / f"chunk{i}.jsonl"
            path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in chunk))
            r = subprocess.run(
                [*cli, "stream", "produce", "orders", str(path)], cwd=tmp_path, env=env, capture_output=True, timeout=60
            )
            assert r.returncode == 0, f"produce call {i} failed: {r.stderr.decode()[-1500:]}"
            produced.extend(chunk)
            if i == 2:
                procs["a"].send_signal(signal.SIGKILL)  # b takes a's partitions over
                procs["a"].wait()
            if i == 4:
                procs["a"] = processor("a")  # a comes back and takes its share again
            if i == 6:
                procs["b"].send_signal(signal.SIGKILL)
                procs["b"].wait()
        broker = open_broker(private_nats, partitions=4, key_fields={"orders": "user"})
        try:
            deadline = time.monotonic() + 90
            while broker.lag("orders", "mlscale-features") > 0:
                assert time.monotonic() < deadline, "the processor did not catch up"
                assert procs["a"].poll() is None, procs["a"].stderr.read().decode()[-1500:]
                time.sleep(0.2)
        finally:
            broker.close()
        clean_pid = procs["a"].pid
        procs["a"].send_signal(signal.SIGTERM)  # a clean exit: checkpoint, leave, close
        _, err = procs["a"].communicate(timeout=30)
        assert procs["a"].returncode == 0, err.decode()[-1500:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    # The clean exit left no consumer of its own; membership and offsets never make any. (Readers of
    # the SIGKILLed processors go away by themselves after their inactive threshold.)
    consumers = _consumers(private_nats)
    assert [name for names in consumers.values() for name in names if f"pid {clean_pid}" in name] == []
    assert {s: names for s, names in consumers.items() if s.startswith("KV_") and names} == {}

    assert len(produced) == len(events) + 30 * (len(chunks) - 1)
    kv = SQLiteKeyValue(str(tmp_path / "online.db"))
    check = open_broker(private_nats, partitions=4, key_fields={"orders": "user"})
    try:
        # Dead letters are at-least-once (a replay after a kill may repeat one): one per source position.
        positions: dict[tuple, int] = {}
        pos = dict.fromkeys(range(4), -1)
        while batches := check.fetch_columns("orders-dead-letters", pos, 10_000):
            for p, offs, vals in batches:
                pos[p] = offs[-1]
                for v in vals:
                    d = msgspec.json.decode(v)
                    positions[(d["feature"], d["partition"], d["offset"])] = d["record"]["id"]
        late = Counter((feature, event_id) for (feature, _, _), event_id in positions.items())
    finally:
        check.close()
    for feature in FEATURES:
        skip = Counter({k: n for k, n in late.items() if k[0] == feature.name})
        accepted = []  # every delivery but the dead-lettered ones (copies are identical: any will do)
        for e in produced:
            if skip[(feature.name, e["id"])] > 0:
                skip[(feature.name, e["id"])] -= 1
            else:
                accepted.append(e)
        folder = tmp_path / f"ref-{feature.name}"
        folder.mkdir()
        write_events(accepted, folder / "events.parquet")
        f = feature.compile()
        expected = {
            f.online_key(r["e"], r["window_start"]): r for r in compute(f, folder / "events.parquet").to_pylist()
        }
        got = {k: decode_value(kv.get(k)) for k in kv.scan(f.name.encode() + b"|")}
        assert set(got) == set(expected), feature.name
        counted = sum(v["count"] for v in got.values())
        if feature.dedup_key:  # brute force: each accepted event once, however often it was sent
            assert counted == len({e["id"] for e in accepted})
        else:  # each delivery once
            assert counted == len(accepted)
        for key, value in got.items():
            for name, v in value.items():
                assert v == expected[key][name], (key, name, v, expected[key][name])
    kv.close()


def test_an_append_the_server_does_not_acknowledge_says_what_it_appended_and_a_rerun_adds_only_the_rest(
    private_nats, tmp_path
):
    from mlscale.streams.broker import AppendIncomplete
    from mlscale.streams.nats_jetstream import NatsBroker

    server_pid = next(
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and Path(f"/proc/{pid}/cmdline").exists()
        and str(tmp_path / "nats").encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    events = _events(40_000, seed=3)
    broker = NatsBroker(private_nats, partitions=4, key_fields={"orders": "user"}, append_timeout=1.5)
    try:
        broker.append("orders", events[:10])  # the stream exists before the server is paused
        os.kill(server_pid, signal.SIGSTOP)  # the server stalls: no acknowledgement comes
        try:
            with pytest.raises(AppendIncomplete) as info:
                broker.append("orders", events, call_id="file.jsonl:1")
        finally:
            os.kill(server_pid, signal.SIGCONT)
        err = info.value
        assert err.total == 40_000 and 0 <= err.appended < 40_000
        assert f"appended {err.appended} of 40000" in str(err) and "again" in str(err)
    finally:
        broker.close()
    # The user runs the same call again (a new process): every record is in the log exactly once.
    again = NatsBroker(private_nats, partitions=4, key_fields={"orders": "user"})
    try:
        offsets = again.append("orders", events, call_id="file.jsonl:1")
        assert len(set(offsets)) == 40_000
        ids = []
        pos = dict.fromkeys(range(4), -1)
        while batches := again.fetch_columns("orders", pos, 50_000):
            for p, offs, vals in batches:
                pos[p] = offs[-1]
                ids.extend(msgspec.json.decode(v)["id"] for v in vals)
        assert sorted(ids) == sorted([e["id"] for e in events[:10]] + [e["id"] for e in events])
        assert again.lag("orders", "nobody") > 0 and again.committed("orders", "nobody") == {}
    finally:
        again.close()


def test_a_partly_refused_append_names_the_count_and_its_rerun_stores_each_record_once(private_nats):
    import nats
    from nats.js import api

    from mlscale.streams.broker import AppendIncomplete
    from mlscale.streams.nats_jetstream import NatsBroker

    async def limit(max_msgs: int) -> None:
        nc = await nats.connect(private_nats)
        js = nc.jetstream()
        config = api.StreamConfig(
            name="mlscale_orders",
            subjects=["mlscale.orders.*"],
            duplicate_window=120,
            max_msgs=max_msgs,
            discard=api.DiscardPolicy.NEW,
        )
        try:
            await js.update_stream(config)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        await nc.close()

    asyncio.run(limit(3))  # the server refuses every message after the third
    events = _events(30_000, seed=5)
    broker = NatsBroker(private_nats, partitions=4, key_fields={"orders": "user"}, append_timeout=2)
    try:
        with pytest.raises(AppendIncomplete) as info:
            broker.append("orders", events, call_id="batch-7")
        appended = info.value.appended
        assert 0 < appended < 30_000 and f"appended {appended} of 30000" in str(info.value)
        asyncio.run(limit(-1))
        offsets = broker.append("orders", events, call_id="batch-7")  # the same call again: only the rest
        ids = []
        pos = dict.fromkeys(range(4), -1)
        while batches := broker.fetch_columns("orders", pos, 50_000):
            for p, offs, vals in batches:
                pos[p] = offs[-1]
                ids.extend(msgspec.json.decode(v)["id"] for v in vals)
        assert sorted(ids) == list(range(30_000))
        assert len(set(offsets)) == 30_000
    finally:
        broker.close()


def test_fetch_resumes_inside_a_packed_message_and_fills_a_batch_from_one_hot_partition(private_nats):
    from mlscale.streams.broker import partition_for
    from mlscale.streams.nats_jetstream import SHIFT, NatsBroker

    rng = random.Random(11)
    # One entity holds 90% of the rows (TESTDATA: "one entity with most of the rows").
    events = [{"id": i, "user": "hot" if rng.random() < 0.9 else f"u{rng.randrange(50)}"} for i in range(9_000)]
    broker = NatsBroker(private_nats, partitions=4, key_fields={"ev": "user"})
    try:
        offsets = broker.append("ev", events[:4_000]) + broker.append("ev", events[4_000:])
        by_offset = dict(zip(offsets, events, strict=True))
        assert len({o >> SHIFT for o in offsets}) < 20  # packed: thousands of records, a few messages
        # The idle partitions' share goes to the hot one: a batch fills (once the server has answered
        # within the fetch's short poll; a late answer waits in the subscription for the next fetch).
        pos, sizes = dict.fromkeys(range(4), -1), []
        while (not sizes or sizes[-1] < 5_000) and len(sizes) < 10:
            batches = broker.fetch_columns("ev", pos, 5_000)
            for q, offs, _ in batches:
                pos[q] = offs[-1]
            sizes.append(sum(len(offs) for _, offs, _ in batches))
        assert sizes[-1] == 5_000, sizes
        # A reader starting at any offset, inside a message or on its last record, gets exactly what follows.
        p = partition_for(b"hot", 4)
        hot = sorted(o for o, e in by_offset.items() if partition_for(e["user"].encode(), 4) == p)
        for start in (hot[0], hot[1234], hot[2047], hot[2048], hot[-2]):
            again = NatsBroker(private_nats, partitions=4, key_fields={"ev": "user"})
            try:
                got = []
                pos = {p: start}
                while batches := again.fetch_columns("ev", pos, 3_000):
                    for _, offs, vals in batches:
                        pos[p] = offs[-1]
                        got.extend(zip(offs, vals, strict=True))
                assert [o for o, _ in got] == [o for o in hot if o > start]
                assert [msgspec.json.decode(v)["id"] for _, v in got] == [by_offset[o]["id"] for o in hot if o > start]
            finally:
                again.close()
    finally:
        broker.close()


def test_membership_is_one_compare_and_set_key_that_concurrent_heartbeats_never_lose(private_nats):
    import threading

    import nats

    from mlscale.streams.nats_jetstream import NatsBroker

    brokers = {name: NatsBroker(private_nats, partitions=4, member_ttl=30) for name in "abcd"}
    try:
        seen: dict[str, list[str]] = {}

        def beat(name: str) -> None:
            for _ in range(15):
                seen[name] = brokers[name]._heartbeat("ev", "g", name)

        threads = [threading.Thread(target=beat, args=(n,)) for n in brokers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert brokers["a"]._heartbeat("ev", "g", "a") == ["a", "b", "c", "d"]
        brokers["b"].leave("ev", "g", "b")
        assert brokers["a"]._heartbeat("ev", "g", "a") == ["a", "c", "d"]

        async def purge_key() -> None:  # an operator deletes the key: members write it again
            nc = await nats.connect(private_nats)
            kv = await nc.jetstream().key_value("mlscale_members")
            await kv.delete("ev.g")
            await nc.close()

        asyncio.run(purge_key())
        assert brokers["c"]._heartbeat("ev", "g", "c") == ["c"]
        assert brokers["d"]._heartbeat("ev", "g", "d") == ["c", "d"]
        assert _consumers(private_nats)["KV_mlscale_members"] == []  # heartbeats made no consumer
    finally:
        for b in brokers.values():
            b.close()


def test_two_calls_without_a_call_id_are_both_stored_even_when_identical(private_nats):
    """Publish dedup protects retries of one call; a client sending the same events twice on purpose
    (or two clients sending equal events) gets both stored, as on every other broker."""
    from mlscale.streams.nats_jetstream import NatsBroker

    events = _events(500, seed=9)
    broker = NatsBroker(private_nats, partitions=2, key_fields={"twice": "user"})
    try:
        first = broker.append("twice", events)
        second = broker.append("twice", events)
        assert len(set(first) | set(second)) == 1_000
        pos = dict.fromkeys(range(2), -1)
        count = 0
        while batches := broker.fetch_columns("twice", pos, 5_000):
            for p, offs, _ in batches:
                pos[p] = offs[-1]
                count += len(offs)
        assert count == 1_000
    finally:
        broker.close()
