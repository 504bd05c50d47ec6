"""The dashboard fed by the real monitoring parts, wired as the server does it: drift results and
alerts from the state file ``mlscale monitor run`` writes, read back with ``load_latest``."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from mlscale.monitoring.alerts import AlertManager, AlertRule
from mlscale.monitoring.dashboard import DashboardSources, create_dashboard_app
from mlscale.monitoring.drift import DriftDetector
from mlscale.monitoring.monitors import drift_samples, load_latest, write_state


def summary(app) -> dict:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            response = await client.get("/api/summary")
            assert response.status_code == 200
            return response.json()

    return asyncio.run(go())


def test_drift_and_alerts_from_the_monitor_state_file(tmp_path):
    state_file = tmp_path / "monitoring" / "latest.json"
    app = create_dashboard_app(
        DashboardSources(drift=lambda: load_latest(state_file), alerts=lambda: load_latest(state_file).get("alerts"))
    )
    before = summary(app)
    assert before["drift"]["data"] == {"monitors": []}  # the monitor has not run yet
    assert before["alerts"]["status"] == "not configured"

    rng = np.random.default_rng(1)
    reference = {"amount": rng.normal(100, 15, 4000), "channel": rng.choice(["web", "app", "pos"], 4000)}
    current = {"amount": rng.normal(130, 15, 600), "channel": rng.choice(["web", "app", "pos"], 600)}
    result = DriftDetector(categorical=["channel"]).fit(reference).score(current)
    alerts = AlertManager([AlertRule("drift", "dataset_drift_share", ">=", 0.5, summary="inputs drifted")])
    alerts.evaluate(drift_samples("payments", result), now=1000.0)
    write_state(
        state_file,
        {
            "time": 1000.0,
            "monitors": {"payments": {"model": "fraud", "time": 1000.0, **result.to_dict()}},
            "alerts": alerts.snapshot(),
        },
    )

    after = summary(app)
    (monitor,) = after["drift"]["data"]["monitors"]
    features = {f["feature"]: f for f in monitor["features"]}
    assert monitor["name"] == "payments" and monitor["model"] == "fraud" and monitor["rows"] == 600
    assert features["amount"]["drifted"] and not features["channel"]["drifted"]
    assert monitor["drift_share"] == pytest.approx(0.5) and monitor["threshold"] == 0.5
    amount = features["amount"]["histogram"]
    assert amount["kind"] == "numeric" and len(amount["x"]) == len(amount["reference"])
    assert sum(amount["reference"]) == pytest.approx(1.0) and sum(amount["current"]) == pytest.approx(1.0)
    # The current window sits higher: more of its mass lies right of the reference's median bar.
    middle = len(amount["x"]) // 2
    assert sum(amount["current"][middle:]) > sum(amount["reference"][middle:])
    channel = features["channel"]["histogram"]
    assert channel["kind"] == "categorical" and sorted(channel["x"]) == ["app", "pos", "web"]
    (alert,) = after["alerts"]["data"]
    assert alert["rule"] == "drift" and alert["state"] == "firing"
    assert alert["message"] == "dataset_drift_share >= 0.5 (monitor=payments)"
