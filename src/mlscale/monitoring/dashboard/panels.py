"""Shaping what the non-metric sources return into what the page draws.

Sources are written by other parts (drift monitors, alert rules, the video pipeline), so this is the
one place that tolerates their variations and does the arithmetic the browser should not: histogram
counts become shares (reference and current windows differ in size, so raw counts would not compare)
and numeric bin edges become bar centres and widths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

ALERT_ORDER = {"firing": 0, "pending": 1, "resolved": 2}


def _shares(counts: Sequence[float]) -> list[float]:
    values = [float(c) for c in counts]
    whole = sum(values)
    return [v / whole for v in values] if whole > 0 else [0.0 for _ in values]


def histogram_bars(reference: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """Reference and current histograms as bars on one x axis.

    Numeric bins are edges (one more than counts): bars sit at bin centres with the bin's width.
    Categorical bins are labels: the union of both sides' categories, in the reference's order first,
    so a category that only appears in the current window still shows.
    """
    reference = reference or {}
    current = current or {}
    ref_bins, ref_counts = list(reference.get("bins", [])), list(reference.get("counts", []))
    cur_bins, cur_counts = list(current.get("bins", [])), list(current.get("counts", []))
    numeric = bool(ref_bins) and len(ref_bins) == len(ref_counts) + 1
    if numeric:
        edges = [float(e) for e in ref_bins]
        if cur_bins and [float(e) for e in cur_bins] != edges:
            raise ValueError("reference and current histograms must share bin edges")
        return {
            "kind": "numeric",
            "x": [(lo + hi) / 2 for lo, hi in pairwise(edges)],
            "width": [hi - lo for lo, hi in pairwise(edges)],
            "reference": _shares(ref_counts),
            "current": _shares(cur_counts) if cur_counts else [],
        }
    categories = [str(b) for b in ref_bins] + [str(b) for b in cur_bins if str(b) not in map(str, ref_bins)]
    ref_map = dict(zip(map(str, ref_bins), _shares(ref_counts), strict=False))
    cur_map = dict(zip(map(str, cur_bins), _shares(cur_counts), strict=False))
    return {
        "kind": "categorical",
        "x": categories,
        "width": None,
        "reference": [ref_map.get(c, 0.0) for c in categories],
        "current": [cur_map.get(c, 0.0) for c in categories],
    }


def _first(mapping: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return default


def drift_panel(data: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise drift results for the panel.

    Accepts ``{"monitors": [...]}``, ``{"monitors": {name: result}}`` (the state ``mlscale monitor run``
    writes, where a result lists ``columns`` and ``share`` is the drifted share while ``drift_share`` is
    the threshold), or one monitor given bare. A monitor that failed or has no rows yet is kept, with
    its error, so the page says why it shows nothing.
    """
    monitors = data.get("monitors")
    if monitors is None:
        monitors = [data] if ("features" in data or "columns" in data) else []
    elif isinstance(monitors, Mapping):
        monitors = [{"name": name, **result} for name, result in monitors.items()]
    out = []
    for monitor in monitors:
        features = []
        for feature in _first(monitor, "features", "columns", default=[]):
            try:
                bars, error = histogram_bars(feature.get("reference"), feature.get("current")), None
            except (ValueError, TypeError) as exc:  # one bad histogram must not hide the others
                bars, error = None, str(exc)
            features.append(
                {
                    "feature": str(_first(feature, "feature", "column", "name", default="?")),
                    "test": feature.get("test"),
                    "value": feature.get("value"),
                    "threshold": feature.get("threshold"),
                    "drifted": bool(feature.get("drifted", False)),
                    "histogram": bars,
                    "error": error,
                }
            )
        drifted = sum(f["drifted"] for f in features)
        measured = drifted / len(features) if features else 0.0
        has_share = monitor.get("share") is not None
        share = monitor["share"] if has_share else monitor.get("drift_share", measured)
        out.append(
            {
                "name": str(_first(monitor, "name", "monitor", default="monitor")),
                "model": monitor.get("model"),
                "drift_share": share,
                "threshold": monitor.get("drift_share") if has_share else None,
                "drifted": bool(monitor.get("drifted", drifted > 0)),
                "rows": _first(monitor, "current_rows", "rows"),
                "error": monitor.get("error"),
                "features": features,
            }
        )
    return {"monitors": out}


