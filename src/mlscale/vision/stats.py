"""Per-feed measurements (input and processed fps, drops, latency, lag, events) and their export to
Prometheus.

The numbers live in plain per-feed objects and are turned into Prometheus metric families only when
scraped (a custom collector), so the hot path pays for a few additions, not for label lookups.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import numpy as np

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Rate:
    """Events per second over a sliding window of recent timestamps."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self.times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()

    def rate(self, now: float) -> float:
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(1e-6, max(now, self.times[-1]) - self.times[0])


class FeedStats:
    """Everything measured about one camera. Updated by its reader and the detector threads."""

    def __init__(self, camera: str):
        self.camera = camera
        self._lock = threading.Lock()
        self.input = _Rate()
        self.processed = _Rate()
        self.frames_in = 0
        self.frames_processed = 0
        self.dropped = 0  # offered to the detector but replaced by a newer frame before it was taken
        self.corrupt = 0
        self.reconnects = 0
        self.connected = False
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=2048)
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.last_read_capture: float | None = None
        self.last_processed_capture: float | None = None
        self.events: dict[str, int] = {}
        self.recent_events: deque[dict] = deque(maxlen=10)

    def frame_read(self, capture: float) -> None:
        with self._lock:
            self.frames_in += 1
            self.input.tick(capture)
            self.last_read_capture = capture

    def frame_processed(self, capture: float, done: float) -> None:
        latency = max(0.0, done - capture)
        with self._lock:
            self.frames_processed += 1
            self.processed.tick(done)
            self.last_processed_capture = capture
            self.latencies.append(latency)
            self.latency_sum += latency
            self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1

    def event(self, kind: str, summary: dict) -> None:
        with self._lock:
            self.events[kind] = self.events.get(kind, 0) + 1
            self.recent_events.append(summary)

    def lag(self) -> float:
        """How far the verdicts trail the newest frame read (seconds of capture time)."""
        if self.last_read_capture is None or self.last_processed_capture is None:
            return 0.0
        return max(0.0, self.last_read_capture - self.last_processed_capture)

    def snapshot(self, now: float | None = None) -> dict:
        """A JSON-able view for status() and the dashboard."""
        now = time.time() if now is None else now
        with self._lock:
            lat = np.array(self.latencies) if self.latencies else None
            return {
                "camera": self.camera,
                "at": now,  # when this snapshot was taken (snapshots from worker processes lag a little)
                "connected": self.connected,
                "fps_in": round(self.input.rate(now), 2),
                "fps_processed": round(self.processed.rate(now), 2),
                "frames_in": self.frames_in,
                "frames_processed": self.frames_processed,
                "dropped": self.dropped,
                "corrupt": self.corrupt,
                "reconnects": self.reconnects,
                "lag_seconds": round(self.lag(), 4),
                "latency_p50": round(float(np.percentile(lat, 50)), 4) if lat is not None else None,
                "latency_p99": round(float(np.percentile(lat, 99)), 4) if lat is not None else None,
                "latency_buckets": list(self.bucket_counts),
                "latency_sum": self.latency_sum,
                "events": dict(self.events),
                "recent_events": list(self.recent_events),
                "last_error": self.last_error,
            }


class VisionCollector:
    """Prometheus collector over a ``status()`` callable (works for any pipeline, in or out of process)."""

    def __init__(self, status):
        self._status = status

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        fps_in = GaugeMetricFamily("mlscale_vision_input_fps", "Frames per second read", labels=["camera"])
        fps_done = GaugeMetricFamily("mlscale_vision_processed_fps", "Frames per second analysed", labels=["camera"])
        lag = GaugeMetricFamily("mlscale_vision_lag_seconds", "Verdicts behind newest frame", labels=["camera"])
        dropped = CounterMetricFamily(
            "mlscale_vision_dropped_frames", "Frames replaced before analysis", labels=["camera"]
        )
        events = CounterMetricFamily("mlscale_vision_events", "Anomaly events", labels=["camera", "kind"])
        latency = HistogramMetricFamily(
            "mlscale_vision_latency_seconds", "Capture to verdict latency", labels=["camera"]
        )
        for cam in self._status()["cameras"]:
            name = cam["camera"]
            fps_in.add_metric([name], cam["fps_in"])
            fps_done.add_metric([name], cam["fps_processed"])
            lag.add_metric([name], cam["lag_seconds"])
            dropped.add_metric([name], cam["dropped"])
            for kind, count in cam["events"].items():
                events.add_metric([name, kind], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), cam["latency_buckets"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            latency.add_metric([name], buckets, cam["latency_sum"])
        yield from (fps_in, fps_done, lag, dropped, events, latency)
