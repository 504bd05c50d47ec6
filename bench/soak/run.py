"""Kill -9 soak: SIGKILL the server (payload log, prediction cache with a SQLite shared tier, event
ingestion on the embedded broker) at random moments under load, restart it, then check what survived.

    python bench/soak/run.py --seconds 300            # the full run (issue 14: 5 minutes)
    python bench/soak/run.py --seconds 20 --workers 1 # what make test runs (tests/serving/test_serving_kill9.py)

Afterwards: every Parquet file of the payload log is readable, and half-written ones (of killed
processes) were quarantined and counted; every SQLite file passes PRAGMA integrity_check; every event
the server acknowledged (200 to POST /v1/events/{topic}) is in the broker. Prints one JSON report.
Not covered here yet: killing a stream processor and the drift monitor, and RSS over 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

MODEL = '''
import numpy as np

class Model:
    """2x its input."""
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
'''
MODEL_TOML = (
    'max_batch_size = 64\nexecution = "thread"\n[cache]\nenabled = true\n'
    '[[inputs]]\nname = "x"\ndatatype = "FP64"\nshape = [-1, 2]\n'
    '[[outputs]]\nname = "y"\ndatatype = "FP64"\nshape = [-1, 2]\n'
)
TOPIC = "soak-events"


def write_project(root: Path, workers: int) -> Path:
    folder = root / "models" / "double" / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODEL)
    (folder / "model.toml").write_text(MODEL_TOML)
    config = root / "mlscale.toml"
    config.write_text(
        f'[server]\nmodel_repository = "models"\nworkers = {workers}\npoll_interval = 0\ndashboard = false\n'
        '[cache]\nl2 = "sqlite:///cache.db"\n'
        '[streams]\nbroker = "embedded:streams.db"\n'
        '[monitoring.payload_log]\nenabled = true\ndirectory = "payload-log"\nroll_seconds = 0.5\n'
    )
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`mlscale serve` in its own process group, so SIGKILL reaches every worker at once."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log = open(config.parent / "server.log", "ab")  # noqa: SIM115 - closed in close()

    def start(self, timeout: float = 60.0) -> None:
        command = [sys.executable, "-m", "mlscale", "serve", "--config", str(self.config), "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        # Workers are in the same group: wait until none is left holding files or the port.
        until = time.monotonic() + 10
        while time.monotonic() < until:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.log.close()


class Load:
    """Inference (repeating inputs, so the cache is hit) and event posts; acknowledged ids are kept."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.acknowledged: list[int] = []
        self.answered = 0
        self.failed = 0
        self.stop = threading.Event()
        self._random = random.Random(seed)
        self._next_id = 0

    def infer(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                x = float(self._random.randint(0, 50))
                body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [x, x + 1]}]}
                try:
                    response = client.post("/v2/models/double/infer", json=body)
                except httpx.HTTPError:
                    self.failed += 1
                    time.sleep(0.02)  # the server is down: retry at a modest pace
                    continue
                if response.status_code == 200:
                    assert response.json()["outputs"][0]["data"] == [2 * x, 2 * x + 2], response.text
                    self.answered += 1
                else:
                    self.failed += 1

    def events(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                first = self._next_id
                self._next_id += 5
                batch = [{"id": i, "user": i % 7, "amount": i * 0.5} for i in range(first, first + 5)]
                try:
                    response = client.post(f"/v1/events/{TOPIC}", json=batch)
                except httpx.HTTPError:
                    time.sleep(0.02)
                    continue
                if response.status_code == 200:
                    self.acknowledged.extend(e["id"] for e in batch)


def check_parquet(directory: Path) -> dict:
    """Every finished file readable; unfinished ones (killed writers) quarantined by the next start."""
    readable, unreadable, rows = 0, [], 0
    for path in sorted(directory.glob("*/*.parquet")):
        if path.parent.name == "_quarantine":
            continue
        try:
            rows += pq.read_table(path).num_rows
            readable += 1
        except Exception as exc:  # an unreadable finished file is exactly what this run looks for
            unreadable.append(f"{path.name}: {exc}")
    quarantined = len(list((directory / "_quarantine").glob("*/*.parquet.tmp")))
    left = [p.name for p in directory.glob("*/*.parquet.tmp") if p.parent.name != "_quarantine"]
    return {"readable": readable, "rows": rows, "unreadable": unreadable, "quarantined": quarantined, "tmp_left": left}


def check_sqlite(root: Path) -> dict:
    results = {}
    for path in sorted(root.rglob("*.db")):
        with sqlite3.connect(path) as db:
            results[path.name] = db.execute("PRAGMA integrity_check").fetchone()[0]
    return results


def missing_events(root: Path, acknowledged: list[int]) -> list[int]:
    with sqlite3.connect(root / "streams.db") as db:
        stored = {json.loads(value)["id"] for (value,) in db.execute("SELECT value FROM log WHERE topic=?", (TOPIC,))}
    return sorted(set(acknowledged) - stored)


def run_soak(root: Path, seconds: float, workers: int = 1, seed: int = 0) -> dict:
    """The soak in ``root`` (a fresh folder); returns the report (``ok`` says whether it passed)."""
    rng = random.Random(seed)
    config = write_project(root, workers)
    server = Server(config, free_port())
    load = Load(server.url, seed)
    kills = 0
    threads = [threading.Thread(target=load.infer, daemon=True), threading.Thread(target=load.events, daemon=True)]
    try:
        server.start()
        for thread in threads:
            thread.start()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            # A random moment: mid-write of a payload file, mid-append of events, mid-cache write.
            time.sleep(rng.uniform(0.5, 3.0))  # the pace of the kills is the experiment, not a wait
            server.kill()
            kills += 1
            server.start()
        load.stop.set()
        for thread in threads:
            thread.join(timeout=10)
        server.kill()  # end on a kill too: the checks see the state a crash leaves
        kills += 1
        server.start()  # a restart quarantines what the last kill left half-written
        assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        load.stop.set()
        server.close()
    payload = check_parquet(root / "payload-log")
    sqlite = check_sqlite(root)
    missing = missing_events(root, load.acknowledged)
    ok = (
        not payload["unreadable"]
        and not payload["tmp_left"]
        and all(v == "ok" for v in sqlite.values())
        and not missing
        and load.answered > 0
        and load.acknowledged
    )
    return {
        "ok": bool(ok),
        "seconds": seconds,
        "kills": kills,
        "answered": load.answered,
        "failed_while_down": load.failed,
        "events_acknowledged": len(load.acknowledged),
        "events_missing": missing[:20],
        "payload_log": payload,
        "sqlite_integrity": sqlite,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="kill -9 soak of the server")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the project folder for inspection")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlscale-soak-"))
    report = run_soak(root, args.seconds, args.workers, args.seed)
    report["folder"] = str(root) if args.keep else None
    print(json.dumps(report))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