def _alert_message(alert: Mapping[str, Any]) -> str:
    message = _first(alert, "message", "summary")
    if message is None and alert.get("metric") is not None:
        message = f"{alert['metric']} {alert.get('op', '')} {alert.get('threshold', '')}".strip()
    labels = alert.get("labels") or {}
    if labels and isinstance(labels, Mapping):
        message = f"{message or ''} ({', '.join(f'{k}={v}' for k, v in labels.items())})".strip()
    return message or ""


def alerts_panel(alerts: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Firing first, then pending, then resolved; the newest first within each state.

    Accepts a list of alerts or the alert manager's ``{"active": [...], "recent": [...]}``, whose
    resolved notices (``status``, ``ends_at``) become resolved rows unless the alert is active again.
    """
    if isinstance(alerts, Mapping):
        active = [dict(a) for a in alerts.get("active", [])]
        keys = {(a.get("rule"), tuple(sorted((a.get("labels") or {}).items()))) for a in active}
        resolved: dict[tuple, dict[str, Any]] = {}
        for note in alerts.get("recent", []):
            key = (note.get("rule"), tuple(sorted((note.get("labels") or {}).items())))
            if note.get("status") == "resolved" and key not in keys:
                resolved[key] = {**note, "state": "resolved", "since": note.get("ends_at")}
        rows = active + list(resolved.values())
    else:
        rows = [dict(a) for a in alerts]

    def since(a: Mapping[str, Any]) -> float:
        value = a.get("since")
        return float(value) if isinstance(value, int | float) else 0.0

    for row in rows:
        row["message"] = _alert_message(row)
    rows.sort(key=lambda a: (ALERT_ORDER.get(str(a.get("state")), 3), -since(a)))
    return rows


def _event(event: Mapping[str, Any], snapshots: bool) -> dict[str, Any]:
    url = event.get("snapshot_url")
    path = event.get("snapshot")
    if url is None and path and snapshots:
        # The events folder's snapshots are served by the dashboard at the same relative path.
        url = "snapshots/" + str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return {
        "time": event.get("time"),
        "label": _first(event, "label", "kind", default="anomaly"),
        "score": event.get("score"),
        "snapshot_url": url,
    }


def cameras_panel(data: Sequence[Mapping[str, Any]] | Mapping[str, Any], snapshots: bool = False) -> list[dict]:
    """Normalise camera feeds: a list of cameras, or the vision pipeline's ``status()`` as it is
    (``fps_in``/``fps_processed``, ``events`` counted per kind, ``recent_events`` with snapshot paths).
    Event snapshots become URLs only when the dashboard serves the snapshots folder (``snapshots``)."""
    cameras = data.get("cameras", []) if isinstance(data, Mapping) else data
    out = []
    for camera in cameras:
        events = camera.get("events")
        counts = events if isinstance(events, Mapping) else None
        recent = events if isinstance(events, list) else camera.get("recent_events", [])
        rows = sorted((_event(e, snapshots) for e in recent), key=lambda e: -(e["time"] or 0))
        out.append(
            {
                "camera": str(_first(camera, "camera", "name", default="camera")),
                "connected": camera.get("connected", True),
                "warming_up": bool(camera.get("warming_up", False)),
                "input_fps": _first(camera, "input_fps", "fps_in"),
                "processed_fps": _first(camera, "processed_fps", "fps_processed"),
                "dropped": camera.get("dropped"),
                "lag_seconds": camera.get("lag_seconds"),
                "latency_p50": camera.get("latency_p50"),
                "latency_p99": camera.get("latency_p99"),
                "last_error": camera.get("last_error"),
                "event_counts": dict(counts) if counts else None,
                "events": rows,
            }
        )
    return out
