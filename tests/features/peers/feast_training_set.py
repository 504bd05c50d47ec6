"""Feast's training set for tests/features/test_feature_feast_parity.py, run by the Feast venv's Python.

argv: a folder holding ``spec.json`` (views: name, source, ttl_seconds, features {name: type},
created: the created timestamp column or null) and
``entities.parquet``; writes ``feast_training.parquet`` there. Never imports mlscale.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Bool, Float32, Float64, Int32, Int64, String

TYPES = {"float32": Float32, "float64": Float64, "int32": Int32, "int64": Int64, "bool": Bool, "string": String}

folder = Path(sys.argv[1])
spec = json.loads((folder / "spec.json").read_text())
repo = folder / "feast_repo"
repo.mkdir(exist_ok=True)
(repo / "feature_store.yaml").write_text(
    "project: parity\nregistry: registry.db\nprovider: local\n"
    "online_store:\n  type: sqlite\n  path: online.db\n"
    "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
)
driver = Entity(name="driver", join_keys=["driver_id"])
views = [
    FeatureView(
        name=view["name"],
        entities=[driver],
        ttl=timedelta(seconds=view["ttl_seconds"]),
        schema=[Field(name=name, dtype=TYPES[kind]) for name, kind in view["features"].items()],
        source=FileSource(
            path=view["source"],
            timestamp_field="event_timestamp",
            created_timestamp_column=view.get("created") or "",
        ),
    )
    for view in spec["views"]
]
store = FeatureStore(repo_path=str(repo))
store.apply([driver, *views])
refs = [f"{view['name']}:{name}" for view in spec["views"] for name in view["features"]]
entity_df = pd.read_parquet(folder / "entities.parquet")
training = store.get_historical_features(entity_df=entity_df, features=refs, full_feature_names=True).to_df()
training.sort_values("row_id").reset_index(drop=True).to_parquet(folder / "feast_training.parquet")
