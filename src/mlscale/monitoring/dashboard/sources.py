"""What the dashboard reads, as plain callables the server fills in.

The dashboard knows nothing of the server, the repository, the drift monitors or the cameras: each
panel pulls from one callable here. That keeps the import arrows pointing down (the server imports the
dashboard, never the reverse) and lets a panel be left out: a callable that is ``None`` or returns
``None`` shows as "not configured" on the page.

Shapes (plain dicts and lists of JSON-able values; missing keys are tolerated):

``metrics_text() -> str``
    Prometheus text exposition of the server's registry, summed over worker processes.
``models() -> list[dict]``
    ``{"name": str, "versions": [str | {"version": str, "state": "READY" | ..., "reason": str,
    "traffic": share}], "aliases": {alias: version}, "ready": bool}``.
``drift() -> dict``
    ``{"monitors": [{"name": str, "drift_share": float, "drifted": bool, "features": [
    {"feature": str, "test": str, "value": float, "threshold": float, "drifted": bool,
    "reference": {"bins": [...], "counts": [...]}, "current": {"bins": [...], "counts": [...]}}]}]}``;
    numeric ``bins`` are edges (one more than ``counts``), categorical ``bins`` are the categories.
    The state ``mlscale monitor run`` writes (``{"monitors": {name: {"share", "drift_share",
    "columns": [...]}}}``) is accepted as it is.
``alerts() -> list[dict]``
    ``{"rule": str, "state": "pending" | "firing" | "resolved", "since": epoch seconds or ISO text,
    "value": float, "message": str, "severity": str}``; or the alert manager's snapshot
    ``{"active": [...], "recent": [...]}``, whose resolved notices become resolved rows.
``cameras() -> list[dict]``
    ``{"camera": str, "input_fps": float, "processed_fps": float, "dropped": int, "lag_seconds": float,
    "latency_p50": seconds, "latency_p99": seconds, "events": [{"time": epoch seconds, "label": str,
    "score": float, "snapshot_url": str | None}]}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class DashboardSources:
    """The dashboard's inputs; every field is optional. Callables are run in a worker thread, so they
    may block briefly (e.g. to sum metrics over processes), but should not take seconds."""

    metrics_text: Callable[[], str | None] | None = None
    models: Callable[[], list[dict[str, Any]] | None] | None = None
    drift: Callable[[], dict[str, Any] | None] | None = None
    alerts: Callable[[], list[dict[str, Any]] | None] | None = None
    cameras: Callable[[], list[dict[str, Any]] | None] | None = None
