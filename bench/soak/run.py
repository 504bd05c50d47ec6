"""Kill -9 soak: SIGKILL the server (payload log, prediction cache with a SQLite shared tier, event
ingestion on the embedded broker), the stream processor and the drift monitor at random moments under
load, restart them, then check what survived.

    python bench/soak/run.py --seconds 300            # the full run (issue 14: 5 minutes)
    python bench/soak/run.py --seconds 15 --workers 1 # what make test runs (tests/serving/test_serving_kill9.py)

Afterwards: every Parquet file of the payload log is readable, and half-written ones (of killed
processes) were quarantined and counted; every SQLite file passes PRAGMA integrity_check; every event
the server acknowledged (200 to POST /v1/events/{topic}) is in the broker; the stream processor's
online windows equal a brute-force count and sum of the events in the log (each exactly once); the
drift monitor's state file parses and a fresh `monitor run --once` succeeds. Prints one JSON
report. Not covered here yet: RSS of a long-running server over 10 minutes.
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
import pyarrow as pa
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
        '[streams]\nbroker = "embedded:streams.db"\nonline = "sqlite:///online.db"\n'
        'checkpoint_dir = "checkpoints"\ncheckpoint_interval = 0.5\nflush_interval = 0.5\n'
        f'[[streams.features]]\nname = "spend"\nsource = "{TOPIC}"\nentity_key = "user"\nevent_time = "ts"\n'
        'window = "tumbling"\nsize = "1d"\nallowed_lateness = "1d"\ndedup_key = "id"\n'
        'aggregations = ["count", "sum(amount)"]\n'
        f'[monitoring]\ninterval = 0.3\nmetrics_port = {free_port()}\nstate_file = "monitoring/latest.json"\n'
        '[monitoring.payload_log]\nenabled = true\ndirectory = "payload-log"\nroll_seconds = 0.5\n'
        '[[monitoring.monitors]]\nname = "double-inputs"\nmodel = "double"\nreference = "reference.parquet"\n'
        "window_rows = 200\n"
    )
    values = random.Random(1).choices(range(51), k=500)
    pq.write_table(
        pa.table({"x_0": [float(v) for v in values], "x_1": [float(v + 1) for v in values]}), root / "reference.parquet"
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


class Worker:
    """A long-running `mlscale` command in its own process group (killed and restarted like the server):
    ``stream run`` (the stream processor) or ``monitor run`` (the drift monitor)."""

    def __init__(self, config: Path, *args: str) -> None:
        self.config = config
        self.args = args
        self.process: subprocess.Popen | None = None
        self.log = open(config.parent / f"{args[0]}.log", "ab")  # noqa: SIM115 - closed in close()

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "mlscale", *self.args, "--config", str(self.config), *extra]

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def drain(self, timeout: float = 120.0) -> int:
        """The stream processor: run to the end of the log (exit after 2 s without events); its exit status."""
        return subprocess.run(
            self.command("--idle-exit", "2"), stdout=self.log, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode

    def close(self) -> None:
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
                now = time.time()
                batch = [{"id": i, "user": f"u{i % 7}", "amount": i * 0.5, "ts": now} for i in range(first, first + 5)]
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


def stored_events(root: Path) -> list[dict]:
    with sqlite3.connect(root / "streams.db") as db:
        return [json.loads(value) for (value,) in db.execute("SELECT value FROM log WHERE topic=?", (TOPIC,))]


def check_windows(root: Path, events: list[dict]) -> dict:
    """The online windows against a brute-force sum of the events in the log (each counted once)."""
    from mlscale.storage.factory import open_url
    from mlscale.streams.online import decode_value

    expected: dict[tuple[str, int], list] = {}
    for event in {e["id"]: e for e in events}.values():
        day = int(event["ts"] * 1000) // 86_400_000 * 86_400_000
        totals = expected.setdefault((event["user"], day), [0, 0.0])
        totals[0] += 1
        totals[1] += event["amount"]
    store = open_url("sqlite:///online.db", root=root)
    wrong = []
    try:
        for (user, day), (count, total) in sorted(expected.items()):
            raw = store.get_many([f"spend|{user}|{day}".encode()])[0]
            value = decode_value(raw) if raw is not None else {}
            if value.get("count") != count or abs(value.get("sum_amount", -1) - total) > 1e-6 * max(1, total):
                wrong.append({"user": user, "expected": [count, total], "online": value})
    finally:
        store.close()
    return {"windows": len(expected), "wrong": wrong[:10]}


def run_soak(root: Path, seconds: float, workers: int = 1, seed: int = 0) -> dict:
    """The soak in ``root`` (a fresh folder); returns the report (``ok`` says whether it passed)."""
    rng = random.Random(seed)
    config = write_project(root, workers)
    server = Server(config, free_port())
    stream = Worker(config, "stream", "run", "--quiet")
    monitor = Worker(config, "monitor", "run")
    load = Load(server.url, seed)
    kills = 0
    stream_kills = 0
    monitor_kills = 0
    threads = [threading.Thread(target=load.infer, daemon=True), threading.Thread(target=load.events, daemon=True)]
    try:
        server.start()
        stream.start()
        monitor.start()
        for thread in threads:
            thread.start()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            # A random moment: mid-write of a payload file, mid-append of events, mid-cache write,
            # mid-checkpoint of the stream processor.
            time.sleep(rng.uniform(0.5, 3.0))  # the pace of the kills is the experiment, not a wait
            victim = rng.random()
            if victim < 0.4:
                server.kill()
                kills += 1
                server.start()
            elif victim < 0.7:
                stream.kill()
                stream_kills += 1
                stream.start()
            else:
                monitor.kill()
                monitor_kills += 1
                monitor.start()
        load.stop.set()
        for thread in threads:
            thread.join(timeout=10)
        server.kill()  # end on a kill too: the checks see the state a crash leaves
        kills += 1
        server.start()  # a restart quarantines what the last kill left half-written
        assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        stream.kill()
        stream_kills += 1
        monitor.kill()
        monitor_kills += 1
        drained = stream.drain()
        # The drift monitor, killed mid-run, starts again and evaluates what the payload log holds.
        monitor_once = subprocess.run(
            monitor.command("--once"), capture_output=True, timeout=120
        )  # the processor restarted after its last kill catches up
    finally:
        load.stop.set()
        server.close()
        stream.close()
        monitor.close()
    state = json.loads((root / "monitoring" / "latest.json").read_text())  # written whole or not at all
    payload = check_parquet(root / "payload-log")
    sqlite = check_sqlite(root)
    events = stored_events(root)
    missing = sorted(set(load.acknowledged) - {e["id"] for e in events})
    windows = check_windows(root, events)
    ok = (
        not payload["unreadable"]
        and not payload["tmp_left"]
        and all(v == "ok" for v in sqlite.values())
        and not missing
        and drained == 0
        and not windows["wrong"]
        and monitor_once.returncode == 0
        and "double-inputs" in json.dumps(state)
        and load.answered > 0
        and load.acknowledged
    )
    return {
        "ok": bool(ok),
        "seconds": seconds,
        "kills": kills,
        "stream_kills": stream_kills,
        "stream_windows": windows,
        "monitor_kills": monitor_kills,
        "monitor_once_exit": monitor_once.returncode,
        "monitor_once_stderr": monitor_once.stderr.decode()[-500:] if monitor_once.returncode else "",
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
