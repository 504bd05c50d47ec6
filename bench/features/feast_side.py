"""The Feast half of bench/features/run.py, run by the Feast venv's Python (never imports mlscale).

argv: data folder, JSON options. Prints one JSON line of timings; writes the training set to
<data>/feast_training.parquet.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Float32

data = Path(sys.argv[1])
opts = json.loads(sys.argv[2])
repo = data / "feast_repo"
repo.mkdir(exist_ok=True)
(repo / "feature_store.yaml").write_text(
    "project: bench\nregistry: registry.db\nprovider: local\n"
    "online_store:\n  type: sqlite\n  path: online.db\n"
    "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
)
for old in ("registry.db", "online.db"):
    (repo / old).unlink(missing_ok=True)

driver = Entity(name="driver", join_keys=["driver_id"])
view = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(seconds=opts["ttl_seconds"]),
    schema=[Field(name=f"f{j}", dtype=Float32) for j in range(opts["n_features"])],
    source=FileSource(path=str(data / "driver_stats.parquet"), timestamp_field="event_timestamp"),
)
store = FeatureStore(repo_path=str(repo))
store.apply([driver, view])
refs = [f"driver_stats:f{j}" for j in range(opts["n_features"])]
out: dict = {}

start = time.perf_counter()
store.materialize(
    start_date=pd.Timestamp(opts["start"]).to_pydatetime(), end_date=pd.Timestamp(opts["end"]).to_pydatetime()
)
out["materialize_s"] = time.perf_counter() - start

rng = np.random.default_rng(1)
for batch in (1, 100):
    times = []
    for step in range(opts["warm_reads"] + opts["reads"]):
        ids = rng.integers(0, opts["n_entities"], batch).tolist()
        t = time.perf_counter()
        store.get_online_features(features=refs, entity_rows=[{"driver_id": i} for i in ids]).to_dict()
        if step >= opts["warm_reads"]:
            times.append(time.perf_counter() - t)
    out[f"online_{batch}"] = times

entity_df = pd.read_parquet(data / "entity_frame.parquet")
start = time.perf_counter()
training = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
out["training_s"] = time.perf_counter() - start
training.sort_values("row_id").to_parquet(data / "feast_training.parquet")
print(json.dumps(out))
