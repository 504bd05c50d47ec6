"""The live dashboard: one page served by the model server, and the data API behind it.

The server fills a :class:`DashboardSources` with callables (metrics text, models, drift, alerts,
cameras) and mounts :func:`create_dashboard_app` under ``/dashboard``; the page needs no internet
(its chart library is plotly's bundled JavaScript, served by this app).
"""

from mlscale.monitoring.dashboard.app import DashboardApp, create_dashboard_app, mount_dashboard
from mlscale.monitoring.dashboard.sources import DashboardSources
from mlscale.monitoring.dashboard.summary import MetricsHistory

__all__ = ["DashboardApp", "DashboardSources", "MetricsHistory", "create_dashboard_app", "mount_dashboard"]
