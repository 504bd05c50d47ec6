"""Prometheus metrics of every cache (registered once per process in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter(
    "mlscale_cache_requests_total",
    "Cache lookups by cache, tier and result (hit, miss, error).",
    ["cache", "tier", "result"],
)
EVICTIONS = Counter(
    "mlscale_cache_evictions_total",
    "Entries evicted to stay within the byte limit.",
    ["cache", "tier"],
)
BYTES = Gauge(
    "mlscale_cache_bytes",
    "Bytes held by the cache tier (keys, values and per-entry overhead).",
    ["cache", "tier"],
    multiprocess_mode="livesum",
)
SHARED = Counter(
    "mlscale_cache_singleflight_shared_total",
    "Requests answered by waiting on an identical request's computation.",
    ["cache"],
)
