"""The server's dashboard: the monitoring part's page fed from this server's own state.

Metrics come from the server's registry (summed over workers), models from the repository, drift
and alerts from the state file ``mlscale monitor run`` writes, cameras from the status file the
video pipeline writes: each part stays in its own process and the page reads what they publish.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlscale.config import Settings
from mlscale.serving import metrics
from mlscale.serving.repository import ModelRepository


def models_panel(repository: ModelRepository) -> list[dict]:
    """Models, versions (with their traffic share), aliases and readiness, as the page shows them."""
    rows = []
    for name, entry in sorted(repository.models.items()):
        weights = [b - a for a, b in zip([0.0, *entry.cumulative], entry.cumulative, strict=False)]
        total = sum(weights) or 1.0
        share = {}
        for target, weight in zip(entry.targets, weights, strict=True):
            version = entry.aliases.get(target, target)
            share[version] = share.get(version, 0.0) + weight / total
        versions = [
            {"version": v, "state": "READY", **({"traffic": share[v]} if v in share else {})}
            for v in sorted(entry.versions, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
        ]
        versions += [{"version": v, "state": "UNAVAILABLE", "reason": r} for v, r in entry.failed.items()]
        rows.append({"name": name, "versions": versions, "aliases": dict(entry.aliases), "ready": bool(entry.versions)})
    return rows


def _json_file(path: Path) -> Callable[[], Any]:
    def read() -> Any:
        from mlscale.monitoring.monitors import load_latest

        return load_latest(path) or None

    return read


def with_dashboard(app, repository: ModelRepository, settings: Settings):
    """``app`` with the dashboard under /dashboard and / redirecting there. Mounted inside the
    app, so the app's edge check (keys, scopes) covers the dashboard's data API too."""
    from mlscale.monitoring.dashboard import DashboardSources, create_dashboard_app

    state = _json_file(settings.resolve(settings.monitoring.state_file))

    def alerts() -> Any:
        latest = state()
        return latest.get("alerts") if latest else None

    cameras = None
    snapshots = None
    if settings.vision.feeds:  # `mlscale vision run` publishes status.json beside its events
        events = settings.resolve(settings.vision.events_dir)
        cameras = _json_file(events / "status.json")
        snapshots = events / "snapshots"
    sources = DashboardSources(
        metrics_text=lambda: metrics.render_metrics()[0].decode(),
        models=lambda: models_panel(repository),
        drift=state if settings.monitoring.monitors else None,
        alerts=alerts if settings.monitoring.alerts else None,
        cameras=cameras,
    )
    app.mounts["/dashboard"] = create_dashboard_app(
        sources, snapshots_dir=snapshots, prefix="/dashboard", auth=settings.auth.enabled
    )
    app.home = "/dashboard/"
    return app
