"""Every optional runtime through a real server: metadata from the model files, answers equal to
the library's own, and concurrent requests batched together answering exactly as alone.

One worker: each worker imports torch, sentence-transformers and MLflow, which takes a minute of
CPU on a busy machine; batching and the runtimes behave the same with more workers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from runtime_models import Oracles, build_runtime_repository, rng_rows
from serving_support import RunningServer

from mlscale.serving.datatypes import V2_TO_NUMPY

# Building the models and starting a server that imports every runtime's library is slow on a
# loaded machine; the fixtures count against the first test's timeout.
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Oracles]:
    root = tmp_path_factory.mktemp("runtime-models")
    return root, build_runtime_repository(root, tmp_path_factory.mktemp("runtime-scratch"))


@pytest.fixture(scope="module")
def runtime_server(built) -> Iterator[RunningServer]:
    running = RunningServer(built[0], workers=1, ready_timeout=240)
    yield running
    running.stop()


Tensor = tuple[str, str, np.ndarray]


def infer(url: str, model: str, tensors: list[Tensor]) -> dict[str, np.ndarray]:
    """One JSON request; outputs decoded with their datatype and shape."""
    body = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()],
            }
            for name, datatype, array in tensors
        ]
    }
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = {}
    for output in response.json()["outputs"]:
        dtype = V2_TO_NUMPY[output["datatype"]]
        result[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
    return result


def batch_calls(url: str, model: str) -> tuple[float, float]:
    """(model calls, rows) so far for a model, summed over the workers."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for kind in ("count", "sum"):
        pattern = rf'^mlscale_batch_size_{kind}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
        found = re.findall(pattern, text, re.M)
        values[kind] = sum(float(v) for v in found)
    return values["count"], values["sum"]


def batched_equals_alone(url: str, model: str, requests: list[list[Tensor]], rtol: float = 0.0) -> list[dict]:
    """Send the requests concurrently, then each alone; the answers must agree, and the concurrent
    ones must have shared model calls (fewer calls than requests)."""
    calls_before, _ = batch_calls(url, model)
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        together = list(pool.map(lambda tensors: infer(url, model, tensors), requests))
    calls_after, _ = batch_calls(url, model)
    assert calls_after - calls_before < len(requests), "concurrent requests were never batched"
    for tensors, batched in zip(requests, together, strict=True):
        alone = infer(url, model, tensors)
        assert batched.keys() == alone.keys()
        for name in alone:
            if alone[name].dtype.kind in "fc":
                np.testing.assert_allclose(batched[name], alone[name], rtol=rtol, atol=rtol)
            else:
                np.testing.assert_array_equal(batched[name], alone[name])
    return together


def metadata(url: str, model: str) -> dict:
    response = httpx.get(f"{url}/v2/models/{model}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_torchscript_model_batches_and_matches_torch(runtime_server, built):
    import torch

    mlp = built[1].models["torch-script"]
    requests = [[("x", "FP32", rng_rows(1 + i % 3, 4, i).astype(np.float32))] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "torch-script", requests, rtol=1e-6)
    for tensors, answer in zip(requests, answers, strict=True):
        with torch.inference_mode():
            expected = mlp(torch.from_numpy(tensors[0][2])).numpy()
        np.testing.assert_allclose(answer["logits"], expected, rtol=1e-5, atol=1e-6)
    assert metadata(runtime_server.url, "torch-script")["platform"] == "pytorch_libtorch"


def test_torch_export_program_reports_its_signature_and_matches_torch(runtime_server, built):
    import torch

    meta = metadata(runtime_server.url, "torch-export")
    assert meta["platform"] == "pytorch_export"
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
    ]
    assert meta["outputs"] == [
        {"name": "output_0", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "output_1", "datatype": "INT64", "shape": [-1]},
    ]
    requests = [
        [
            ("x", "FP32", rng_rows(2, 4, 100 + i).astype(np.float32)),
            ("scale", "FP32", np.full((2, 1), 1.0 + i, dtype=np.float32)),
        ]
        for i in range(12)
    ]
    answers = batched_equals_alone(runtime_server.url, "torch-export", requests, rtol=1e-6)
    heads = built[1].models["torch-export"]
    for tensors, answer in zip(requests, answers, strict=True):
        with torch.inference_mode():
            scores, labels = heads(torch.from_numpy(tensors[0][2]), torch.from_numpy(tensors[1][2]))
        np.testing.assert_allclose(answer["output_0"], scores.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(answer["output_1"], labels.numpy())


def test_xgboost_classifier_answers_labels_and_probabilities_as_xgboost(runtime_server, built):
    classifier = built[1].models["xgb-iris"]
    meta = metadata(runtime_server.url, "xgb-iris")
    assert meta["platform"] == "xgboost"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    x = np.asarray(load_iris_features(), dtype=np.float32)
    requests = [[("input", "FP32", x[i * 9 : i * 9 + 1 + i % 4])] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "xgb-iris", requests)
    for tensors, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["label"], classifier.predict(tensors[0][2]))
        np.testing.assert_allclose(answer["probabilities"], classifier.predict_proba(tensors[0][2]), rtol=1e-6)


