"""Feature-store fixtures: small generated driver data and the definitions over it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlscale.features.definitions import Entity, FeatureRepo, FeatureService, FeatureView

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def driver_frame(n_rows: int = 400, n_drivers: int = 20, seed: int = 0) -> pd.DataFrame:
    """Driver stats with distinct timestamps per driver over ten days."""
    rng = np.random.default_rng(seed)
    minutes = rng.choice(10 * 24 * 60, size=n_rows, replace=False)
    return pd.DataFrame(
        {
            "driver_id": rng.integers(0, n_drivers, n_rows).astype("int64"),
            "event_timestamp": pd.to_datetime(T0) + pd.to_timedelta(minutes, unit="min"),
            "conv_rate": rng.random(n_rows).astype("float32"),
            "acc_rate": rng.random(n_rows).astype("float32"),
            "trips": rng.integers(0, 100, n_rows).astype("int64"),
        }
    )


def driver_repo(source: Path | str, ttl: timedelta | str = "2d") -> FeatureRepo:
    driver = Entity(name="driver", join_key="driver_id")
    stats = FeatureView(
        name="driver_stats",
        entities=[driver],
        source=str(source),
        ttl=ttl,
        features={"conv_rate": "float32", "acc_rate": "float32", "trips": "int64"},
    )
    rates = FeatureView(
        name="driver_rates",
        entities=[driver],
        source=str(source),
        ttl=ttl,
        features={"conv_rate": "float32", "acc_rate": "float32"},
    )
    model = FeatureService(name="driver_model", features=["driver_rates:conv_rate", "driver_rates:acc_rate"])
    return FeatureRepo([driver], [stats, rates], [model])


@pytest.fixture
def driver_data(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = driver_frame()
    path = tmp_path / "driver_stats.parquet"
    frame.to_parquet(path)
    return path, frame


@pytest.fixture
def repo(driver_data: tuple[Path, pd.DataFrame]) -> FeatureRepo:
    return driver_repo(driver_data[0])


@pytest.fixture
def make_frame():
    """The driver data generator, for tests that need their own data."""
    return driver_frame


@pytest.fixture
def make_repo():
    """Definitions over a given source path."""
    return driver_repo


@pytest.fixture
def t0() -> datetime:
    return T0


# --- offline engines ----------------------------------------------------------------------------
# Session options that keep Spark small on a shared two-core machine: two local threads, two
# shuffle partitions (the default 200 would make 200 tiny tasks per join), no web UI.
@pytest.fixture(params=["duckdb", "spark"])
def offline_engine(request):
    """Builds the offline engine under test from (repo, root): DuckDB, then Spark."""
    from mlscale.features.offline import OfflineStore

    if request.param == "duckdb":
        return lambda repo, root=".": OfflineStore(repo, root)
    from mlscale.features.spark import SparkOfflineStore

    session = request.getfixturevalue("spark")
    return lambda repo, root=".": SparkOfflineStore(repo, root, session=session)


def pytest_collection_modifyitems(items):
    """Spark tests get a longer timeout: the first one also starts the JVM (tens of seconds on a
    busy two-core machine), and every Spark job pays task scheduling."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "spark" in getattr(item, "fixturenames", ()) or params.get("offline_engine") == "spark":
            item.add_marker(pytest.mark.timeout(360))
