"""Payload-log cost: server throughput with sampling at 100% against 0% (goal: under 5% lower).

NOT RUN YET, needs the lead: the server must call the payload log. Wiring expected in
``mlscale.serving.app`` (see docs/architecture.md, "Monitoring"): when
``settings.monitoring.payload_log.enabled``, build one ``PayloadLog`` per worker, call
``payload_log.record(model, version, request_inputs, outputs)`` after each successful inference,
and ``payload_log.close()`` from the app's ``on_shutdown`` (SIGTERM).

This script reuses the serving benchmark's models, request bodies, wrk driver and server starter,
and runs the same server twice with a project file that differs only in the sample rate:

    .venv/bin/python bench/drift/payload_log_cost.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench" / "serving"))

import run as serving  # noqa: E402  (the serving benchmark's helpers)


def start_with_rate(models: Path, rate: float, workers: int) -> tuple[subprocess.Popen, str]:
    folder = serving.WORK / f"payload-{int(rate * 100)}"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds, repeats = (3, 1) if args.quick else (15, args.repeats)
    wrk = serving.ensure_wrk()
    serving.WORK.mkdir(parents=True, exist_ok=True)
    ours, _ = serving.build_models()
    body = serving.bodies()["iris"]["mlscale"]
    print("| sample rate | connections | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    rps = {}
    for rate in (0.0, 1.0):
        process, base = start_with_rate(ours, rate, args.workers)
        try:
            for connections in (16, 64):
                runs = [
                    serving.run_wrk(wrk, base + "/v2/models/iris/infer", body, connections, seconds)
                    for _ in range(repeats)
                ]
                rps[(rate, connections)] = statistics.median(r["rps"] for r in runs)
                print(
                    f"| {rate:.0%} | {connections} | {rps[(rate, connections)]:,.0f} | "
                    f"{statistics.median(r['p50'] for r in runs):.2f} | "
                    f"{statistics.median(r['p99'] for r in runs):.2f} |"
                )
        finally:
            serving.stop(process)
    for connections in (16, 64):
        loss = 1 - rps[(1.0, connections)] / rps[(0.0, connections)]
        print(f"\nthroughput cost of logging every request at {connections} connections: {loss:.1%} (goal < 5%)")


if __name__ == "__main__":
    main()
