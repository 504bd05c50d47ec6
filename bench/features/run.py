"""Feature store benchmark: mlscale side by side with Feast 0.67 on the same generated data.

Data: N entities x 10 float32 features, R feature rows (timestamps spread over 30 days), and an
entity frame of M rows. Both sides use an embedded SQLite online store and files offline (mlscale:
DuckDB over Parquet, 4 SQLite shards; Feast: file offline store, sqlite online store). Measured:
online reads of 1 and 100 entities (p50, p99, in-process), materialization (source rows/s), the
point-in-time training set (s), and whether the two training sets agree value for value.
Feast runs in its own venv (.cache/bench-venvs/feast, created here when missing) in a subprocess.

Run: `.venv/bin/python bench/features/run.py` (full: 10,000 entities, 1,000,000 rows, 1,000,000-row
entity frame) or `--quick` for a small check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
FEAST_VENV = CACHE / "bench-venvs" / "feast"
N_FEATURES = 10
# Untimed reads before the timed ones, on both sides: p99 then measures the steady state, not the
# first touches of each store's pages.
WARM_READS = 200
START = datetime(2024, 1, 1, tzinfo=UTC)
TTL = timedelta(days=7)


def ensure_feast() -> Path:
    python = FEAST_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import feast"], capture_output=True).returncode:
        print("creating the Feast venv (one time)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(FEAST_VENV)], check=True)
        subprocess.run([str(FEAST_VENV / "bin" / "pip"), "install", "-q", "feast==0.67.*"], check=True)
    return python


def generate(folder: Path, n_entities: int, n_rows: int, n_frame: int) -> None:
    rng = np.random.default_rng(0)
    seconds = 30 * 86400
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(0, n_entities, n_rows).astype("int64"),
            # Distinct timestamps keep "the latest row" unambiguous for both stores.
            "event_timestamp": pd.Timestamp(START)
            + pd.to_timedelta(rng.choice(seconds * 1000, n_rows, replace=False), unit="ms"),
        }
    )
    for j in range(N_FEATURES):
        frame[f"f{j}"] = rng.random(n_rows).astype("float32")
    frame.to_parquet(folder / "driver_stats.parquet")
    entities = pd.DataFrame(
        {
            "row_id": np.arange(n_frame),
            "driver_id": rng.integers(0, n_entities, n_frame).astype("int64"),
            "event_timestamp": pd.Timestamp(START)
            + pd.to_timedelta(rng.integers(0, seconds + 86400, n_frame), unit="s"),
        }
    )
    entities.to_parquet(folder / "entity_frame.parquet")


def run_mlscale(folder: Path, n_entities: int, reads: int, end: datetime) -> tuple[dict, pd.DataFrame]:
    from mlscale.features import Entity, FeatureRepo, FeatureView, OfflineStore, OnlineStore
    from mlscale.features.materialize import materialize
    from mlscale.storage import open_store

    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="driver_stats",
        entities=[driver],
        source=str(folder / "driver_stats.parquet"),
        ttl=TTL,
        features={f"f{j}": "float32" for j in range(N_FEATURES)},
    )
    repo = FeatureRepo([driver], [view])
    shards = folder / "mlscale_online"
    shutil.rmtree(shards, ignore_errors=True)
    kv = open_store([f"sqlite:///{shards}/shard-{i}.db" for i in range(4)])
    online = OnlineStore(kv, repo, clock=lambda: end.timestamp())
    out: dict = {}
    start = time.perf_counter()
    materialize(repo, OfflineStore(repo), online, end=end)
    out["materialize_s"] = time.perf_counter() - start
    rng = np.random.default_rng(1)
    for batch in (1, 100):
        times = []
        for i in range(WARM_READS + reads):  # the first WARM_READS warm caches (Feast's side does the same)
            ids = rng.integers(0, n_entities, batch).tolist()
            t = time.perf_counter()
            online.read(["driver_stats:*"], ids)
            if i >= WARM_READS:
                times.append(time.perf_counter() - t)
        out[f"online_{batch}"] = times
    start = time.perf_counter()
    training = OfflineStore(repo).get_historical_features(folder / "entity_frame.parquet", ["driver_stats:*"])
    out["training_s"] = time.perf_counter() - start
    kv.close()
    return out, training.to_pandas()


HTTP_PROJECT = """[server]
model_repository = "models"
poll_interval = 0

[features]
registry = "http-registry.db"
online_store = {shards}

[[features.entities]]
name = "driver"
join_key = "driver_id"

