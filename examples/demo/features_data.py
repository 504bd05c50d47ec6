"""Demo feature data generated locally: trip statistics of 1,000 drivers over the last 30 days,
and a driver-risk model trained on them (served with its features joined from the online store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

DRIVERS = 1000


def write_driver_stats(path: Path, seed: int = 0) -> pd.DataFrame:
    """Hourly-ish snapshots per driver: conversion rate, acceptance rate, average trip minutes."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = DRIVERS * 20
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(1001, 1001 + DRIVERS, rows).astype("int64"),
            "event_timestamp": [now - timedelta(minutes=int(m)) for m in rng.integers(1, 30 * 24 * 60, rows)],
            "conv_rate": rng.beta(2, 5, rows).astype("float32"),
            "acc_rate": rng.beta(5, 2, rows).astype("float32"),
            "avg_trip_minutes": rng.gamma(4, 5, rows).astype("float32"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return frame


CITIES = ("Lisboa", "Porto", "Madrid", "Zürich", "São Paulo", "東京")
VEHICLES = ("sedan", "hatchback", "van", "e-bike")


def write_driver_profiles(path: Path, seed: int = 1) -> pd.DataFrame:
    """A profile per driver with string features (home city, vehicle), updated now and then."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = DRIVERS * 3
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(1001, 1001 + DRIVERS, rows).astype("int64"),
            "event_timestamp": [now - timedelta(minutes=int(m)) for m in rng.integers(1, 30 * 24 * 60, rows)],
            "city": np.asarray(CITIES, dtype=object)[rng.integers(0, len(CITIES), rows)],
            "vehicle": np.asarray(VEHICLES, dtype=object)[rng.integers(0, len(VEHICLES), rows)],
            "seats": rng.integers(1, 8, rows).astype("int32"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return frame


def train_driver_risk(repository: Path, frame: pd.DataFrame) -> None:
    """A classifier of 'risky' drivers on the three features, in the order the service lists them."""
    x = frame[["conv_rate", "acc_rate", "avg_trip_minutes"]].to_numpy(np.float64)
    y = ((x[:, 1] < 0.6) & (x[:, 2] > 20)).astype(int)
    model = LogisticRegression(max_iter=500).fit(x, y)
    folder = repository / "driver-risk" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    (repository / "driver-risk" / "model.toml").write_text(
        "# Requests carry driver ids; the server joins the drivers' online features.\n"
        '[features]\nservice = "driver_risk"\nentity_key = "driver_id"\n'
    )
