"""gRPC benchmark: mlscale vs MLServer 1.7.1 over the v2 gRPC protocol, same models, 64 requests in flight.

Both servers get the same ModelInfer request (typed contents, one row) for the same model files as
bench/serving/run.py (the iris scikit-learn classifier and an ONNX MLP), the same worker count, and
the same load: a closed loop of --concurrency requests in flight (64 by default), each answered
request immediately replaced by the next.

The load generator: no ghz here, and h2load reports no percentiles and cannot see gRPC's status
(it lives in trailers), so it is Python, made cheap: several processes (--procs), each one asyncio
loop with grpc.aio and several channels of its own (separate TCP connections, so the kernel spreads
them over the server's SO_REUSEPORT workers), sending pre-serialized request bytes and reading the
reply as bytes (no protobuf work per call on the client), checking the status of every call. Its
CPU still competes with the server's on a small machine: the figures compare the two servers under
the same generator, they are not either server's ceiling.

Named grpc_bench.py, not grpc.py: a grpc.py beside the scripts run from this folder would shadow the
grpcio package on sys.path.

Run: `.venv/bin/python bench/serving/grpc_bench.py` (add --quick for a short check). MLServer runs from
its venv under .cache/bench-venvs/mlserver (built by run.py's ensure_mlserver when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as serving_bench  # noqa: E402 - the sibling benchmark's models, MLServer venv and server control

METHOD = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
MODELS = {
    # model: (input datatype, row, mlscale model name, MLServer model name, output asked of mlscale)
    "iris": ("FP64", [5.1, 3.5, 1.4, 0.2], "iris", "iris", "label"),
    "mlp": ("FP32", np.random.default_rng(0).normal(size=16).round(4).tolist(), "mlp-onnx", "mlp", "probabilities"),
}


def request_bytes(model: str, kind: str) -> bytes:
    """The serialized ModelInferRequest (built with tritonclient's stubs: a third party's view of the
    protocol, and the messages both servers must accept)."""
    from tritonclient.grpc import service_pb2

    datatype, row, ours, theirs, output = MODELS[model]
    request = service_pb2.ModelInferRequest(model_name=ours if kind == "mlscale" else theirs)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=[1, len(row)])
    (tensor.contents.fp64_contents if datatype == "FP64" else tensor.contents.fp32_contents).extend(row)
    if kind == "mlscale":  # as run.py's REST bodies: mlscale is asked for the output MLServer returns
        request.outputs.add(name=output)
    return request.SerializeToString()


def check_answer(target: str, payload: bytes) -> str:
    """One call decoded, so a benchmark of errors cannot pass for one of answers."""
    import grpc
    from tritonclient.grpc import service_pb2

    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(METHOD)(payload, timeout=30)
    response = service_pb2.ModelInferResponse.FromString(raw)
    return ", ".join(f"{o.name} {o.datatype} {list(o.shape)}" for o in response.outputs)


async def _load(target: str, payload: bytes, concurrency: int, channels: int, warmup: float, seconds: float):
    import grpc

    # A local subchannel pool per channel: each channel its own TCP connection.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(channels)
    ]
    calls = [channel.unary_unary(METHOD) for channel in opened]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        clock = time.perf_counter
        while True:
            now = loop.time()
            if now >= stop_at:
                return
            begun = clock()
            try:
                await call(payload, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if now >= measure_from:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            if now >= measure_from:
                latencies.append(clock() - begun)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for channel in opened:
        await channel.close()
    return latencies, errors


def _generator(target, payload, concurrency, channels, warmup, seconds, results) -> None:
    results.put(asyncio.run(_load(target, payload, concurrency, channels, warmup, seconds)))


def run_load(target: str, payload: bytes, concurrency: int, procs: int, seconds: float, warmup: float) -> dict:
    """Closed-loop load from ``procs`` processes; throughput counts only OK answers."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    workers = [
        context.Process(target=_generator, args=(target, payload, share, 4, warmup, seconds, results))
        for share in shares
        if share
    ]
    for process in workers:
        process.start()
    gathered = [results.get(timeout=seconds + warmup + 120) for _ in workers]
    for process in workers:
        process.join(30)
    latencies = sorted(x for lat, _ in gathered for x in lat)
    errors: dict[str, int] = {}
    for _, errs in gathered:
        for code, count in errs.items():
            errors[code] = errors.get(code, 0) + count
    if not latencies:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": errors}
    return {
        "rps": len(latencies) / seconds,
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "errors": errors,
    }


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every process in a process group: the server's cost per answer,
    which, unlike throughput, does not depend on how much CPU the load generator left it."""
    import os

    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_grpc_ready(target: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    until = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        ready = channel.unary_unary(READY)
        while time.monotonic() < until:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early: {target}")
            try:
                if service_pb2.ServerReadyResponse.FromString(ready(b"", timeout=1)).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"gRPC not ready: {target}")


def start(kind: str, models: dict[str, Path], workers: int) -> tuple[subprocess.Popen, str]:
    """A server with its HTTP and gRPC ports; returns the process and the gRPC target."""
    port, grpc_port = serving_bench.free_port(), serving_bench.free_port()
    log = open(serving_bench.WORK / f"{kind}-grpc.log", "w")  # noqa: SIM115 - lives as long as the server
    if kind == "mlscale":
        command = [
            str(Path(sys.executable).parent / "mlscale"),
            "serve",
            "--model-repository",
            str(models["mlscale"]),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--workers",
            str(workers),
        ]
        ready = ["/v2/health/ready"]
    else:
        (models["mlserver"] / "settings.json").write_text(
            json.dumps(
                {
                    "http_port": port,
                    "grpc_port": grpc_port,
                    "metrics_port": serving_bench.free_port(),
                    "debug": False,
                }
            )
        )
        command = [str(serving_bench.MLSERVER_VENV / "bin" / "mlserver"), "start", str(models["mlserver"])]
        ready = ["/v2/models/mlp/ready", "/v2/models/iris/ready"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    for path in ready:
        serving_bench.wait_ready(base + path, process)
    target = f"127.0.0.1:{grpc_port}"
    wait_grpc_ready(target, process)
    return process, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--procs", type=int, default=4, help="load generator processes")
    parser.add_argument("--servers", default="mlscale,mlserver")
    parser.add_argument("--models", default="iris,mlp")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.repeats = 2, 0.5, 1
    servers = args.servers.split(",")
    if "mlserver" in servers:
        serving_bench.ensure_mlserver()
    serving_bench.WORK.mkdir(parents=True, exist_ok=True)
    ours, theirs = serving_bench.build_models()
    models = {"mlscale": ours, "mlserver": theirs}
    results: dict[tuple[str, str], dict] = {}
    for kind in servers:
        process, target = start(kind, models, args.workers)
        try:
            for model in args.models.split(","):
                payload = request_bytes(model, kind)
                print(f"{kind} {model}: answers {check_answer(target, payload)}", flush=True)
                runs = []
                for _ in range(args.repeats):
                    cpu_before = group_cpu_seconds(process.pid)
                    run = run_load(target, payload, args.concurrency, args.procs, args.duration, args.warmup)
                    answers = run["rps"] * args.duration
                    # Includes the warm-up's calls in the CPU but not in the answers: a slight overestimate.
                    run["cpu_us"] = 1e6 * (group_cpu_seconds(process.pid) - cpu_before) / answers if answers else 0
                    runs.append(run)
                cell = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99", "cpu_us")}
                cell["errors"] = {}
                for r in runs:
                    for code, count in r["errors"].items():
                        cell["errors"][code] = cell["errors"].get(code, 0) + count
                results[(kind, model)] = cell
                print(
                    f"{kind:9s} {model:5s} c={args.concurrency:<3d} {cell['rps']:9.0f} req/s  "
                    f"p50 {cell['p50']:.3f} ms  p99 {cell['p99']:.3f} ms  server CPU {cell['cpu_us']:.0f} us/answer  "
                    f"errors {cell['errors'] or 0}",
                    flush=True,
                )
        finally:
            serving_bench.stop(process)
    print()
    print("| model | in flight | server | req/s | p50 ms | p99 ms | server CPU us/answer | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, model), cell in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        errors = sum(cell["errors"].values())
        print(
            f"| {model} | {args.concurrency} | {kind} gRPC | {cell['rps']:.0f} | {cell['p50']:.3f} "
            f"| {cell['p99']:.2f} | {cell['cpu_us']:.0f} | {errors} |"
        )
    print()
    for model in args.models.split(","):
        ours_cell, theirs_cell = results.get(("mlscale", model)), results.get(("mlserver", model))
        if ours_cell and theirs_cell and theirs_cell["rps"] and ours_cell["rps"]:
            print(
                f"- {model} over gRPC at {args.concurrency} in flight: throughput "
                f"x{ours_cell['rps'] / theirs_cell['rps']:.1f} of MLServer, "
                f"p99 {theirs_cell['p99'] / ours_cell['p99']:.1f}x lower, "
                f"server CPU per answer {theirs_cell['cpu_us'] / max(ours_cell['cpu_us'], 1e-9):.1f}x lower"
            )


if __name__ == "__main__":
    main()
