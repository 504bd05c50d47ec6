"""Online features served by the model server: /v1/features and models fed by entity ids alone."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from serving_support import RunningServer, write_python_model

WEIGHTED_SUM = '''
import numpy as np

class Model:
    """Scores a driver: 2 * conv_rate + acc_rate (so the test can recompute it)."""
    def predict(self, inputs):
        x = inputs["input"]
        return {"score": x[:, 0] * 2.0 + x[:, 1]}
'''

MODEL_TOML = """execution = "inline"
[features]
service = "driver_model"
entity_key = "driver_id"
{defaults}
[[inputs]]
name = "input"
datatype = "FP64"
shape = [-1, 2]
[[outputs]]
name = "score"
datatype = "FP64"
shape = [-1]
"""

PROJECT = """[server]
poll_interval = 0
model_repository = "models"

[features]
registry = "features/registry.db"
online_store = ["sqlite:///features/online-0.db", "sqlite:///features/online-1.db"]

[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "driver_rates"
entities = ["driver"]
source = "data/drivers.parquet"
ttl = "3650d"
features = { conv_rate = "float32", acc_rate = "float32" }

[[features.services]]
name = "driver_model"
features = ["driver_rates:conv_rate", "driver_rates:acc_rate"]
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "mlscale", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def feature_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    frame = pd.DataFrame(
        {
            "driver_id": np.repeat(np.arange(1, 6), 3).astype("int64"),
            "event_timestamp": [now - timedelta(days=d) for _ in range(5) for d in (3, 2, 1)],
            "conv_rate": rng.random(15).astype("float32"),
            "acc_rate": rng.random(15).astype("float32"),
        }
    )
    (root / "data").mkdir()
    frame.to_parquet(root / "data" / "drivers.parquet")
    (root / "mlscale.toml").write_text(PROJECT)
    write_python_model(root / "models", "driver-score", WEIGHTED_SUM, MODEL_TOML.format(defaults=""))
    write_python_model(
        root / "models", "driver-score-defaults", WEIGHTED_SUM, MODEL_TOML.format(defaults="defaults = 0.5")
    )
    _cli("features", "apply", "--config", "mlscale.toml", cwd=root)
    _cli("features", "materialize", "--config", "mlscale.toml", cwd=root)
    latest = frame.sort_values("event_timestamp").groupby("driver_id").last()
    server = RunningServer(root / "models", workers=2, config=root / "mlscale.toml")
    yield server, latest
    server.stop()


def test_feature_endpoint_returns_the_latest_values(feature_project):
    server, latest = feature_project
    response = httpx.post(
        server.url + "/v1/features", json={"feature_service": "driver_model", "entities": {"driver_id": [2, 4, 99]}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    conv = next(r for r, n in zip(body["results"], body["metadata"]["feature_names"], strict=True) if n == "conv_rate")
    assert conv["values"][:2] == pytest.approx([latest.loc[2, "conv_rate"], latest.loc[4, "conv_rate"]])
    assert conv["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]


def test_feature_endpoint_rejects_bad_bodies(feature_project):
    server, _ = feature_project
    bad = httpx.post(server.url + "/v1/features", json={"feature_service": "nope", "entities": {"driver_id": [1]}})
    assert bad.status_code == 404
    assert "nope" in bad.json()["error"]
    malformed = httpx.post(server.url + "/v1/features", content=b"{oops")
    assert malformed.status_code == 400


def test_model_fed_by_entity_ids_gets_the_online_features(feature_project):
    server, latest = feature_project
    body = {"inputs": [{"name": "driver_id", "shape": [3], "datatype": "INT64", "data": [1, 3, 5]}]}
    response = httpx.post(server.url + "/v2/models/driver-score/infer", json=body)
    assert response.status_code == 200, response.text
    expected = [2.0 * float(latest.loc[i, "conv_rate"]) + float(latest.loc[i, "acc_rate"]) for i in (1, 3, 5)]
    assert response.json()["outputs"][0]["data"] == pytest.approx(expected, rel=1e-6)
    meta = httpx.get(server.url + "/v2/models/driver-score").json()
    assert meta["inputs"][0]["name"] == "driver_id"


def test_missing_entity_is_an_error_or_the_declared_default(feature_project):
    server, _ = feature_project
    body = {"inputs": [{"name": "driver_id", "shape": [2], "datatype": "INT64", "data": [1, 42]}]}
    response = httpx.post(server.url + "/v2/models/driver-score/infer", json=body)
    assert response.status_code == 400
    assert "driver_id=[42]" in response.json()["error"]
    with_defaults = httpx.post(server.url + "/v2/models/driver-score-defaults/infer", json=body)
    assert with_defaults.status_code == 200
    assert with_defaults.json()["outputs"][0]["data"][1] == pytest.approx(1.5)
    no_ids = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    missing = httpx.post(server.url + "/v2/models/driver-score/infer", json=no_ids)
    assert missing.status_code == 400
    assert "needs input 'driver_id'" in missing.json()["error"]


def test_model_fed_by_entity_ids_over_grpc(feature_project):
    """gRPC goes through the same feature join as REST: entity ids in, the model's score out."""
    import tritonclient.grpc as triton

    server, latest = feature_project
    ids = triton.InferInput("driver_id", [3], "INT64")
    ids.set_data_from_numpy(np.array([5, 2, 1], dtype=np.int64))
    with triton.InferenceServerClient(server.grpc_url) as client:
        scores = client.infer("driver-score", [ids]).as_numpy("score")
        missing = triton.InferInput("driver_id", [1], "INT64")
        missing.set_data_from_numpy(np.array([42], dtype=np.int64))
        with pytest.raises(triton.InferenceServerException) as caught:
            client.infer("driver-score", [missing])
    expected = [2.0 * float(latest.loc[i, "conv_rate"]) + float(latest.loc[i, "acc_rate"]) for i in (5, 2, 1)]
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "driver_id=[42]" in caught.value.message()
