"""Prediction cache at the server: Zipf(1.1) requests over 100,000 distinct inputs at 64 connections.

Side by side in one run, same request sequence: no cache, L1 only, L1+L2 (a private Redis started
here), for the iris scikit-learn model and for a Python model that costs 5 ms per call
(max_batch_size = 1, so every request is one call). Reports throughput, p50, p99 and the hit ratio
(from the response parameter ``cache``, when the server sets it).

By default it builds a model repository under .cache/bench/cache and starts `mlscale serve` itself
for each configuration; ``--url`` instead drives one already running server (one configuration).
The load generator is an asyncio client (aiohttp) in this process; on a 2-core machine it competes
with the server for CPU, so the lead's full run should use a quiet machine (or wrk on another host).
Run: `.venv/bin/python bench/cache/serving_zipf.py` (add --quick for a short check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".cache" / "bench" / "cache"
sys.path.insert(0, str(ROOT / "src"))

from mlscale.storage.localredis import LocalRedis, free_port  # noqa: E402

SLOW_MODEL = '''
import time
import numpy as np


class Model:
    """Costs 5 ms per call, like a mid-sized network on a CPU."""

    inputs = [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    outputs = [{"name": "score", "datatype": "FP64", "shape": [-1]}]

    def predict(self, inputs):
        time.sleep(0.005)
        return {"score": inputs["input"].sum(axis=1)}
'''


def build_repository(cache: bool) -> Path:
    """Models iris (sklearn) and slow (5 ms Python); model.toml turns the cache on or off."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    repo = WORK / ("models-cached" if cache else "models-plain")
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "iris" / "1").mkdir(parents=True)
    (repo / "slow" / "1").mkdir(parents=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), repo / "iris" / "1" / "model.joblib")
    (repo / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    flag = "true" if cache else "false"
    section = f"[cache]\nenabled = {flag}\nttl = 600\nl1_max_bytes = 268435456\n"
    (repo / "iris" / "model.toml").write_text(section)
    (repo / "slow" / "model.toml").write_text('max_batch_size = 1\nexecution = "thread"\n' + section)
    return repo


def zipf_ranks(count: int, distinct: int, exponent: float, seed: int = 7) -> np.ndarray:
    """``count`` draws of ranks 0..distinct-1 with P(rank k) proportional to (k+1)^-exponent."""
    weights = np.arange(1, distinct + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights / weights.sum())
    return np.searchsorted(cdf, np.random.default_rng(seed).random(count)).astype(np.int64)


def body(rank: int) -> bytes:
    """The distinct input number ``rank``: four features derived from it (valid for both models)."""
    a, b = divmod(rank, 1000)
    row = [4.0 + a / 100, 2.0 + b / 500, 1.0 + (rank % 7) / 2, 0.1 + (rank % 13) / 10]
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": row}]}).encode()


async def drive(url: str, ranks: np.ndarray, connections: int, seconds: float) -> dict:
    """Closed loop: ``connections`` clients each send the next request as soon as one returns."""
    import aiohttp

    latencies: list[float] = []
    sources: Counter[str] = Counter()
    errors = 0
    position = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal position, errors
            while time.perf_counter() < deadline:
                rank = int(ranks[position % len(ranks)])
                position += 1
                started = time.perf_counter()
                async with session.post(url, data=body(rank), headers={"content-type": "application/json"}) as r:
                    payload = await r.read()
                latencies.append(time.perf_counter() - started)
                if r.status != 200:
                    errors += 1
                    continue
                parameters = json.loads(payload).get("parameters") or {}
                sources[str(parameters.get("cache", "none"))] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    done = len(latencies)
    hits = sum(n for s, n in sources.items() if s in ("l1", "l2", "shared"))
    return {
        "rps": done / elapsed,
        "p50": statistics.median(latencies) * 1e3 if done else float("nan"),
        "p99": latencies[min(done - 1, int(done * 0.99))] * 1e3 if done else float("nan"),
        "hit": hits / done if done else 0.0,
        "sources": dict(sources),
        "errors": errors,
    }


def start_server(repo: Path, l2: str | None, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = WORK / f"mlscale-{port}.toml"
    config.write_text(f'[cache]\nl2 = "{l2}"\n' if l2 else "")
    log = open(WORK / f"serve-{port}.log", "w")  # noqa: SIM115 - lives as long as the server
    command = [str(ROOT / ".venv" / "bin" / "mlscale"), "serve", "--model-repository", str(repo),
               "--port", str(port), "--grpc-port", "0", "--workers", str(workers), "--config", str(config)]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlscale serve exited; see {log.name}")
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return process, base
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("mlscale serve did not become ready")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs at 16 connections")
    parser.add_argument("--url", help="drive this running server instead of starting one per configuration")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell, after a warm-up of the same length")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of warm-up per cached cell (default: --seconds). A miss costs the 5 ms model a call, so "
        "the Zipf tail fills slowly: about 150,000 requests pass before fewer than 10%% of requests miss",
    )
    parser.add_argument("--distinct", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.seconds = min(args.connections, 16), 2.0
    WORK.mkdir(parents=True, exist_ok=True)
    ranks = zipf_ranks(2_000_000, args.distinct, 1.1)
    rows = []
    configs = ["running server"] if args.url else ["no cache", "L1", "L1+L2 (Redis)"]
    redis = None if args.url else LocalRedis().start()
    try:
        for label in configs:
            if args.url:
                base, process = args.url.rstrip("/"), None
            else:
                repo = build_repository(cache=label != "no cache")
                process, base = start_server(repo, redis.url if "L2" in label else None, args.workers)
            try:
                for model in ("iris", "slow"):
                    url = f"{base}/v2/models/{model}/infer"
                    # Warm-up fills the caches the way a long-running server's would be; with no cache
                    # there is nothing to fill, so a short one (connections, first calls) is enough.
                    warmup = args.warmup or args.seconds
                    if label == "no cache":
                        warmup = min(warmup, 5.0)
                    asyncio.run(drive(url, ranks, args.connections, warmup))
                    result = asyncio.run(drive(url, ranks[len(ranks) // 2 :], args.connections, args.seconds))
                    rows.append((model, label, result))
                    print(f"{model:5} {label:14} {result}", file=sys.stderr)
            finally:
                if process is not None:
                    stop_server(process)
    finally:
        if redis is not None:
            redis.stop()
    print(
        f"\n### Zipf(1.1) over {args.distinct} inputs, {args.connections} connections, {args.seconds:.0f} s per cell"
        f" after {args.warmup or args.seconds:.0f} s of warm-up (5 s without a cache)\n"
    )
    print("| model | cache | req/s | p50 ms | p99 ms | hit ratio | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model, label, r in rows:
        print(
            f"| {model} | {label} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['hit']:.2f} | {r['errors']} |"
        )
    base_rps = {m: r["rps"] for m, label, r in rows if label == "no cache"}
    for model, label, r in rows:
        if label != "no cache" and model in base_rps:
            print(f"{model} {label}: {r['rps'] / base_rps[model]:.1f}x the uncached throughput")


if __name__ == "__main__":
    main()
