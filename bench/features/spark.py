"""Offline engines side by side: the same point-in-time training set on DuckDB and on Spark (local).

Data: N entities x 10 float32 features, R feature rows over 30 days (one entity holds a tenth of
them, and a fifth of the rows are same-time corrections with a created time), and an entity frame
of M rows. Measured per engine: wall time of the training set (Spark: with the session already up,
its start-up time reported apart), and whether the two tables are equal (``Table.equals``).

Run: `.venv/bin/python bench/features/spark.py` (full: 10,000 entities, 1,000,000 rows, 1,000,000-row
entity frame, Spark on local[*]) or `--quick` for a small check; `--master` for another Spark master.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

N_FEATURES = 10
START = datetime(2024, 1, 1, tzinfo=UTC)
TTL = timedelta(days=7)


def generate(folder: Path, n_entities: int, n_rows: int, n_frame: int) -> None:
    rng = np.random.default_rng(0)
    seconds = 30 * 86400
    ids = rng.integers(0, n_entities, n_rows).astype("int64")
    ids[: n_rows // 10] = 0  # a skewed entity
    times = pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, seconds, n_rows), unit="s")
    corrected = rng.random(n_rows) < 0.2
    times = np.where(corrected, np.roll(times, 1), times)  # same time as another row...
    ids = np.where(corrected, np.roll(ids, 1), ids)  # ...of the same entity
    frame = pd.DataFrame(
        {
            "driver_id": ids,
            "event_timestamp": pd.to_datetime(times, utc=True),
            "created": pd.Timestamp(START) + pd.to_timedelta(rng.permutation(n_rows), unit="ms"),
        }
    )
    for j in range(N_FEATURES):
        frame[f"f{j}"] = rng.random(n_rows).astype("float32")
    frame.to_parquet(folder / "driver_stats.parquet", row_group_size=256_000)
    entities = pd.DataFrame(
        {
            "row_id": np.arange(n_frame),
            "driver_id": rng.integers(0, n_entities + n_entities // 100, n_frame).astype("int64"),
            "event_timestamp": pd.Timestamp(START)
            + pd.to_timedelta(rng.integers(0, seconds + 86400, n_frame), unit="s"),
        }
    )
    entities.to_parquet(folder / "entity_frame.parquet")


def repo(folder: Path):
    from mlscale.features import Entity, FeatureRepo, FeatureView

    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="driver_stats",
        entities=[driver],
        source=str(folder / "driver_stats.parquet"),
        created_timestamp_field="created",
        ttl=TTL,
        features={f"f{j}": "float32" for j in range(N_FEATURES)},
    )
    return FeatureRepo([driver], [view])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, no figures")
    parser.add_argument("--master", default=None, help="Spark master (default local[*]; local[2] with --quick)")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    n_entities, n_rows, n_frame = (200, 5_000, 2_000) if args.quick else (10_000, 1_000_000, 1_000_000)
    if args.rows:
        n_rows = n_frame = args.rows
    master = args.master or ("local[2]" if args.quick else "local[*]")

    from mlscale.features.offline import OfflineStore
    from mlscale.features.spark import SparkOfflineStore, spark_session

    with tempfile.TemporaryDirectory(prefix="mlscale-bench-spark-") as tmp:
        folder = Path(tmp)
        generate(folder, n_entities, n_rows, n_frame)
        definitions = repo(folder)
        frame = folder / "entity_frame.parquet"
        result: dict = {"entities": n_entities, "rows": n_rows, "entity_rows": n_frame, "master": master}

        t = time.perf_counter()
        duck = OfflineStore(definitions).get_historical_features(frame, ["driver_stats:*"])
        result["duckdb_s"] = time.perf_counter() - t

        t = time.perf_counter()
        config = {"spark.ui.enabled": "false", "spark.driver.memory": "4g"}
        if args.quick:
            config["spark.sql.shuffle.partitions"] = "2"
        session = spark_session(master, config)
        session.sparkContext.setLogLevel("ERROR")
        result["spark_startup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        spark = SparkOfflineStore(definitions, session=session).get_historical_features(frame, ["driver_stats:*"])
        result["spark_s"] = time.perf_counter() - t
        result["equal"] = spark.equals(duck)
        session.stop()
    print(json.dumps(result, indent=2))
    if not result["equal"]:
        raise SystemExit("the two engines' training sets differ")


if __name__ == "__main__":
    main()