def test_xgboost_regressor_from_ubj_answers_predictions(runtime_server, built):
    regressor = built[1].models["xgb-diabetes"]
    x = rng_rows(40, 10, 7, scale=0.05).astype(np.float32)
    requests = [[("input", "FP32", x[i * 2 : i * 2 + 2])] for i in range(20)]
    answers = batched_equals_alone(runtime_server.url, "xgb-diabetes", requests)
    got = np.concatenate([a["prediction"] for a in answers])
    np.testing.assert_allclose(got, regressor.predict(x), rtol=1e-6)


def test_lightgbm_binary_and_multiclass_with_declared_class_labels(runtime_server, built):
    binary = built[1].models["lgb-cancer"]
    x = rng_rows(32, 30, 3) * 10 + 50
    requests = [[("input", "FP64", x[i * 2 : i * 2 + 2])] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "lgb-cancer", requests)
    positive = np.concatenate([a["probabilities"][:, 1] for a in answers])
    np.testing.assert_allclose(positive, binary.predict(x), rtol=1e-12)
    labels = np.concatenate([a["label"] for a in answers])
    np.testing.assert_array_equal(labels, (binary.predict(x) > 0.5).astype(np.int64))

    multi = built[1].models["lgb-iris"]
    features = np.asarray(load_iris_features())
    requests = [[("input", "FP64", features[i * 10 : i * 10 + 3])] for i in range(15)]
    answers = batched_equals_alone(runtime_server.url, "lgb-iris", requests)
    names = np.array(["setosa", "versicolor", "virginica"])
    for tensors, answer in zip(requests, answers, strict=True):
        expected = multi.predict(tensors[0][2])
        np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-12)
        assert answer["label"].tolist() == names[expected.argmax(axis=1)].tolist()
    meta = metadata(runtime_server.url, "lgb-iris")
    assert meta["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1]}


def test_mlflow_pyfunc_signature_becomes_metadata_and_answers_as_mlflow(runtime_server, built):
    meta = metadata(runtime_server.url, "mlflow-sklearn")
    assert meta["platform"] == "mlflow"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "INT64", "shape": [-1]}]
    model = built[1].models["mlflow-sklearn"]
    features = np.asarray(load_iris_features())
    requests = [[("input", "FP64", features[i * 7 : i * 7 + 2])] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "mlflow-sklearn", requests)
    for tensors, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["output"], model.predict(tensors[0][2]))


def test_mlflow_model_without_signature_takes_the_tensors_model_toml_declares(runtime_server, built):
    meta = metadata(runtime_server.url, "mlflow-nosig")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
    features = np.asarray(load_iris_features())
    requests = [[("features", "FP64", features[i * 9 : i * 9 + 3])] for i in range(12)]
    answers = batched_equals_alone(runtime_server.url, "mlflow-nosig", requests)
    model = built[1].models["mlflow-sklearn"]  # the same estimator, saved with a signature
    for tensors, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["species"], model.predict(tensors[0][2]))


def test_mlflow_column_signature_makes_one_input_per_column(runtime_server, built):
    import pandas as pd

    meta = metadata(runtime_server.url, "mlflow-columns")
    assert meta["inputs"] == [
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
        {"name": "amount", "datatype": "FP64", "shape": [-1]},
    ]
    assert meta["outputs"] == [
        {"name": "score", "datatype": "FP64", "shape": [-1]},
        {"name": "city_upper", "datatype": "BYTES", "shape": [-1]},
    ]
    cities = ["Oslo", "São Paulo", "Zürich", "東京", "Lima", "Nairobi"]
    requests = [
        [
            ("city", "BYTES", np.array([cities[i % 6], cities[(i + 1) % 6]], dtype=object)),
            ("amount", "FP64", np.array([i * 1.5, -i / 4])),
        ]
        for i in range(12)
    ]
    answers = batched_equals_alone(runtime_server.url, "mlflow-columns", requests)
    model = built[1].models["mlflow-columns"]
    for tensors, answer in zip(requests, answers, strict=True):
        expected = model.predict(pd.DataFrame({"city": list(tensors[0][2]), "amount": tensors[1][2]}))
        np.testing.assert_array_equal(answer["score"], expected["score"].to_numpy())
        assert answer["city_upper"].tolist() == expected["city_upper"].tolist()


