"""Prometheus metrics of the stream processor (one set per process, as Prometheus expects)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "mlscale_stream_events_total",
    "Records seen by the stream processor, by outcome (processed, duplicate, late, malformed).",
    ["topic", "outcome"],
)
LAG = Gauge("mlscale_stream_lag", "Records appended but not yet acknowledged by the group.", ["topic", "group"])
DEAD_LETTERS = Counter(
    "mlscale_stream_dead_letters_total",
    "Records sent to the dead-letter topic, by reason.",
    ["topic", "reason"],
)
