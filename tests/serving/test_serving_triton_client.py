"""Conformance with a real Open Inference Protocol client: tritonclient.http, JSON and binary."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from serving_support import DATATYPES
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

IRIS = load_iris().data[:7]


@pytest.fixture()
def client(server):
    with triton.InferenceServerClient(url=server.url.removeprefix("http://")) as c:
        yield c


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mlscale"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_reports_real_inputs_and_outputs(client):
    meta = client.get_model_metadata("iris-onnx")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert client.get_model_metadata("iris")["versions"] == ["1", "2"]
    assert client.is_model_ready("iris", "2")
    assert client.is_model_ready("iris", "production")


@pytest.mark.parametrize("binary", [False, True])
def test_iris_classification_matches_local_model(client, model_repository, binary):
    import joblib

    local = joblib.load(model_repository / "iris" / "1" / "model.joblib")
    tensor = triton.InferInput("input", list(IRIS.shape), "FP64")
    tensor.set_data_from_numpy(IRIS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("iris", [tensor], model_version="1", outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("label"), local.predict(IRIS))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), local.predict_proba(IRIS))
    assert result.get_response()["model_version"] == "1"


def _value(datatype: str, rows: int) -> np.ndarray:
    rng = np.random.default_rng(len(datatype))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(rows, 3)).astype(bool)
    if datatype == "BYTES":
        return np.array([[f"r{r}c{c}-é".encode() for c in range(3)] for r in range(rows)], dtype=object)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return rng.normal(size=(rows, 3)).astype(dtype)
    return rng.integers(0, 100, size=(rows, 3)).astype(datatype.lower())


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips(client, binary):
    inputs, expected = [], {}
    for datatype in DATATYPES:
        value = _value(datatype, rows=2)
        tensor = triton.InferInput(f"in_{datatype}", [2, 3], datatype)
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
        expected[f"out_{datatype}"] = value
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in expected]
    result = client.infer("echo", inputs, outputs=outputs)
    for name, value in expected.items():
        got = result.as_numpy(name)
        assert got.shape == value.shape, name
        if value.dtype == object:
            assert [v.encode() if isinstance(v, str) else bytes(v) for v in got.ravel()] == list(value.ravel()), name
        else:
            assert got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value, err_msg=name)


def test_binary_output_for_all_outputs_when_none_requested(client):
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(IRIS[:1].astype(np.float32), binary_data=True)
    result = client.infer("iris-onnx", [tensor])
    assert result.as_numpy("probabilities").shape == (1, 3)
    assert result.as_numpy("label").dtype == np.int64


def test_unknown_model_is_an_error_the_client_reports(client):
    tensor = triton.InferInput("input", [1, 4], "FP64")
    tensor.set_data_from_numpy(IRIS[:1])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("no-such-model", [tensor])
    assert client.is_server_live()
