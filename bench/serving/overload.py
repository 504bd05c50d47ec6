"""Overload benchmark: goodput as closed-loop connections grow far past what the server can serve.

Each connection sends its next request when the last one is answered (or timed out at 2 s), at 64,
1,000, 2,000, 4,000 and 8,000 connections, iris model, 2 worker processes, mlscale and MLServer
1.7.1 (its own venv under .cache/bench-venvs/mlserver) in one run on the same body. Per level:

- wrk (Debian package, C, light on the shared cores): answers/s, 2xx/s (goodput), non-2xx, client
  timeouts (wrk --timeout 2s);
- hey (Debian package): latency of successful requests only (its CSV has one row per answer with
  status), p50 and p99; hey costs more CPU than wrk, so its goodput is not the one quoted.

Goal (issue 20): goodput at every level >= 90% of the best level's, p99 of successful requests <=
the queue-delay target + 3x the service time, no client timeouts.
Run: `.venv/bin/python bench/serving/overload.py` (`--quick` for a short check).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as serving_bench  # noqa: E402 - the sibling benchmark's model building and server starting

COUNTS_LUA = """
-- POST the body in BODY; count answers by status in each thread, summed in done().
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; shed = 0; other = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 or status == 429 then shed = shed + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local o, s, x = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); s = s + t:get("shed"); x = x + t:get("other") end
  io.write(string.format("COUNTS ok=%d shed=%d other=%d timeouts=%d connect_errors=%d seconds=%.3f\\n",
    o, s, x, summary.errors.timeout, summary.errors.connect, summary.duration / 1e6))
end
"""


def raise_open_files() -> None:
    """Thousands of sockets per process: the soft limit up to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wrk_counts(wrk: str, url: str, body: Path, script: Path, connections: int, seconds: int) -> dict:
    threads = 2
    result = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "-s", str(script), url],
        capture_output=True,
        text=True,
        env={**os.environ, "BODY": str(body)},
        check=True,
        timeout=seconds + 60,
    ).stdout
    found = re.search(
        r"COUNTS ok=(\d+) shed=(\d+) other=(\d+) timeouts=(\d+) connect_errors=(\d+) seconds=([\d.]+)", result
    )
    ok, shed, other, timeouts, connect, elapsed = (float(g) for g in found.groups())
    return {
        "answers": (ok + shed + other) / elapsed,
        "goodput": ok / elapsed,
        "shed": int(shed),
        "other": int(other),
        "timeouts": int(timeouts),
        "connect_errors": int(connect),
    }


def hey_success_latency(hey: str, url: str, body: Path, connections: int, seconds: int) -> dict:
    """p50/p99 (ms) of the 2xx answers of a closed loop of ``connections`` clients."""
    out = subprocess.run(
        [
            hey,
            "-z",
            f"{seconds}s",
            "-c",
            str(connections),
            "-t",
            "2",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(body),
            "-o",
            "csv",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    ).stdout
    rows = csv.DictReader(io.StringIO(out))
    latencies = sorted(float(r["response-time"]) * 1000 for r in rows if r["status-code"] == "200")
    if not latencies:
        return {"p50": float("nan"), "p99": float("nan")}
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat, fewer levels")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levels", default="64,1000,2000,4000,8000")
    parser.add_argument("--servers", default="mlscale,mlserver")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.levels = 3, 1, "64,1000"
    raise_open_files()
    wrk, hey = serving_bench.ensure_wrk(), serving_bench.ensure_debian_tool("hey")
    servers = args.servers.split(",")
    if "mlserver" in servers:
        serving_bench.ensure_mlserver()
    serving_bench.WORK.mkdir(parents=True, exist_ok=True)
    ours, theirs = serving_bench.build_models()
    payloads = serving_bench.bodies()["iris"]
    models = {"mlscale": ours, "mlserver": theirs}
    levels = [int(level) for level in args.levels.split(",")]
    script = Path(tempfile.mkdtemp()) / "counts.lua"
    script.write_text(COUNTS_LUA)
    results: dict[tuple[str, int], dict] = {}
    for kind in servers:
        process, base, paths = serving_bench.start(kind, models, 2)
        url = base + paths["iris"]
        try:
            wrk_counts(wrk, url, payloads[kind], script, 64, 2)  # warm-up
            for connections in levels:
                runs = [
                    wrk_counts(wrk, url, payloads[kind], script, connections, args.duration)
                    for _ in range(args.repeats)
                ]
                cell = {k: statistics.median(r[k] for r in runs) for k in ("answers", "goodput")}
                for k in ("shed", "other", "timeouts", "connect_errors"):
                    cell[k] = sum(r[k] for r in runs)
                latency = [
                    hey_success_latency(hey, url, payloads[kind], connections, args.duration)
                    for _ in range(args.repeats)
                ]
                cell["p50"] = statistics.median(x["p50"] for x in latency)
                cell["p99"] = statistics.median(x["p99"] for x in latency)
                results[(kind, connections)] = cell
                print(
                    f"{kind:9s} c={connections:<5d} answers {cell['answers']:8.0f}/s goodput {cell['goodput']:8.0f}/s "
                    f"503 {cell['shed']:7d} timeouts {cell['timeouts']:6d} other {cell['other']} "
                    f"2xx p50 {cell['p50']:.1f} ms p99 {cell['p99']:.1f} ms",
                    flush=True,
                )
        finally:
            serving_bench.stop(process)
    print()
    print("| server | connections | answers/s | goodput (2xx/s) | 503s | client timeouts | 2xx p50 ms | 2xx p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, connections), cell in sorted(results.items()):
        print(
            f"| {kind} | {connections:,} | {cell['answers']:,.0f} | {cell['goodput']:,.0f} | {cell['shed']:,} "
            f"| {cell['timeouts']:,} | {cell['p50']:.1f} | {cell['p99']:.1f} |"
        )
    print()
    for kind in servers:
        cells = [results[(kind, c)] for c in levels if (kind, c) in results]
        if cells:
            best = max(c["goodput"] for c in cells)
            worst = min(c["goodput"] for c in cells)
            print(f"- {kind}: worst level's goodput is {100 * worst / best:.0f}% of the best level's")
    for connections in levels:
        ours_cell, theirs_cell = results.get(("mlscale", connections)), results.get(("mlserver", connections))
        if ours_cell and theirs_cell and theirs_cell["goodput"] > 0:
            print(
                f"- {connections:,} connections: goodput x{ours_cell['goodput'] / theirs_cell['goodput']:.1f} "
                f"of MLServer; 2xx p99 {theirs_cell['p99'] / ours_cell['p99']:.1f}x lower"
            )


if __name__ == "__main__":
    main()
