"""Stream processing benchmark: events/s through a 1-minute tumbling count/sum/mean per key over
100,000 keys into the online store, on each broker, beside a plain Python consumer loop (same
aggregation, no guarantees) and Bytewax 0.21 (its own venv, if it installs); plus end-to-end
freshness (event appended -> feature readable) p99 at 10,000 events/s.

    python bench/streams/run.py            # full run (the lead, on a quiet machine)
    python bench/streams/run.py --quick    # small scale, checks that everything works
    python bench/streams/run.py --brokers nats --no-bytewax --events 1000000   # NATS produce + process only
    python bench/streams/run.py --dedup    # events carry an id, 1% are resent; the feature drops them

Produce is measured as ``broker.append`` of 20,000 pre-encoded records a call (routing, packing,
publishing and waiting for every acknowledgement), process as the exactly-once processor reading it back.

Prints one markdown table. Brokers whose service is not running are skipped (said so in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from mlscale.storage import open_store  # noqa: E402
from mlscale.streams.connect import open_broker  # noqa: E402
from mlscale.streams.definitions import WindowedFeature  # noqa: E402
from mlscale.streams.processor import StreamProcessor  # noqa: E402

FEATURE = WindowedFeature(
    name="spend_1m",
    source="bench",
    entity_key="user",
    size="1m",
    aggregations=["count", "sum(amount)", "mean(amount)"],
)
T0 = 1_700_000_000.0


def make_events(n: int, keys: int, seed: int = 1, retries: float = 0.0) -> tuple[list[bytes], list[str]]:
    """``n`` events; with ``retries``, each carries an ``id`` and that share is sent again ~100 records later."""
    rng = random.Random(seed)
    enc = msgspec.json.encode
    users = [f"u{rng.randrange(keys)}" for _ in range(n)]
    # 10,000 events per second of event time: windows close as the stream advances
    values = [
        enc({"user": u, "ts": T0 + i / 10_000, "amount": round(rng.random() * 100, 2)} | ({"id": i} if retries else {}))
        for i, u in enumerate(users)
    ]
    if retries:
        again = sorted(rng.sample(range(n), int(n * retries)), reverse=True)
        for i in again:  # from the end, so earlier positions stay valid
            at = min(n, i + rng.randrange(50, 150))
            values.insert(at, values[i])
            users.insert(at, users[i])
    return values, users


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bench_broker(url: str, tmp: Path):
    """A broker in a private namespace on shared services, so the run can clean up after itself."""
    tag = uuid.uuid4().hex[:8]
    if url.startswith("redis://"):
        from mlscale.streams.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker(url, partitions=8, prefix=f"mlscale-bench-{tag}:")
    if url.startswith("nats://"):
        from mlscale.streams.nats_jetstream import NatsBroker

        return NatsBroker(url, partitions=8, prefix=f"bench{tag}")
    return open_broker(url, partitions=8, root=tmp)


def fill(broker, topic, values, users) -> float:
    start = time.perf_counter()
    for i in range(0, len(values), 20_000):
        broker.append(topic, values[i : i + 20_000], keys=users[i : i + 20_000])
    return len(values) / (time.perf_counter() - start)


def run_processor(broker, topic, online_spec, tmp, n, intervals: dict, dedup: bool = False) -> float:
    feature = msgspec.structs.replace(FEATURE, source=topic, dedup_key="id" if dedup else None)
    online = open_store(online_spec, root=tmp)
    proc = StreamProcessor(
        broker,
        [feature],
        online,
        Path(tmp) / f"ckpt-{uuid.uuid4().hex[:6]}.db",
        group=f"bench-{uuid.uuid4().hex[:6]}",
        batch_size=20_000,
        **intervals,
    )
    done = [0]

    def on_step(res):
        done[0] += res.processed

    start = time.perf_counter()
    proc.run(stop=lambda: done[0] >= n, on_step=on_step)
    elapsed = time.perf_counter() - start
    proc.close()
    online.close()
    return done[0] / elapsed


def plain_loop(broker, topic, online_spec, tmp, n) -> float:
    """The naive consumer: json.loads per event, dict of (user, window) -> [count, sum], no checkpoints."""
    online = open_store(online_spec, root=tmp)
    positions = dict.fromkeys(range(broker.partitions), -1)
    agg: dict[tuple, list] = {}
    seen = 0
    start = time.perf_counter()
    while seen < n:
        batches = broker.fetch_columns(topic, positions, 20_000)
        changed = set()
        for p, offsets, values in batches:
            positions[p] = offsets[-1]
            for raw in values:
                e = json.loads(raw)
                ts = int(e["ts"] * 1000)
                k = (e["user"], ts - ts % 60_000)
                a = agg.get(k)
                if a is None:
                    a = agg[k] = [0, 0.0]
                a[0] += 1
                a[1] += e["amount"]
                changed.add(k)
            seen += len(values)
        online.set_many(
            {
                f"plain|{u}|{w}".encode(): json.dumps(
                    {"count": agg[(u, w)][0], "sum": agg[(u, w)][1], "mean": agg[(u, w)][1] / agg[(u, w)][0]}
                ).encode()
                for u, w in changed
            }
        )
    elapsed = time.perf_counter() - start
    online.close()
    return seen / elapsed


BYTEWAX_FLOW = r"""
import json, sys, time
from datetime import datetime, timedelta, timezone
import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from bytewax.connectors.stdio import StdOutSink
from bytewax.operators.windowing import EventClock, TumblingWindower

