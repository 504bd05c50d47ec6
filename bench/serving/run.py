"""Serving benchmark: mlscale vs MLServer 1.7.1 vs a hello-world floor, same models, same load.

Load comes from wrk (Debian package) in a separate process with a Lua POST script, at 1, 16 and 64
connections, for the iris scikit-learn classifier and an ONNX MLP. Each cell is the median of
--repeats runs. MLServer runs from its own venv under .cache/bench-venvs/mlserver (built here when
missing). Run: `.venv/bin/python bench/serving/run.py` (add --quick for a short check).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import joblib
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".cache"
WORK = CACHE / "bench" / "serving"
MLSERVER_VENV = CACHE / "bench-venvs" / "mlserver"
sys.path.insert(0, str(ROOT / "examples" / "demo"))


def ensure_debian_tool(name: str) -> str:
    """The path of a load generator from Debian's packages, installed when missing and root."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", name], check=True, capture_output=True)
        return shutil.which(name) or sys.exit(f"{name} did not install")
    sys.exit(f"{name} is needed: apt-get install {name}")


def ensure_wrk() -> str:
    return ensure_debian_tool("wrk")


def ensure_mlserver() -> Path:
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.exists():
        print("creating the MLServer venv (one time)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run(
            [
                str(MLSERVER_VENV / "bin" / "pip"),
                "install",
                "-q",
                "mlserver==1.7.1",
                "mlserver-sklearn==1.7.1",
                "uvloop<0.22",
                "onnxruntime",
            ],
            check=True,
        )
    return binary


