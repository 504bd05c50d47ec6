"""Demo traffic: a steady stream of requests (and trip events for the stream processor) so the
dashboard, the payload log, the drift monitor and the windowed features have something to show.
After ``drift_after`` seconds the iris inputs shift (petal lengths grow), so the drift monitor flags
the change and its alert fires."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
from sklearn.datasets import load_iris


def run_traffic(base_url: str, stop: threading.Event, rate: float = 20.0, drift_after: float = 90.0) -> None:
    x, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    started = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while not stop.is_set():
            row = x[rng.integers(len(x))] + rng.normal(0, 0.1, 4)
            if time.monotonic() - started > drift_after:
                row = row + np.array([0.0, 0.0, 2.5, 1.0])
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": row.tolist()}]}
            drivers = rng.integers(1001, 2001, 4).tolist()
            trips = [{"driver_id": d, "ts": time.time(), "fare": round(float(rng.gamma(3, 6)), 2)} for d in drivers]
            try:
                client.post("/v2/models/iris/infer", json=body)
                client.post("/v1/events/trips", json=trips)
                client.post(
                    "/v2/models/driver-risk/infer",
                    json={"inputs": [{"name": "driver_id", "shape": [4], "datatype": "INT64", "data": drivers}]},
                )
                client.post("/v1/features", json={"features": ["driver_profile:*"], "entities": {"driver_id": drivers}})
            except httpx.HTTPError:
                pass  # the server may be starting or stopping
            stop.wait(1.0 / rate)
