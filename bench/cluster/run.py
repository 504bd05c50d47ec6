"""Cluster serving benchmark (issue 13): throughput with 1, 2 and 3 replicas on namespace hosts
behind the gateway, and the latency while one host dies.

The model takes 20 ms a call whatever it is given, as a call to a remote accelerator would (a
Python model that sleeps, so the replicas' CPU is not what limits them): one call at a time per
replica (``max_batch_size = 1``, one worker), so a replica serves at most ~50 calls a second and
three should serve ~3x that. Each replica runs ``mlscale serve`` in its own network-namespace host
(``mlscale.testing.netcluster``, no engines), the gateway in the calling namespace, and a
closed-loop load generator keeps ``--concurrency`` requests in flight through the gateway
throughout (the same concurrency for every replica count).

Steps: for 1, 2 and 3 replicas, a gateway over that many, ``--warmup`` seconds unmeasured, then
``--seconds`` measured: answers per second, p50 and p99, and the ratio to 1 replica (goal: >= 2.7x
at 3). Then the host kill: 3 replicas under the same load for ``--seconds``/3, then one host's link
cut and its processes SIGKILLed, then 5 s + ``--seconds``/3 more; p99 before the kill, in the 5 s
after it and after that, the slowest answer, and the requests that failed in each window.

Needs root (network namespaces): ``sudo .venv/bin/python bench/cluster/run.py``; ``--tiny`` for
a smoke run of a few seconds (its figures mean nothing). Figures are for an otherwise idle machine
with at least 2 cores: the generator, the gateway and three servers share them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from mlscale.testing.load import ClosedLoop, Outcome, percentile
from mlscale.testing.netcluster import ClusterBusy, NetCluster, check_supported
from mlscale.testing.replicas import GatewayProcess, start_replica, wait_ready

MODEL = "accel"
MODEL_SOURCE = '''
import time

import numpy as np


class Model:
    """Answers after {ms} ms whatever the batch: a call to a remote accelerator."""

    def predict(self, inputs):
        time.sleep({seconds})
        return {{"y": np.asarray(inputs["x"], dtype=np.float32)}}
'''
MODEL_TOML = """runtime = "python"
max_batch_size = {batch}
execution = "thread"
# Queue and wait bounds far above what the load here builds up: this measures capacity, not shedding.
queue_delay_target = 30.0
max_queue_wait = 30.0
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 1]
"""
BODY = msgspec.json.encode({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
GRACE = 5.0  # seconds after the kill reported apart


def write_repository(root: Path, ms: float, batch: int) -> Path:
    folder = root / "models" / MODEL / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL_SOURCE.format(ms=ms, seconds=ms / 1000))
    (folder / "model.toml").write_text(MODEL_TOML.format(batch=batch))
    return root / "models"


def start_cluster() -> NetCluster:
    """Three hosts with no engine, in the first free slot (tags b0..b9, subnets 10.213.30-39)."""
    for slot in range(10):
        cluster = NetCluster(3, tag=f"b{slot}", net=30 + slot, nats=False, redis=False, postgres=False)
        try:
            return cluster.start()
        except ClusterBusy:
            continue
    raise SystemExit("bench/cluster: every cluster slot is taken")


def wait_all_healthy(gateway: GatewayProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(b["healthy"] for b in gateway.backends().values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/cluster: the gateway found replicas unhealthy: {gateway.backends()}")
        time.sleep(0.05)


def run_load(url: str, concurrency: int, seconds: float) -> list[Outcome]:
    with ClosedLoop(url, BODY, concurrency=concurrency, max_requests=10_000_000, max_seconds=seconds) as load:
        time.sleep(seconds)  # the load lasts this long: nothing to wait for but the clock
    return load.outcomes


def latencies(outcomes: list[Outcome]) -> list[float]:
    return [o.ended - o.started for o in outcomes if o.ok]


def measure(gateway: GatewayProcess, args: argparse.Namespace) -> dict:
    url = f"{gateway.url}/v2/models/{MODEL}/infer"
    run_load(url, args.concurrency, args.warmup)
    outcomes = run_load(url, args.concurrency, args.seconds)
    ok = [o for o in outcomes if o.ok]
    span = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
    took = latencies(outcomes)
    return {
        "throughput": len(ok) / span,
        "p50_ms": percentile(took, 50) * 1000,
        "p99_ms": percentile(took, 99) * 1000,
        "failed": len(outcomes) - len(ok),
    }


def measure_kill(cluster: NetCluster, gateway: GatewayProcess, args: argparse.Namespace) -> dict:
    url = f"{gateway.url}/v2/models/{MODEL}/infer"
    run_load(url, args.concurrency, args.warmup)
    victim = cluster.hosts[-1]
    before = after = max(args.seconds / 3, 1.0)  # measured before the kill, and after its first 5 s
    seconds = before + GRACE + after
    with ClosedLoop(url, BODY, concurrency=args.concurrency, max_requests=10_000_000, max_seconds=seconds + 5) as load:
        time.sleep(before)  # the load runs meanwhile: nothing to wait for but the clock
        killed = time.monotonic()
        cluster.link(victim.index, up=False)
        cluster.kill_host(victim.index)
        time.sleep(max(0.0, killed + GRACE + after - time.monotonic()))
    outcomes = load.outcomes
    windows = {
        "before": [o for o in outcomes if o.ended < killed],
        "first_5s": [o for o in outcomes if killed <= o.started < killed + GRACE],
        "after_5s": [o for o in outcomes if o.started >= killed + GRACE],
    }
    result: dict = {}
    for name, chosen in windows.items():
        result[f"p99_ms_{name}"] = percentile(latencies(chosen), 99) * 1000
        result[f"failed_{name}"] = sum(1 for o in chosen if not o.ok)
        result[f"sent_{name}"] = len(chosen)
    slow = [o.ended - o.started for o in outcomes if o.started >= killed - 1]
    result["slowest_ms_around_kill"] = max(slow, default=0.0) * 1000
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per replica count")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--concurrency", type=int, default=12, help="requests kept in flight by the load")
    parser.add_argument("--ms", type=float, default=20.0, help="milliseconds a model call takes")
    parser.add_argument("--batch", type=int, default=1, help="the model's max_batch_size (1: one call a request)")
    parser.add_argument("--strategy", choices=["p2c", "hash"], default="p2c")
    parser.add_argument("--no-kill", action="store_true", help="skip the host kill")
    parser.add_argument("--tiny", action="store_true", help="a smoke run of a few seconds; figures mean nothing")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seconds, args.warmup, args.concurrency = 2.0, 0.5, 4
    reason = check_supported()
    if reason:
        print(f"bench/cluster: {reason}", file=sys.stderr)
        return 1
    results: dict = {"settings": {k: v for k, v in vars(args).items()}, "replicas": {}}
    cluster = start_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="mlscale-bench-cluster-") as tmp:
            root = Path(tmp)
            root.chmod(0o755)
            repository = write_repository(root, args.ms, args.batch)
            config = root / "mlscale.toml"
            config.write_text("")
            urls = [start_replica(cluster, host, repository, config) for host in cluster.hosts]
            for url, host in zip(urls, cluster.hosts, strict=True):
                wait_ready(url, 120, host.processes["serve"])
            for n in (1, 2, 3):
                gateway = GatewayProcess(urls[:n], config, root / "gateway.log", strategy=args.strategy)
                try:
                    gateway.wait_ready(60)
                    wait_all_healthy(gateway, 30)
                    step = measure(gateway, args)
                finally:
                    gateway.stop()
                step["ratio"] = step["throughput"] / results["replicas"][1]["throughput"] if n > 1 else 1.0
                results["replicas"][n] = step
                print(
                    f"{n} replica(s): {step['throughput']:7.1f} answers/s  x{step['ratio']:.2f}  "
                    f"p50 {step['p50_ms']:6.1f} ms  p99 {step['p99_ms']:6.1f} ms  failed {step['failed']}",
                    flush=True,
                )
            if not args.no_kill:
                gateway = GatewayProcess(urls, config, root / "gateway.log", strategy=args.strategy)
                try:
                    gateway.wait_ready(60)
                    wait_all_healthy(gateway, 30)
                    kill = measure_kill(cluster, gateway, args)
                finally:
                    gateway.stop()
                results["kill"] = kill
                print(
                    f"host kill (3 replicas): p99 {kill['p99_ms_before']:.0f} ms before, "
                    f"{kill['p99_ms_first_5s']:.0f} ms in the 5 s after, {kill['p99_ms_after_5s']:.0f} ms later; "
                    f"slowest {kill['slowest_ms_around_kill']:.0f} ms; failed {kill['failed_before']} / "
                    f"{kill['failed_first_5s']} / {kill['failed_after_5s']} "
                    f"of {kill['sent_before']} / {kill['sent_first_5s']} / {kill['sent_after_5s']}",
                    flush=True,
                )
    finally:
        cluster.stop()
    goal = results["replicas"][3]["ratio"]
    print(f"3 replicas: x{goal:.2f} the throughput of 1 (goal >= 2.7)")
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