# ttl 0: the server reads with the wall clock, and this data is from 2024 (the layout, and so the
# stored records, do not depend on the TTL)
[[features.views]]
name = "driver_stats"
entities = ["driver"]
source = "{source}"
ttl = 0
features = {{ {features} }}
"""


CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class LeanClient:
    """A keep-alive HTTP/1.1 client that sends each request in one write and reads the answer by its
    Content-Length: the transport's cost without a Python HTTP library's own (http.client sends
    headers and body in two writes and parses headers through the email package)."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        # recv's size is the buffer it allocates per call: 64 KiB, not 1 MiB (that alone cost ~40 us).
        self.sock.sendall(request)
        data = self.sock.recv(1 << 16)
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(1 << 16)
        head, _, body = data.partition(b"\r\n\r\n")
        match = CONTENT_LENGTH.search(head)
        if match is None:
            raise SystemExit(f"an answer without content-length: {head[:200]!r}")
        length = int(match.group(1))
        while len(body) < length:
            body += self.sock.recv(1 << 16)
        return int(head[9:12]), body

    def close(self) -> None:
        self.sock.close()


def run_http(folder: Path, n_entities: int, reads: int) -> dict:
    """POST /v1/features on `mlscale serve` (1 worker) over the online store run_mlscale filled, read
    by keep-alive clients in this process: the whole HTTP round trip, client included. Two clients:
    Python's http.client, and LeanClient (one write per request)."""
    import http.client

    from mlscale.storage.localredis import free_port

    shards = [f"sqlite:///{folder}/mlscale_online/shard-{i}.db" for i in range(4)]
    features = ", ".join(f'f{j} = "float32"' for j in range(N_FEATURES))
    (folder / "models").mkdir(exist_ok=True)
    config = folder / "mlscale-http.toml"
    config.write_text(
        HTTP_PROJECT.format(shards=json.dumps(shards), source=folder / "driver_stats.parquet", features=features)
    )
    mlscale = str(ROOT / ".venv" / "bin" / "mlscale")
    subprocess.run([mlscale, "features", "apply", "--config", str(config)], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [mlscale, "serve", "--config", str(config), "--port", str(port), "--grpc-port", "0", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().read() is not None:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("mlscale serve did not start for the HTTP feature reads") from None
                time.sleep(0.2)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        lean = LeanClient(port)
        headers = {"content-type": "application/json"}

        def with_http_client(method: str, path: str, body: bytes) -> tuple[int, bytes]:
            conn.request(method, path, body or None, headers if body else {})
            response = conn.getresponse()
            return response.status, response.read()

        def with_lean_client(method: str, path: str, body: bytes) -> tuple[int, bytes]:
            return lean.exchange(LeanClient.request_bytes(method, path, body))

        out: dict = {}
        for client, call in (("httpclient", with_http_client), ("lean", with_lean_client)):
            out[f"{client}_floor"], _ = timed(call, [("GET", "/v2/health/live", b"")] * (reads + 200))
            for batch in (1, 100):
                rng = np.random.default_rng(2)
                requests = [
                    (
                        "POST",
                        "/v1/features",
                        json.dumps({"features": ["driver_stats:*"], "entities": {"driver_id": ids}}).encode(),
                    )
                    for ids in rng.integers(0, n_entities, (reads + 200, batch)).tolist()
                ]
                out[f"{client}_{batch}"], (status, payload) = timed(call, requests)
                if status != 200:
                    raise SystemExit(f"/v1/features answered {status}: {payload[:300]!r}")
                statuses = json.loads(payload)["results"][0]["statuses"]
                if "PRESENT" not in statuses:
                    raise SystemExit(f"/v1/features found no values: {statuses[:5]}")
        lean.close()
        return out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def timed(call, requests: list[tuple[str, str, bytes]], warm: int = 200) -> tuple[list[float], tuple[int, bytes]]:
    """Seconds per ``call(*request)``, the first ``warm`` dropped (they warm the connection and the
    server's caches of plans); and the last answer."""
    times = []
    for i, request in enumerate(requests):
        t = time.perf_counter()
        answer = call(*request)
        if i >= warm:
            times.append(time.perf_counter() - t)
    return times, answer


def compare(ours: pd.DataFrame, theirs: pd.DataFrame) -> tuple[bool, float, int]:
    """Whether every feature value agrees (NaN/null equal) on the rows both returned; the fraction of
    agreeing cells; and how many entity rows Feast's answer lacks (matched by row_id)."""
    merged = ours.merge(theirs, on="row_id", suffixes=("", "_feast"))
    cells = agree = 0
    for j in range(N_FEATURES):
        a = merged[f"f{j}"].to_numpy("float64")
        b = merged[f"f{j}_feast"].to_numpy("float64")
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        cells += len(same)
        agree += int(same.sum())
    return agree == cells, agree / max(cells, 1), len(ours) - len(merged)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, few reads (a check, not a measure)")
    parser.add_argument("--entities", type=int)
    parser.add_argument("--rows", type=int, help="feature rows to materialize")
    parser.add_argument("--frame", type=int, help="rows of the entity frame")
    parser.add_argument("--reads", type=int)
    parser.add_argument("--skip-feast", action="store_true")
    args = parser.parse_args()
    n_entities = args.entities or (1_000 if args.quick else 10_000)
    n_rows = args.rows or (20_000 if args.quick else 1_000_000)
    n_frame = args.frame or (20_000 if args.quick else 1_000_000)
    reads = args.reads or (200 if args.quick else 2_000)
    folder = CACHE / "bench-features"
    folder.mkdir(parents=True, exist_ok=True)
    generate(folder, n_entities, n_rows, n_frame)
    end = START + timedelta(days=31)
    print(
        f"data: {n_entities} entities x {N_FEATURES} features, {n_rows} rows, entity frame {n_frame} rows", flush=True
    )
    ours, our_training = run_mlscale(folder, n_entities, reads, end)
    ours.update(run_http(folder, n_entities, reads))
    theirs = None
    if not args.skip_feast:
        python = ensure_feast()
        opts = {
            "n_features": N_FEATURES,
            "n_entities": n_entities,
            "reads": reads,
            "warm_reads": WARM_READS,
            "ttl_seconds": TTL.total_seconds(),
            "start": START.isoformat(),
            "end": end.isoformat(),
        }
        done = subprocess.run(
            [str(python), str(Path(__file__).with_name("feast_side.py")), str(folder), json.dumps(opts)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit("the Feast side failed")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])

    def feast_ms(batch: int, q: float) -> float | None:
        return theirs and pct(theirs[f"online_{batch}"], q)

    rows = [
        ("online, 1 entity, p50 (ms)", pct(ours["online_1"], 50), theirs and pct(theirs["online_1"], 50)),
        ("online, 1 entity, p99 (ms)", pct(ours["online_1"], 99), theirs and pct(theirs["online_1"], 99)),
        ("online, 100 entities, p50 (ms)", pct(ours["online_100"], 50), theirs and pct(theirs["online_100"], 50)),
        ("online, 100 entities, p99 (ms)", pct(ours["online_100"], 99), theirs and pct(theirs["online_100"], 99)),
        ("materialize (rows/s)", n_rows / ours["materialize_s"], theirs and n_rows / theirs["materialize_s"]),
        (f"training set, {n_frame} rows (s)", ours["training_s"], theirs and theirs["training_s"]),
        # mlscale over HTTP against Feast's SDK in-process (the second goal), with two clients
        *[
            (f"HTTP ({label}), {batch} {noun}, p{q} (ms)", pct(ours[f"{client}_{batch}"], q), feast_ms(batch, q))
            for client, label in (("lean", "lean client"), ("httpclient", "http.client"))
            for batch, noun in ((1, "entity"), (100, "entities"))
            for q in (50, 99)
        ],
    ]
    print("\n| measure | mlscale | Feast 0.67 | mlscale advantage |\n|---|---:|---:|---:|")
    for name, mine, other in rows:
        if other is None:
            print(f"| {name} | {mine:,.3f} | - | - |")
            continue
        better = mine / other if "rows/s" in name else other / mine
        print(f"| {name} | {mine:,.3f} | {other:,.3f} | {better:,.1f}x |")
    for client, label in (("lean", "lean client"), ("httpclient", "http.client")):
        print(
            f"\nHTTP floor with {label} on the same connection (GET /v2/health/live): "
            f"p50 {pct(ours[client + '_floor'], 50):.3f} ms, p99 {pct(ours[client + '_floor'], 99):.3f} ms"
        )
    if theirs is not None:
        feast_training = pq.read_table(folder / "feast_training.parquet").to_pandas()
        same, fraction, lacking = compare(our_training, feast_training)
        print(
            f"\ntraining sets agree on the rows both returned: {'yes' if same else 'no'} "
            f"({fraction:.4%} of feature values equal); Feast's answer lacks {lacking:,} of "
            f"{len(our_training):,} entity rows"
        )


if __name__ == "__main__":
    main()
