"""A live dashboard for browser tests: a real prometheus_client registry fed by a background loop,
served by a real uvicorn server, with demo models, drift, alerts and cameras.

Every scrape the dashboard makes is recorded with the registry's own values at that instant, so a
test can check each plotted point against what the registry really produced.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlscale.monitoring.dashboard import DashboardSources, create_dashboard_app, mount_dashboard

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# model, version, share of traffic, median latency (s)
MODELS = (("iris", "2", 0.75, 0.004), ("iris", "1", 0.1, 0.006), ("fraud", "3", 0.15, 0.012))


@dataclass
class Scrape:
    """The registry's ground truth at the moment the dashboard scraped it."""

    requests: float
    hits: float
    misses: float
    latency_buckets: list[tuple[float, float]]


@dataclass
class DemoTraffic:
    """Requests, latencies, batches and cache lookups recorded into a real registry by a thread."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    scrapes: list[Scrape] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("mlscale_requests", "Requests", ["model", "version", "outcome"], registry=r)
        self.duration = Histogram(
            "mlscale_request_duration_seconds",
            "Latency",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "mlscale_queue_wait_seconds",
            "Queue wait",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "mlscale_batch_size", "Batch size", ["model", "version"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inflight = Gauge("mlscale_inflight_requests", "In flight", ["model"], registry=r)
        self.cache = Counter("mlscale_cache_requests", "Cache lookups", ["cache", "tier", "result"], registry=r)
        self.cache_bytes = Gauge("mlscale_cache_bytes", "Cache size", ["cache", "tier"], registry=r)

    def run(self) -> None:
        rng = random.Random(7)
        tick = 0
        while not self.stop.wait(0.05):
            tick += 1
            load = 1.0 + 0.45 * math.sin(tick / 16) + 0.15 * math.sin(tick / 3)
            with self.lock:
                for model, version, share, median in MODELS:
                    n = max(1, round(30 * share * load * rng.uniform(0.8, 1.2)))
                    slow = 1.0 + 0.8 * max(0.0, math.sin(tick / 22))  # a periodic slowdown
                    for _ in range(n):
                        self.duration.labels(model, version).observe(rng.lognormvariate(math.log(median * slow), 0.45))
                        self.queue.labels(model, version).observe(rng.expovariate(1 / (median * 0.3)))
                        outcome = "error" if rng.random() < 0.012 else "success"
                        if load > 1.45 and rng.random() < 0.05:
                            outcome = "rejected"
                        self.requests.labels(model, version, outcome).inc()
                    for _ in range(max(1, n // 6)):
                        self.batch.labels(model, version).observe(min(64, max(1, round(rng.lognormvariate(2.0, 0.6)))))
                    self.inflight.labels(model).set(rng.randint(0, 6))
                for tier, hit_rate in (("l1", 0.55 + 0.1 * math.sin(tick / 12)), ("l2", 0.8)):
                    for _ in range(12):
                        self.cache.labels("predictions", tier, "hit" if rng.random() < hit_rate else "miss").inc()
                self.cache_bytes.labels("predictions", "l1").set(48_000_000 + 1000 * tick)
                self.cache_bytes.labels("predictions", "l2").set(610_000_000)

    def metrics_text(self) -> str:
        with self.lock:
            text = generate_latest(self.registry).decode()
            # Ground truth straight from prometheus_client's objects, not from the text the dashboard parses.
            requests = hits = misses = 0.0
            buckets = dict.fromkeys([*LATENCY_BUCKETS, math.inf], 0.0)
            for metric in self.registry.collect():
                for sample in metric.samples:
                    if sample.name == "mlscale_requests_total":
                        requests += sample.value
                    elif sample.name == "mlscale_request_duration_seconds_bucket":
                        buckets[float(sample.labels["le"])] += sample.value
                    elif sample.name == "mlscale_cache_requests_total":
                        if sample.labels["result"] == "hit":
                            hits += sample.value
                        else:
                            misses += sample.value
            self.scrapes.append(Scrape(requests, hits, misses, sorted(buckets.items())))
        return text


def _histogram(values: np.ndarray, edges: np.ndarray) -> dict[str, list[float]]:
    counts, _ = np.histogram(values, bins=edges)
    return {"bins": edges.round(3).tolist(), "counts": counts.tolist()}


def demo_drift() -> dict[str, Any]:
    """Reference vs current histograms for an iris-like input monitor; two features drifted."""
    rng = np.random.default_rng(3)
    features = []
    specs = [
        ("petal_length", 3.8, 1.7, 4.9, 1.5, "wasserstein", 0.41, 0.1, True),
        ("sepal_width", 3.05, 0.43, 3.06, 0.44, "ks", 0.032, 0.05, False),
        ("sepal_length", 5.8, 0.8, 5.85, 0.82, "ks", 0.041, 0.05, False),
        ("petal_width", 1.2, 0.75, 1.75, 0.6, "psi", 0.38, 0.2, True),
    ]
    for name, mu_r, sd_r, mu_c, sd_c, test, value, threshold, drifted in specs:
        reference, current = rng.normal(mu_r, sd_r, 5000), rng.normal(mu_c, sd_c, 800)
        edges = np.linspace(min(reference.min(), current.min()), max(reference.max(), current.max()), 25)
        features.append(
            {
                "feature": name,
                "test": test,
                "value": value,
                "threshold": threshold,
                "drifted": drifted,
                "reference": _histogram(reference, edges),
                "current": _histogram(current, edges),
            }
        )
    features.append(
        {
            "feature": "prediction",
            "test": "jensenshannon",
            "value": 0.06,
            "threshold": 0.1,
            "drifted": False,
            "reference": {"bins": ["setosa", "versicolor", "virginica"], "counts": [1650, 1700, 1650]},
            "current": {"bins": ["setosa", "versicolor", "virginica"], "counts": [230, 270, 300]},
        }
    )
    return {"monitors": [{"name": "iris-inputs", "rows": 800, "features": features}]}


def demo_sources(traffic: DemoTraffic) -> DashboardSources:
    started = time.time()
    return DashboardSources(
        metrics_text=traffic.metrics_text,
        models=lambda: [
            {
                "name": "iris",
                "versions": [
                    {"version": "1", "state": "READY", "traffic": 0.1},
                    {"version": "2", "state": "READY", "traffic": 0.9},
                ],
                "aliases": {"prod": "2", "canary": "1"},
                "ready": True,
            },
            {"name": "fraud", "versions": ["3"], "aliases": {"prod": "3"}, "ready": True},
            {
                "name": "detector",
                "versions": ["2", {"version": "1", "state": "UNAVAILABLE", "reason": "model.onnx is missing"}],
                "aliases": {},
                "ready": False,
                "state": "loading",
            },
        ],
        drift=demo_drift,
        alerts=lambda: [
            {
                "rule": "dataset_drift",
                "state": "firing",
                "since": started - 300,
                "value": 0.4,
                "severity": "warning",
                "message": "iris-inputs: 2 of 5 columns drifted",
            },
            {
                "rule": "camera_lag",
                "state": "pending",
                "since": started - 20,
                "value": 1.4,
                "severity": "warning",
                "message": "dock-2 lags 1.4 s behind live",
            },
            {
                "rule": "error_rate",
                "state": "resolved",
                "since": started - 1800,
                "value": 0.004,
                "severity": "critical",
                "message": "error ratio back under 1%",
            },
        ],
        # The vision pipeline's status() as it is: fps_in/fps_processed, events counted per kind,
        # recent_events with snapshot paths inside the events folder (served by the dashboard).
        cameras=lambda: {
            "running": True,
            "cameras": [
                {
                    "camera": "entrance",
                    "connected": True,
                    "warming_up": False,
                    "fps_in": 30.0,
                    "fps_processed": 29.6,
                    "dropped": 12,
                    "lag_seconds": 0.08,
                    "latency_p50": 0.021,
                    "latency_p99": 0.048,
                    "events": {"loitering": 1},
                    "recent_events": [
                        {
                            "time": started - 95,
                            "kind": "loitering",
                            "score": 0.91,
                            "snapshot": "snapshots/entrance-1.png",
                        }
                    ],
                    "last_error": None,
                },
                {
                    "camera": "dock-2",
                    "connected": True,
                    "warming_up": False,
                    "fps_in": 25.0,
                    "fps_processed": 17.8,
                    "dropped": 1440,
                    "lag_seconds": 1.4,
                    "latency_p50": 0.052,
                    "latency_p99": 0.131,
                    "events": {"intrusion": 3, "motion": 1},
                    "recent_events": [
                        {"time": started - 610, "kind": "motion", "score": 0.64, "snapshot": None},
                        {
                            "time": started - 40,
                            "kind": "intrusion",
                            "score": 0.97,
                            "snapshot": "snapshots/dock-2-7.png",
                        },
                    ],
                    "last_error": None,
                },
                {
                    "camera": "yard",
                    "connected": False,
                    "warming_up": False,
                    "fps_in": 0.0,
                    "fps_processed": 0.0,
                    "dropped": 0,
                    "lag_seconds": 0.0,
                    "latency_p50": None,
                    "latency_p99": None,
                    "events": {},
                    "recent_events": [],
                    "last_error": "rtsp://10.0.0.7/stream: connection refused, retrying",
                },
            ],
        },
    )


SNAPSHOTS = ("entrance-1.png", "dock-2-7.png")


def write_snapshot(path: Path, seed: int) -> None:
    """A small night-scene PNG with a red box, written with zlib alone (no imaging library)."""
    width, height = 96, 60
    rng = random.Random(seed)
    x0, y0 = rng.randint(20, 55), rng.randint(10, 25)
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            shade = 28 + (y * 40) // height + rng.randint(0, 6)
            pixel = (shade, shade + 8, shade + 22)
            if x0 <= x < x0 + 18 and y0 <= y < y0 + 26 and (x in (x0, x0 + 17) or y in (y0, y0 + 25)):
                pixel = (248, 113, 113)
            rows += bytes(pixel)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


@dataclass
class LiveDashboard:
    url: str
    traffic: DemoTraffic


@contextlib.contextmanager
def serving(dashboards: list, traffic: DemoTraffic):
    """Run uvicorn on a free port with ``dashboards`` mounted at /dashboard while traffic flows.

    With several dashboards, API polls go to each in turn, as a browser's polls may reach different
    worker processes of one server, each with its own history.
    """
    polls = itertools.count()

    async def dashboard(scope, receive, send):
        pick = next(polls) % len(dashboards) if scope["path"].endswith("/api/summary") else 0
        await dashboards[pick](scope, receive, send)

    async def inference(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = mount_dashboard(inference, dashboard)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threads = [
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True),
        threading.Thread(target=traffic.run, daemon=True),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        traffic.stop.set()
        server.should_exit = True
        for thread in threads:
            thread.join(timeout=10)
        sock.close()


def _dashboard(traffic: DemoTraffic, snapshots_dir: Path | None = None, **overrides):
    sources = demo_sources(traffic)
    for name, value in overrides.items():
        setattr(sources, name, value)
    dashboard = create_dashboard_app(sources, refresh_ms=400, window=30.0, snapshots_dir=snapshots_dir)
    dashboard.history.min_interval = 0.2
    return dashboard


def _alert_store_down():
    raise ConnectionError("alert store unreachable")


@pytest.fixture
def live_dashboard(tmp_path):
    """A uvicorn server with the dashboard mounted at /dashboard, traffic flowing, and camera event
    snapshots in a folder the dashboard serves."""
    traffic = DemoTraffic()
    for seed, name in enumerate(SNAPSHOTS):
        write_snapshot(tmp_path / name, seed)
    with serving([_dashboard(traffic, snapshots_dir=tmp_path)], traffic) as url:
        yield LiveDashboard(url=url, traffic=traffic)


@pytest.fixture
def two_worker_dashboard():
    """Like ``live_dashboard`` but polls alternate between two dashboards with separate histories;
    cameras are not configured, drift returns None and the alerts source fails."""
    traffic = DemoTraffic()
    broken = {"cameras": None, "drift": lambda: None, "alerts": _alert_store_down}
    dashboards = [_dashboard(traffic, **broken), _dashboard(traffic, **broken)]
    with serving(dashboards, traffic) as url:
        yield LiveDashboard(url=url, traffic=traffic), dashboards
