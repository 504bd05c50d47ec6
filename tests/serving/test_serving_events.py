"""Events posted to the server reach the stream processor and, windowed, the online store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from serving_support import RunningServer, build_test_repository

PROJECT = """[server]
poll_interval = 0

[streams]
broker = "embedded:streams/log.db"
online = "sqlite:///streams/online.db"
checkpoint_dir = "streams/checkpoints"

[[streams.features]]
name = "fares_1m"
source = "trips"
entity_key = "driver_id"
size = "1m"
aggregations = ["count", "sum(fare)"]
"""


def test_posted_events_are_windowed_into_the_online_store(tmp_path: Path):
    repository = build_test_repository(tmp_path / "models")
    config = tmp_path / "mlscale.toml"
    config.write_text(PROJECT)
    server = RunningServer(repository, workers=2, config=config)
    try:
        events = [{"driver_id": 7, "ts": 1_700_000_000 + i, "fare": 10.0 + i} for i in range(5)]
        events += [{"driver_id": 8, "ts": 1_700_000_001, "fare": 3.0}]
        response = httpx.post(server.url + "/v1/events/trips", json=events)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 6
        bad = httpx.post(server.url + "/v1/events/trips", json=[{"driver_id": 7, "ts": 1}, "not an event"])
        assert bad.status_code == 400
        assert httpx.post(server.url + "/v1/events/bad topic!", json=events).status_code in (400, 404)
    finally:
        server.stop()
    run = subprocess.run(
        [sys.executable, "-m", "mlscale", "stream", "run", "--config", str(config), "--quiet", "--idle-exit", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    from mlscale.config import load_settings
    from mlscale.storage import open_store
    from mlscale.streams import online_values

    settings = load_settings(config)
    store = open_store(settings.streams.online, root=settings.root)
    feature = settings.streams.features[0]
    seven, eight = online_values(store, feature, [7, 8], at=1_700_000_010)
    assert seven["count"] == 5
    assert seven["sum_fare"] == sum(10.0 + i for i in range(5))
    assert eight["count"] == 1
