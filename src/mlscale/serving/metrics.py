"""The server's Prometheus metrics, summed over worker processes.

With several workers, ``mlscale serve`` sets PROMETHEUS_MULTIPROC_DIR before any worker starts, so
each process writes its samples to shared files and ``/metrics`` on any worker reports the sum.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "mlscale_requests", "Inference requests by model, version and outcome.", ["model", "version", "outcome"]
)
# Refusals at the edge by reason (unauthorized, forbidden, rate_limited); never a key or tenant label:
# secrets stay out of metrics, and thousands of tenants would explode the series count.
EDGE_REFUSALS = Counter("mlscale_edge_refusals", "Requests refused by authentication, scopes or quotas.", ["reason"])
REQUEST_DURATION = Histogram(
    "mlscale_request_duration_seconds",
    "Time from a request's arrival to its answer.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "mlscale_batch_size",
    "Rows per model call after adaptive batching.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "mlscale_queue_wait_seconds",
    "Time a request waited in its model's queue before its batch ran.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
SHED = Counter(
    "mlscale_shed_requests",
    "Requests refused by overload control, by reason: admission (no room in the model's queue "
    "within max_queue_wait; refused before the body is read), queue_full (a hard bound).",
    ["model", "version", "reason"],
)
INFLIGHT = Gauge(
    "mlscale_inflight_requests",
    "Inference requests being served now.",
    ["model"],
    multiprocess_mode="livesum",
)
MODEL_LOAD = Histogram(
    "mlscale_model_load_seconds",
    "Time to load a model version.",
    ["model", "version"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class ModelMeters:
    """One model version's labelled metric children, resolved once at load time: ``labels()``
    costs microseconds per call, too much to pay several times on every request."""

    def __init__(self, model: str, version: str) -> None:
        self._labels = (model, version)
        self.success = REQUESTS.labels(model, version, "success")
        self.duration = REQUEST_DURATION.labels(model, version)
        self.batch_size = BATCH_SIZE.labels(model, version)
        self.queue_wait = QUEUE_WAIT.labels(model, version)
        self.inflight = INFLIGHT.labels(model)
        self._outcomes: dict[str, Counter] = {}

    def outcome(self, outcome: str):
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = REQUESTS.labels(*self._labels, outcome)
        return child

    def on_shed(self, reason: str) -> None:
        """The batcher's callback for each request it refuses."""
        SHED.labels(*self._labels, reason).inc()

    def on_batch(self, rows: int, waits: list[float]) -> None:
        """The batcher's callback: one batch of ``rows`` ran after its requests waited ``waits``."""
        self.batch_size.observe(rows)
        for wait in waits:
            self.queue_wait.observe(wait)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text of every metric of this process, or of all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