def test_mlflow_native_flavors_run_on_the_booster_runtimes(runtime_server, built):
    meta = metadata(runtime_server.url, "mlflow-xgb")
    assert meta["platform"] == "mlflow (xgboost)"
    # The signature names and types the input; the booster reads FP64 as well.
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    features = np.asarray(load_iris_features())
    classifier = built[1].models["mlflow-xgb"]
    requests = [[("input", "FP64", features[i * 9 : i * 9 + 2])] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "mlflow-xgb", requests)
    for tensors, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer["probabilities"], classifier.predict_proba(tensors[0][2]), rtol=1e-6)

    assert metadata(runtime_server.url, "mlflow-lgb")["platform"] == "mlflow (lightgbm)"
    booster = built[1].models["mlflow-lgb"]
    requests = [[("input", "FP64", features[i * 9 : i * 9 + 2, :3])] for i in range(16)]
    answers = batched_equals_alone(runtime_server.url, "mlflow-lgb", requests)
    for tensors, answer in zip(requests, answers, strict=True):
        np.testing.assert_allclose(answer["prediction"], booster.predict(tensors[0][2]), rtol=1e-12)


PARAPHRASES = [
    ("A man is playing a guitar on stage.", "Someone performs music with a guitar in front of an audience."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
]
UNRELATED = [
    "The central bank raised interest rates by half a point.",
    "Volcanic ash closed the airport for three days.",
    "Add two eggs and whisk until the batter is smooth.",
]


def embed(url: str, texts: list[str]) -> np.ndarray:
    return infer(url, "minilm", [("text", "BYTES", np.array(texts, dtype=object))])["embedding"]


def test_text_model_puts_paraphrases_closer_than_unrelated_sentences(runtime_server):
    meta = metadata(runtime_server.url, "minilm")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    for (first, second), other in zip(PARAPHRASES, UNRELATED, strict=True):
        a, b, c = embed(runtime_server.url, [first, second, other])
        np.testing.assert_allclose([np.linalg.norm(a), np.linalg.norm(b)], 1.0, rtol=1e-5)
        assert float(a @ b) > float(a @ c) + 0.3
        assert float(a @ b) > 0.6


def test_text_embeddings_of_variable_length_texts_batched_equal_alone(runtime_server):
    texts = [
        "ok",
        "A short sentence.",
        "A much longer sentence that goes on and on about the weather, the trains and the price of bread.",
        "Ünïcödé and emoji 🙂 in one line",
        "word " * 300,  # beyond the model's 256 tokens: truncated, not refused
        "",
    ]
    requests = [[("text", "BYTES", np.array([texts[i % 6], texts[(i * 5) % 6]], dtype=object))] for i in range(12)]
    batched_equals_alone(runtime_server.url, "minilm", requests, rtol=1e-5)


def test_text_that_is_not_utf8_is_refused_alone(runtime_server):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    good = httpx.post(f"{runtime_server.url}/v2/models/minilm/infer", json=body, timeout=60)
    assert good.status_code == 200
    header = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":8}}]}'
    payload = header + (4).to_bytes(4, "little") + b"\xff\xfe\xfa\x00"
    bad = httpx.post(
        f"{runtime_server.url}/v2/models/minilm/infer",
        content=payload,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert bad.status_code == 400, bad.text
    assert "UTF-8" in bad.json()["error"]


def load_iris_features() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris().data


def test_demo_semantic_search_ranks_sentences_of_the_query_topic_first(runtime_server):
    import semantic_search  # examples/demo, on the path through serving_support

    results = semantic_search.search(runtime_server.url, list(semantic_search.QUERIES))
    for query, topic in semantic_search.QUERIES.items():
        assert [semantic_search.topic_of(sentence) for _, sentence in results[query]] == [topic] * 3, results[query]
