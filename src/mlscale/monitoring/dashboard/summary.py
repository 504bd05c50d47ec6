"""A short in-memory history of scrapes, and the numbers the page plots, computed from it.

Counters and histograms only mean something as differences, so the history keeps recent snapshots:
each new one adds a point to the time series (rates and quantiles over the step since the previous
one), and windowed figures (headline numbers, per-model table, batch-size distribution) compare the
newest snapshot with the oldest one inside the window. Everything is computed here, server-side, so
the browser only draws.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from mlscale.monitoring.dashboard.promtext import (
    Snapshot,
    TextParser,
    bucket_counts,
    buckets_by,
    histogram_quantile,
    increase,
    sum_by,
    total,
)

REQUESTS = "mlscale_requests_total"
DURATION = "mlscale_request_duration_seconds"
BATCH = "mlscale_batch_size"
QUEUE_WAIT = "mlscale_queue_wait_seconds"
INFLIGHT = "mlscale_inflight_requests"
CACHE_REQUESTS = "mlscale_cache_requests_total"
CACHE_BYTES = "mlscale_cache_bytes"
ALERTS_FIRING = "mlscale_alerts_firing"

ERROR_OUTCOMES = {"error", "timeout"}
QUANTILES = (0.5, 0.9, 0.99)
SERIES_KEYS = (
    "time",
    "requests_per_second",
    "errors_per_second",
    "rejected_per_second",
    "p50",
    "p90",
    "p99",
    "queue_wait_p99",
    "batch_size_mean",
    "cache_hit_ratio",
    "inflight",
)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _quantile(samples: list, q: float) -> float:
    buckets = buckets_by(samples).get(())
    return histogram_quantile(q, buckets) if buckets else math.nan


def _clean(value: float) -> float | None:
    """NaN means "no data in this interval": JSON null, which the charts draw as a gap."""
    return None if value is None or math.isnan(value) else value


def step_point(current: Snapshot, previous: Snapshot) -> dict[str, float | None]:
    """One point of each time series: rates and quantiles over the step between two snapshots."""
    dt = current.time - previous.time
    requests = increase(current, previous, REQUESTS)
    durations = increase(current, previous, DURATION + "_bucket")
    batch_sum = total(increase(current, previous, BATCH + "_sum"))
    batch_count = total(increase(current, previous, BATCH + "_count"))
    cache = sum_by(increase(current, previous, CACHE_REQUESTS), ("result",))
    hits, misses = cache.get(("hit",), 0.0), cache.get(("miss",), 0.0)
    point: dict[str, float | None] = {
        "time": current.time,
        "requests_per_second": total(requests) / dt,
        "errors_per_second": total(requests, {"outcome": ERROR_OUTCOMES}) / dt,
        "rejected_per_second": total(requests, {"outcome": {"rejected"}}) / dt,
        "queue_wait_p99": _clean(_quantile(increase(current, previous, QUEUE_WAIT + "_bucket"), 0.99)),
        "batch_size_mean": _clean(_ratio(batch_sum, batch_count)),
        "cache_hit_ratio": _clean(_ratio(hits, hits + misses)),
        "inflight": total(current.get(INFLIGHT)),
    }
    for q in QUANTILES:
        point[f"p{round(q * 100)}"] = _clean(_quantile(durations, q))
    return point


def window_figures(current: Snapshot, previous: Snapshot | None) -> dict[str, Any]:
    """Headline numbers and tables over a window; ``previous`` None means "since the server started"."""
    dt = current.time - previous.time if previous is not None else math.nan
    requests = increase(current, previous, REQUESTS)
    durations = increase(current, previous, DURATION + "_bucket")
    requests_total = total(requests)
    errors = total(requests, {"outcome": ERROR_OUTCOMES})

    per_model = []
    counts = sum_by(requests, ("model", "version"))
    error_counts = sum_by(requests, ("model", "version"), {"outcome": ERROR_OUTCOMES})
    latency = buckets_by(durations, ("model", "version"))
    for key in sorted(set(counts) | set(latency)):
        buckets = latency.get(key, [])
        per_model.append(
            {
                "model": key[0],
                "version": key[1],
                "requests": counts.get(key, 0.0),
                "requests_per_second": _clean(_ratio(counts.get(key, 0.0), dt)),
                "error_ratio": _clean(_ratio(error_counts.get(key, 0.0), counts.get(key, 0.0))),
                "p50": _clean(histogram_quantile(0.5, buckets)) if buckets else None,
                "p99": _clean(histogram_quantile(0.99, buckets)) if buckets else None,
            }
        )

    batch = buckets_by(increase(current, previous, BATCH + "_bucket")).get((), [])
    cache_counts = sum_by(increase(current, previous, CACHE_REQUESTS), ("cache", "tier", "result"))
    cache_bytes = sum_by(current.get(CACHE_BYTES), ("cache", "tier"))
    tiers = sorted({k[:2] for k in cache_counts} | set(cache_bytes))
    cache_rows = []
    for cache_name, tier in tiers:
        hits = cache_counts.get((cache_name, tier, "hit"), 0.0)
        misses = cache_counts.get((cache_name, tier, "miss"), 0.0)
        cache_rows.append(
            {
                "cache": cache_name,
                "tier": tier,
                "hits": hits,
                "misses": misses,
                "hit_ratio": _clean(_ratio(hits, hits + misses)),
                "bytes": cache_bytes.get((cache_name, tier)),
            }
        )
    all_hits = sum(r["hits"] for r in cache_rows)
    all_lookups = all_hits + sum(r["misses"] for r in cache_rows)

    return {
        "seconds": _clean(dt),
        "requests": requests_total,
        "requests_per_second": _clean(_ratio(requests_total, dt)),
        "error_ratio": _clean(_ratio(errors, requests_total)),
        "rejected": total(requests, {"outcome": {"rejected"}}),
        "p50": _clean(_quantile(durations, 0.5)),
        "p90": _clean(_quantile(durations, 0.9)),
        "p99": _clean(_quantile(durations, 0.99)),
        "cache_hit_ratio": _clean(_ratio(all_hits, all_lookups)),
        "inflight": total(current.get(INFLIGHT)),
        "alerts_firing": total(current.get(ALERTS_FIRING)),
        "per_model": per_model,
        "batch_sizes": [{"le": le, "count": count} for le, count in bucket_counts(batch)],
        "cache": cache_rows,
    }


class MetricsHistory:
    """Recent snapshots of the metrics text and the time series derived from them.

    Snapshots are taken when the page asks (at most one per ``min_interval``, however many browsers
    poll), so nothing runs while nobody looks; ``max_age`` bounds memory and the longest window.
    """

    def __init__(self, max_age: float = 300.0, min_interval: float = 0.5) -> None:
        self.max_age = max_age
        self.min_interval = min_interval
        self._parser = TextParser()
        self._snapshots: deque[Snapshot] = deque()
        self._series: deque[dict[str, float | None]] = deque()

    @property
    def latest(self) -> Snapshot | None:
        return self._snapshots[-1] if self._snapshots else None

    def due(self, now: float) -> bool:
        latest = self.latest
        return latest is None or now - latest.time >= self.min_interval

    def add(self, text: str, now: float) -> Snapshot:
        """Parse one scrape and extend the series; raises ``ValueError`` on malformed text."""
        snapshot = self._parser.parse(text, now)
        latest = self.latest
        if latest is not None and now <= latest.time:
            raise ValueError("snapshots must be added in time order")
        if latest is not None:
            self._series.append(step_point(snapshot, latest))
        self._snapshots.append(snapshot)
        # Keep the step before the latest even when old: after a quiet spell it is the only baseline.
        while len(self._snapshots) > 2 and now - self._snapshots[0].time > self.max_age:
            self._snapshots.popleft()
        while self._series and now - self._series[0]["time"] > self.max_age:
            self._series.popleft()
        return snapshot

    def _oldest_within(self, window: float) -> Snapshot | None:
        latest = self.latest
        if latest is None or len(self._snapshots) < 2:
            return None
        for snapshot in self._snapshots:
            if latest.time - snapshot.time <= window and snapshot is not latest:
                return snapshot
        # Nothing else inside the window: the step from the previous snapshot is the best there is.
        return self._snapshots[-2]

    def summary(self, window: float) -> dict[str, Any]:
        """Time series plus the windowed figures; before the second snapshot the window is empty."""
        series = {key: [p[key] for p in self._series] for key in SERIES_KEYS}
        latest = self.latest
        if latest is None:
            return {"series": series, "window": None}
        previous = self._oldest_within(window)
        figures = window_figures(latest, previous) if previous is not None else None
        return {"series": series, "window": figures}
