"""Memory of a long-running server: RSS of `mlscale serve` (every process) under steady load.

The server runs as in the kill -9 soak (payload log on, prediction cache with a SQLite shared tier,
2 workers); clients send requests with inputs drawn from a wide range, so the cache and the payload
log keep taking new entries. Every 10 s the RSS of each of the server's processes is summed; the
report gives the figure after the warm-up minute, at the end, the maximum, and the growth per minute
over everything after the warm-up (a least-squares slope). A server that leaks shows a slope that
does not fall with the run's length; a bounded cache and rolled log files show a plateau.

    PYTHONPATH=src .venv/bin/python bench/soak/rss.py --minutes 10
    PYTHONPATH=src .venv/bin/python bench/soak/rss.py --minutes 10 --cache off   # the cache's share
    PYTHONPATH=src .venv/bin/python bench/soak/rss.py --minutes 10 --l1-mib 8   # the cache full early
    PYTHONPATH=src .venv/bin/python bench/soak/rss.py --minutes 10 --l1-mib 8 --l2 off   # no SQLite tier
    PYTHONPATH=src .venv/bin/python bench/soak/rss.py --minutes 1     # a smoke run

With a small L1 (``--l1-mib``) the cache reaches its bound in the first minutes, so what still grows
after that is not the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from run import free_port, write_project  # bench/soak/run.py: the same project as the kill -9 soak


def session_pids(session: int) -> list[int]:
    """The processes of a session (the server and its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.getsid(int(entry)) == session:
                pids.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    return pids


def status_mib(pid: int, field: str) -> float:
    """One ``/proc/<pid>/status`` field in MiB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def session_processes(session: int) -> dict[int, str]:
    """pid -> what it is (its command line's tail), for every process of a session."""
    found = {}
    for pid in session_pids(session):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().split(b"\0")
        except OSError:
            continue
        found[pid] = " ".join(w.decode(errors="replace") for w in words if w)[-60:]
    return found


def session_rss_mib(session: int, field: str = "VmRSS") -> float:
    """Sum of ``field`` (VmRSS; RssAnon: heap, RssFile: mapped files such as SQLite's memory map)
    over the processes of a session (the server and its workers)."""
    return sum(status_mib(pid, field) for pid in session_pids(session))


async def load(url: str, until: float, connections: int, counts: list[int]) -> None:
    rng = random.Random(0)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=connections)) as client:

        async def loop() -> None:
            while time.monotonic() < until:
                x = [rng.randrange(100_000) / 7, rng.randrange(100_000) / 3]
                body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": x}]}
                response = await client.post(url + "/v2/models/double/infer", json=body)
                counts[response.status_code != 200] += 1

        await asyncio.gather(*(loop() for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--cache",
        choices=("on", "off"),
        default="on",
        help="off: the model's prediction cache disabled (finds its share)",
    )
    parser.add_argument(
        "--l1-mib", type=int, default=None, help="the in-process cache bound per worker (default: the server's 64)"
    )
    parser.add_argument(
        "--l2", choices=("on", "off"), default="on", help="off: no shared SQLite tier (finds its share)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlscale-rss-") as tmp:
        root = Path(tmp)
        config = write_project(root, args.workers)
        if args.cache == "off":
            model_toml = root / "models" / "double" / "1" / "model.toml"
            model_toml.write_text(
                model_toml.read_text().replace("[cache]\nenabled = true\n", "[cache]\nenabled = false\n")
            )
        if args.l2 == "off":
            config.write_text(config.read_text().replace('l2 = "sqlite:///cache.db"\n', "", 1))
        if args.l1_mib is not None:
            config.write_text(
                config.read_text().replace("[cache]\n", f"[cache]\nl1_max_bytes = {args.l1_mib * 1024 * 1024}\n", 1)
            )
        port = free_port()
        command = [sys.executable, "-m", "mlscale", "serve", "--config", str(config), "--port", str(port)]
        command += ["--grpc-port", "0"]
        server = subprocess.Popen(
            command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
            started = time.monotonic()
            until = started + args.minutes * 60
            counts = [0, 0]
            samples: list[tuple[float, float]] = []

            # Each process's own (anonymous) memory after the warm-up minute and at the end: which
            # one grows, when the sum does.
            per_process: dict[int, list] = {}

            async def run() -> None:
                loader = asyncio.create_task(load(url, until, args.connections, counts))
                while time.monotonic() < until:
                    elapsed = time.monotonic() - started
                    samples.append((elapsed, session_rss_mib(server.pid)))
                    if elapsed >= 60 and not per_process:
                        for pid, name in session_processes(server.pid).items():
                            per_process[pid] = [name, round(status_mib(pid, "RssAnon"), 1), None]
                    await asyncio.sleep(10)
                await loader

            asyncio.run(run())
            samples.append((time.monotonic() - started, session_rss_mib(server.pid)))
            # What the end figure is made of: the processes' own memory, and mapped file pages
            # (the shared cache tier's SQLite file is read through a memory map; those pages count
            # in RSS, yet the kernel can drop them).
            split = {field: round(session_rss_mib(server.pid, field), 1) for field in ("RssAnon", "RssFile")}
            for pid, entry in per_process.items():
                entry[2] = round(status_mib(pid, "RssAnon"), 1)
        finally:
            os.killpg(server.pid, 15)
            server.wait(30)
    after = [(t, r) for t, r in samples if t >= 60] or samples
    n = len(after)
    mean_t = sum(t for t, _ in after) / n
    mean_r = sum(r for _, r in after) / n
    spread = sum((t - mean_t) ** 2 for t, _ in after) or 1.0
    slope = sum((t - mean_t) * (r - mean_r) for t, r in after) / spread * 60
    report = {
        "minutes": args.minutes,
        "workers": args.workers,
        "cache": args.cache,
        "l1_mib": args.l1_mib,
        "l2": args.l2,
        "requests_ok": counts[0],
        "requests_failed": counts[1],
        "rss_mib_after_warmup": round(after[0][1], 1),
        "rss_mib_end": round(samples[-1][1], 1),
        "rss_mib_max": round(max(r for _, r in samples), 1),
        "rss_anon_mib_end": split["RssAnon"],
        "rss_file_mib_end": split["RssFile"],
        "growth_mib_per_minute": round(slope, 2),
        "anon_mib_per_process_after_warmup_and_end": list(per_process.values()),
        "samples": [(round(t), round(r, 1)) for t, r in samples],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