def build_models() -> tuple[Path, Path]:
    """The same two model files, laid out for mlscale and for MLServer."""
    from models import train_mlp_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    ours, theirs = WORK / "mlscale-models", WORK / "mlserver-models"
    shutil.rmtree(WORK, ignore_errors=True)
    x, y = load_iris(return_X_y=True)
    iris = LogisticRegression(max_iter=500).fit(x, y)
    (ours / "iris" / "1").mkdir(parents=True)
    joblib.dump(iris, ours / "iris" / "1" / "model.joblib")
    train_mlp_onnx(ours)
    (theirs / "iris").mkdir(parents=True)
    (theirs / "mlp").mkdir(parents=True)
    shutil.copy(ours / "iris" / "1" / "model.joblib", theirs / "iris" / "model.joblib")
    shutil.copy(ours / "mlp-onnx" / "1" / "model.onnx", theirs / "mlp" / "model.onnx")
    shutil.copy(HERE / "mlserver_onnx.py", theirs / "mlp" / "mlserver_onnx.py")
    (theirs / "iris" / "model-settings.json").write_text(
        json.dumps(
            {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
        )
    )
    (theirs / "mlp" / "model-settings.json").write_text(
        json.dumps({"name": "mlp", "implementation": "mlserver_onnx.OnnxModel", "parameters": {"uri": "./model.onnx"}})
    )
    return ours, theirs


def bodies() -> dict[str, dict[str, Path]]:
    iris_row = [5.1, 3.5, 1.4, 0.2]
    mlp_row = np.random.default_rng(0).normal(size=16).round(4).tolist()
    out: dict[str, dict[str, Path]] = {}
    cases = (("iris", "FP64", iris_row, "label"), ("mlp", "FP32", mlp_row, "probabilities"))
    for model, datatype, row, output in cases:
        tensor = {"name": "input", "shape": [1, len(row)], "datatype": datatype, "data": row}
        ours = WORK / f"{model}-mlscale.json"
        ours.write_text(json.dumps({"inputs": [tensor], "outputs": [{"name": output}]}))
        theirs = WORK / f"{model}-mlserver.json"
        theirs.write_text(json.dumps({"inputs": [tensor]}))
        out[model] = {"mlscale": ours, "mlserver": theirs, "floor": ours}
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early: {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not ready: {url}")


def start(kind: str, models: dict[str, Path], workers: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(WORK / f"{kind}.log", "w")  # noqa: SIM115 - lives as long as the server
    env = {**os.environ}
    if kind == "mlscale":
        command = [
            str(ROOT / ".venv" / "bin" / "mlscale"),
            "serve",
            "--model-repository",
            str(models["mlscale"]),
            "--port",
            str(port),
            "--grpc-port",  # listening but idle, as by default; grpc_bench.py measures gRPC
            str(free_port()),
            "--workers",
            str(workers),
        ]
        paths = {"iris": "/v2/models/iris/infer", "mlp": "/v2/models/mlp-onnx/infer"}
        ready = ["/v2/health/ready"]
    elif kind == "mlserver":
        settings = models["mlserver"] / "settings.json"
        settings.write_text(
            json.dumps({"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False})
        )
        command = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(models["mlserver"])]
        paths = {"iris": "/v2/models/iris/infer", "mlp": "/v2/models/mlp/infer"}
        ready = ["/v2/models/mlp/ready", "/v2/models/iris/ready"]
    else:
        command = [
            str(ROOT / ".venv" / "bin" / "python"),
            "-m",
            "uvicorn",
            "floor_app:app",
            "--app-dir",
            str(HERE),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        paths = {"iris": "/", "mlp": "/"}
        ready = "/"
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    if kind == "floor":
        time.sleep(2)  # the floor answers only POST bodies; give it a moment, then probe by POST below
        subprocess.run(["curl", "-s", "-XPOST", base + "/", "-o", "/dev/null"], check=False)
    else:
        for path in ready:  # every model, not just the server: MLServer loads them one by one
            wait_ready(base + path, process)
    return process, base, paths


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def run_wrk(wrk: str, url: str, body: Path, connections: int, seconds: int) -> dict:
    threads = 1 if connections == 1 else 2
    result = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(HERE / "post.lua"), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BODY": str(body)},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", result).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", result).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", result).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", result)
    errors = int(bad.group(1)) if bad else 0
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--servers", default="floor,mlscale,mlserver")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 2, 1
    wrk = ensure_wrk()
    servers = args.servers.split(",")
    if "mlserver" in servers:
        ensure_mlserver()
    WORK.mkdir(parents=True, exist_ok=True)
    ours, theirs = build_models()
    payloads = bodies()
    models = {"mlscale": ours, "mlserver": theirs}
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, str, int], dict] = {}
    for kind in servers:
        process, base, paths = start(kind, models, args.workers)
        try:
            for model in ("iris", "mlp"):
                url = base + paths[model]
                run_wrk(wrk, url, payloads[model][kind], 16, 1)  # warm-up
                for connections in levels:
                    runs = [
                        run_wrk(wrk, url, payloads[model][kind], connections, args.duration)
                        for _ in range(args.repeats)
                    ]
                    cell = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50", "p99")}
                    cell["errors"] = sum(r["errors"] for r in runs)
                    results[(kind, model, connections)] = cell
                    print(
                        f"{kind:9s} {model:5s} c={connections:<3d} {cell['rps']:9.0f} req/s  "
                        f"p50 {cell['p50']:.3f} ms  p99 {cell['p99']:.3f} ms  errors {cell['errors']}",
                        flush=True,
                    )
        finally:
            stop(process)
    print()
    print("| model | connections | server | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for (kind, model, connections), cell in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        print(
            f"| {model} | {connections} | {kind} | {cell['rps']:.0f} | {cell['p50']:.3f} | {cell['p99']:.2f} "
            f"| {cell['errors']} |"
        )
    print()
    for model in ("iris", "mlp"):
        for connections in levels:
            ours_cell = results.get(("mlscale", model, connections))
            theirs_cell = results.get(("mlserver", model, connections))
            floor_cell = results.get(("floor", model, connections))
            parts = []
            if ours_cell and theirs_cell:
                parts.append(
                    f"throughput x{ours_cell['rps'] / theirs_cell['rps']:.1f} of MLServer, "
                    f"p99 {theirs_cell['p99'] / ours_cell['p99']:.1f}x lower"
                )
            if ours_cell and floor_cell:
                parts.append(f"{100 * ours_cell['rps'] / floor_cell['rps']:.0f}% of the floor")
            if parts:
                print(f"- {model} at {connections} connections: " + "; ".join(parts))


if __name__ == "__main__":
    main()
