"""Payload-log cost: server throughput with sampling at 100% against 0% (goal: under 5% lower).

This script reuses the serving benchmark's models, request bodies, wrk driver and server starter,
and runs two servers side by side whose project files differ only in the sample rate, alternating
wrk runs between them (medians of ``--repeats``):

    .venv/bin/python bench/drift/payload_log_cost.py --quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench" / "serving"))

import run as serving  # noqa: E402  (the serving benchmark's helpers)


def start_with_rate(models: Path, rate: float, workers: int) -> tuple[subprocess.Popen, str]:
    folder = serving.WORK / f"payload-{int(rate * 100)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mlscale.toml"
    config.write_text(f'[monitoring.payload_log]\nenabled = true\ndirectory = "logs"\nsample_rate = {rate}\n')
    port = serving.free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "mlscale"),
            "serve",
            "--config",
            str(config),
            "--model-repository",
            str(models),
            "--port",
            str(port),
            "--grpc-port",
            "0",
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    serving.wait_ready(base + "/v2/health/ready", process)
    return process, base


def _metric_sum(text: str, name: str, label: str) -> float:
    """Sum of the samples of ``name`` whose labels contain ``label`` in Prometheus text."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") and label in line
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per server and connection count")
    args = parser.parse_args()
    seconds, repeats = (3, 1) if args.quick else (10, args.repeats)
    wrk = serving.ensure_wrk()
    serving.WORK.mkdir(parents=True, exist_ok=True)
    ours, _ = serving.build_models()
    body = serving.bodies()["iris"]["mlscale"]
    rates = (0.0, 1.0)
    servers = {rate: start_with_rate(ours, rate, args.workers) for rate in rates}
    # Both servers run side by side and the runs alternate (0%, 100%, 0%, 100%...): throughput on
    # this machine drifts by several percent between minutes, more than the effect measured here.
    print("| sample rate | connections | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    rps = {}
    try:
        for connections in (16, 64):
            runs: dict[float, list[dict]] = {rate: [] for rate in rates}
            for _ in range(repeats):
                for rate in rates:
                    url = servers[rate][1] + "/v2/models/iris/infer"
                    runs[rate].append(serving.run_wrk(wrk, url, body, connections, seconds))
            for rate in rates:
                rps[(rate, connections)] = statistics.median(r["rps"] for r in runs[rate])
                print(
                    f"| {rate:.0%} | {connections} | {rps[(rate, connections)]:,.0f} | "
                    f"{statistics.median(r['p50'] for r in runs[rate]):.2f} | "
                    f"{statistics.median(r['p99'] for r in runs[rate]):.2f} |"
                )
        # Before stopping: what the logging server says it served and what its payload log dropped.
        # Each scrape is answered by one worker; the counts are summed over workers.
        with urllib.request.urlopen(servers[1.0][1] + "/metrics", timeout=10) as response:
            scraped = response.read().decode()
    finally:
        for process, _ in servers.values():
            serving.stop(process)  # SIGTERM: the payload log writes what it holds
    served = _metric_sum(scraped, "mlscale_requests_total", 'outcome="success"')
    dropped = _metric_sum(scraped, "mlscale_payload_records_total", 'outcome="dropped"')
    files = list((serving.WORK / "payload-100" / "logs").rglob("*.parquet"))
    logged = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    print(
        f"\nthe 100% server answered {served:,.0f} requests (warm-up included); its payload log holds "
        f"{logged:,} rows and counted {dropped:,.0f} dropped (a full buffer)"
    )
    for connections in (16, 64):
        loss = 1 - rps[(1.0, connections)] / rps[(0.0, connections)]
        print(f"\nthroughput cost of logging every request at {connections} connections: {loss:.1%} (goal < 5%)")


if __name__ == "__main__":
    main()
