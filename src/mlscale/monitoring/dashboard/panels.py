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


def drift_panel(data: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise ``{"monitors": [...]}`` (or one monitor given bare) for the drift panel."""
    monitors = data.get("monitors")
    if monitors is None:
        monitors = [data] if "features" in data else []
    out = []
    for monitor in monitors:
        features = []
        for feature in monitor.get("features", []):
            features.append(
                {
                    "feature": str(feature.get("feature", feature.get("name", "?"))),
                    "test": feature.get("test"),
                    "value": feature.get("value"),
                    "threshold": feature.get("threshold"),
                    "drifted": bool(feature.get("drifted", False)),
                    "histogram": histogram_bars(feature.get("reference"), feature.get("current")),
                }
            )
        drifted = sum(f["drifted"] for f in features)
        share = monitor.get("drift_share", drifted / len(features) if features else 0.0)
        out.append(
            {
                "name": str(monitor.get("name", monitor.get("monitor", "monitor"))),
                "drift_share": share,
                "drifted": bool(monitor.get("drifted", drifted > 0)),
                "rows": monitor.get("rows"),
                "features": features,
            }
        )
    return {"monitors": out}


def alerts_panel(alerts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Firing first, then pending, then resolved; the newest first within each state."""

    def since(a: Mapping[str, Any]) -> float:
        value = a.get("since")
        return float(value) if isinstance(value, int | float) else 0.0

    rows = [dict(a) for a in alerts]
    rows.sort(key=lambda a: (ALERT_ORDER.get(str(a.get("state")), 3), -since(a)))
    return rows