lines = open(sys.argv[1], "rb").read().splitlines()
flow = Dataflow("bench")
s = op.input("in", flow, TestingSource(lines, batch_size=10_000))
events = op.map("decode", s, json.loads)
keyed = op.key_on("key", events, lambda e: e["user"])
clock = EventClock(lambda e: datetime.fromtimestamp(e["ts"], tz=timezone.utc), wait_for_system_duration=timedelta(0))
windower = TumblingWindower(length=timedelta(minutes=1), align_to=datetime(2023, 1, 1, tzinfo=timezone.utc))
out = win.fold_window("agg", keyed, clock, windower, lambda: [0, 0.0],
                      lambda a, e: [a[0] + 1, a[1] + e["amount"]], lambda a, b: [a[0] + b[0], a[1] + b[1]])
counted = [0]
def sink(item):
    counted[0] += 1
op.inspect("sink", out.down, lambda step, item: sink(item))
start = time.perf_counter()
run_main(flow)
print(json.dumps({"seconds": time.perf_counter() - start, "windows": counted[0]}))
"""


def bytewax_rate(values: list[bytes], tmp: Path) -> tuple[float | None, str]:
    venv = ROOT / ".cache" / "bench-venvs" / "bytewax"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "bytewax==0.21.*"], capture_output=True)
        if r.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return None, "bytewax 0.21 did not install: " + r.stderr.decode()[-200:].replace("\n", " ")
    data = tmp / "events.jsonl"
    data.write_bytes(b"\n".join(values))
    script = tmp / "flow.py"
    script.write_text(BYTEWAX_FLOW)
    r = subprocess.run([str(py), str(script), str(data)], capture_output=True, timeout=3600)
    if r.returncode != 0:
        return None, "bytewax failed: " + r.stderr.decode()[-300:].replace("\n", " ")
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    return len(values) / out["seconds"], "in memory (TestingSource), output discarded; no online store"


def freshness(url: str, tmp: Path, rate: int, seconds: float) -> tuple[float, float]:
    """p50/p99 seconds from append to the window value readable, producing ``rate`` events/s."""
    topic = f"fresh-{uuid.uuid4().hex[:6]}"
    broker = open_broker(url, partitions=8, key_fields={topic: "user"}, root=tmp)
    producer = open_broker(url, partitions=8, key_fields={topic: "user"}, root=tmp)
    online = open_store("memory://")
    feature = msgspec.structs.replace(FEATURE, source=topic)
    proc = StreamProcessor(broker, [feature], online, tmp / f"fresh-{topic}.db")
    stop = threading.Event()
    worker = threading.Thread(target=lambda: proc.run(stop=stop.is_set), daemon=True)
    worker.start()
    latencies: list[float] = []
    sent: list[tuple[bytes, float]] = []
    tick, per_tick = 0.01, max(1, rate // 100)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        now = time.time()
        events = [{"user": f"f{i + j}", "ts": now, "amount": 1.0} for j in range(per_tick)]
        producer.append(topic, events)
        t_sent = time.perf_counter()
        ws = int(now * 1000) - int(now * 1000) % 60_000
        sent.append((f"spend_1m|f{i}|{ws}".encode(), t_sent))  # one probe per tick
        i += per_tick
        for key, t in sent[:]:
            if online.get(key) is not None:
                latencies.append(time.perf_counter() - t)
                sent.remove((key, t))
        time.sleep(max(0.0, tick - (time.perf_counter() - t_sent)))
    deadline = time.perf_counter() + 5
    while sent and time.perf_counter() < deadline:
        for key, t in sent[:]:
            if online.get(key) is not None:
                latencies.append(time.perf_counter() - t)
                sent.remove((key, t))
        time.sleep(0.001)
    stop.set()
    worker.join(10)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return pick(0.5), pick(0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scale: check that it works")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--online", default="sqlite:///online.db", help="online store spec")
    parser.add_argument("--no-bytewax", action="store_true")
    parser.add_argument(
        "--brokers", default="embedded,redis,nats", help="comma-separated subset of embedded,redis,nats"
    )
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--dedup", action="store_true", help="events carry an id, 1%% are resent; the feature sets dedup_key"
    )
    parser.add_argument("--checkpoint-interval", type=float, help="seconds (default: the processor's)")
    parser.add_argument(
        "--flush-interval", type=float, help="seconds a backlog's writes wait (default: the processor's)"
    )
    parser.add_argument(
        "--cores", type=int, default=1, help="CPUs this process (and Bytewax) may use; the goal is for one core"
    )
    args = parser.parse_args()
    intervals = {
        name: value
        for name, value in (("checkpoint_interval", args.checkpoint_interval), ("flush_interval", args.flush_interval))
        if value is not None
    }
    # Everything measured here runs in this process (the broker services run on their own), so pinning
    # it holds the processor, the plain loop and Bytewax (a child inherits the mask) to the same cores.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    n = args.events or (60_000 if args.quick else 2_000_000)
    fresh_seconds = 2.0 if args.quick else 20.0
    tmp = Path(tempfile.mkdtemp(prefix="mlscale-bench-streams-"))
    values, users = make_events(n, args.keys, retries=0.01 if args.dedup else 0.0)
    rows = []
    wanted = set(args.brokers.split(","))
    backends = []
    if "embedded" in wanted:
        backends.append(("embedded log (SQLite)", f"embedded:{tmp}/log.db"))
    for kind, name, url in (("redis", "Redis Streams", args.redis_url), ("nats", "NATS JetStream", args.nats_url)):
        if kind in wanted:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            backends.append((name, url if listening(port) else None))
    embedded_rate = None
    for name, url in backends:
        if url is None:
            rows.append((name, "mlscale processor (exactly-once)", "-", "service not running"))
            continue
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        broker = bench_broker(url, tmp)
        produce = fill(broker, topic, values, users)
        rate = run_processor(broker, topic, args.online, tmp, len(values), intervals, args.dedup)
        rows.append((name, "mlscale processor (exactly-once)", f"{rate:,.0f}", f"append {produce:,.0f}/s"))
        rows.append((name, "produce (broker.append, 20,000 a call)", f"{produce:,.0f}", "every ack awaited"))
        if url.startswith("embedded"):
            embedded_rate = rate
            plain = plain_loop(broker, topic, args.online, tmp, len(values))
            rows.append((name, "plain Python loop (no guarantees)", f"{plain:,.0f}", "json.loads + dict per event"))
        if hasattr(broker, "delete_namespace"):
            broker.delete_namespace()  # a private prefix: only this run's streams and keys
        broker.close()
    if not args.no_bytewax:
        rate, note = bytewax_rate(values, tmp)
        rows.append(("(in memory)", "Bytewax 0.21", f"{rate:,.0f}" if rate else "-", note))
    p50, p99 = freshness(f"embedded:{tmp}/fresh.db", tmp, 10_000, fresh_seconds) if "embedded" in wanted else (0, 0)
    print(
        f"\n{n:,} events, {args.keys:,} keys, 1-minute tumbling count/sum/mean, online store {args.online}"
        f"{' (--quick)' if args.quick else ''}, pinned to {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, "
        f"processor intervals: {intervals or 'defaults'}"
        f"{'; --dedup: 1% resent, dropped by the processor only (rates count records read)' if args.dedup else ''}\n"
    )
    print("| broker | consumer | events/s | note |\n|---|---|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    plain_row = next((r for r in rows if r[1].startswith("plain")), None)
    if embedded_rate and plain_row:
        ratio = embedded_rate / float(plain_row[2].replace(",", ""))
        print(f"\nmlscale / plain loop on the embedded log: {ratio:.2f}x")
    bw = next((r for r in rows if r[1].startswith("Bytewax") and r[2] != "-"), None)
    if embedded_rate and bw:
        print(f"mlscale / Bytewax: {embedded_rate / float(bw[2].replace(',', '')):.2f}x")
    if "embedded" in wanted:
        print(f"\nfreshness at 10,000 events/s on the embedded log: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
