"""Tenant interference: how much one tenant's burst pushes up another tenant's latency tail.

Tenant B sends a steady trickle; tenant A first stays idle, then bursts with many connections as
fast as the server answers. Reported per phase: B's p50/p99 and how many of B's requests were
refused, and the p99 ratio burst/baseline (the issue's bar: at most 2x). Run twice by default: with
no quota on A, and with A's key limited (``--quota-a``), so the table shows what per-tenant quotas buy.
The model costs a fixed time per batch plus a little per row, like a small real model.

    PYTHONPATH=src .venv/bin/python bench/security/tenants.py              # full run (~2 minutes)
    PYTHONPATH=src .venv/bin/python bench/security/tenants.py --seconds 2  # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from mlscale.auth.keys import add_key

MODEL = '''
import time

class Model:
    """10 ms per batch plus 1 ms per row, off the CPU: the model, not HTTP, is the bottleneck."""
    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(0.010 + 0.001 * len(x))
        return {"y": x * 2}
'''
MODEL_TOML = (
    'max_batch_size = 16\nexecution = "thread"\n'
    '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 4]\n'
    '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, 4]\n'
)
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mlscale", "serve", "--config", str(root / "mlscale.toml")]
    command += ["--model-repository", str(root / "models"), "--port", str(port), "--workers", str(workers)]
    command += ["--grpc-port", "0"]  # REST only: several servers side by side
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    sys.exit("the server did not start")


async def steady(client: httpx.AsyncClient, url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open-loop requests at ``rate``/s: latencies of answered ones and the count refused."""
    latencies: list[float] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        started = time.perf_counter()
        response = await client.post(url, json=ROW)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - started)
        else:
            refused += 1

    tasks = []
    begin = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, refused


async def burst(url: str, key: str, connections: int, seconds: float) -> tuple[int, int]:
    """Closed-loop flood from ``connections`` connections for ``seconds``: (answered, refused)."""
    counts = [0, 0]
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                response = await client.post(url, json=ROW)
                counts[response.status_code != 200] += 1
                if response.status_code in (429, 503):
                    await asyncio.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))

        await asyncio.gather(*(loop() for _ in range(connections)))
    return counts[0], counts[1]


def burst_process(url: str, key: str, connections: int, seconds: float, out) -> None:
    """In its own process, so the flood's client work does not delay B's measurements."""
    out.put(asyncio.run(burst(url, key, connections, seconds)))


async def scenario(url: str, keys: dict, seconds: float, rate_b: float, connections: int) -> dict:
    target = url + "/v2/models/shared/infer"
    limits = httpx.Limits(max_connections=connections + 64)
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {keys['b']}"}, limits=limits, timeout=30) as b,
    ):
        await steady(b, target, rate_b, min(1.0, seconds))  # warm-up
        base, base_refused = await steady(b, target, rate_b, seconds)
        out = multiprocessing.get_context("spawn").Queue()
        flood = multiprocessing.get_context("spawn").Process(
            target=burst_process, args=(target, keys["a"], connections, seconds + 1.0, out)
        )
        flood.start()
        await asyncio.sleep(0.5)
        hit, hit_refused = await steady(b, target, rate_b, seconds)
        a_ok, a_refused = await asyncio.to_thread(out.get, True, 120)
        flood.join(30)
    p = lambda xs, q: float(np.percentile(xs, q) * 1000) if xs else float("nan")  # noqa: E731
    return {
        "b_p50_base": p(base, 50),
        "b_p99_base": p(base, 99),
        "b_p50_burst": p(hit, 50),
        "b_p99_burst": p(hit, 99),
        "b_refused": base_refused + hit_refused,
        "a_ok": a_ok,
        "a_refused": a_refused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--rate-b", type=float, default=50.0, help="tenant B's steady requests/s")
    parser.add_argument("--connections", type=int, default=64, help="tenant A's concurrent connections")
    parser.add_argument("--quota-a", type=float, default=300.0, help="A's limit (requests/s) in the quota run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for label, quota in (("no quota on A", None), (f"A limited to {args.quota_a:g}/s", args.quota_a)):
        with tempfile.TemporaryDirectory(prefix="mlscale-tenants-") as tmp:
            root = Path(tmp)
            folder = root / "models" / "shared" / "1"
            folder.mkdir(parents=True)
            (folder / "model.py").write_text(MODEL)
            (folder / "model.toml").write_text(MODEL_TOML)
            quotas = "\n[quotas]\nenabled = true\nrate = 100000.0\nburst = 100000.0\n" if quota else ""
            (root / "mlscale.toml").write_text('[auth]\nenabled = true\nkeys_file = "keys.json"\n' + quotas)
            keys = {
                "a": add_key(root / "keys.json", "a", ["infer"], rate=quota, burst=quota and quota / 10),
                "b": add_key(root / "keys.json", "b", ["infer"]),
            }
            process, url = start_server(root, args.workers)
            try:
                result = asyncio.run(scenario(url, keys, args.seconds, args.rate_b, args.connections))
            finally:
                process.terminate()
                process.wait(30)
        rows.append((label, result))
    print(f"\nB steady at {args.rate_b:g}/s; A bursts with {args.connections} connections; {args.workers} workers")
    print(
        "| run | B p50 idle | B p99 idle | B p50 burst | B p99 burst | p99 ratio | B refused | A answered | A refused |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        ratio = r["b_p99_burst"] / r["b_p99_base"]
        print(
            f"| {label} | {r['b_p50_base']:.1f} ms | {r['b_p99_base']:.1f} ms | {r['b_p50_burst']:.1f} ms "
            f"| {r['b_p99_burst']:.1f} ms | {ratio:.2f}x | {r['b_refused']} | {r['a_ok']} | {r['a_refused']} |"
        )


if __name__ == "__main__":
    main()
