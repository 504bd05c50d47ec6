"""Repository changes, limits and shutdown against real `mlscale serve` processes."""

from __future__ import annotations

import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving_support import RunningServer, build_test_repository, demo_models

from mlscale.serving.model_config import ModelConfig
from mlscale.serving.repository import ModelEntry

IRIS_ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _wait_for(condition, timeout: float = 20.0, message: str = "condition") -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


def test_traffic_split_follows_the_weights():
    entry = ModelEntry("m", versions={"1": "v1", "2": "v2"})  # type: ignore[dict-item]
    entry.refresh(ModelConfig(aliases={"production": "1", "canary": "2"}, traffic={"production": 90, "canary": 10}))
    random.seed(7)
    picks = [entry.resolve(None) for _ in range(5000)]
    share = picks.count("v2") / len(picks)
    assert 0.08 < share < 0.12
    assert entry.resolve("canary") == "v2"
    assert entry.resolve("1") == "v1"


def test_latest_version_serves_unversioned_calls_without_traffic():
    entry = ModelEntry("m", versions={"2": "v2", "10": "v10", "9": "v9"})  # type: ignore[dict-item]
    entry.refresh(ModelConfig())
    assert entry.resolve(None) == "v10"


@pytest.fixture()
def lively_server(tmp_path: Path):
    repository = build_test_repository(tmp_path / "models")
    config = tmp_path / "mlscale.toml"
    config.write_text("[server]\npoll_interval = 0.2\n")
    running = RunningServer(repository, workers=2, config=config)
    yield running, repository
    running.stop()


def test_load_unload_and_new_versions_under_traffic(lively_server):
    server, repository = lively_server
    failures: list[str] = []
    served_versions: set[str] = set()
    stop = threading.Event()

    def traffic():
        with httpx.Client(base_url=server.url) as client:
            while not stop.is_set():
                response = client.post("/v2/models/iris/versions/2/infer", json=IRIS_ROW)
                unversioned = client.post("/v2/models/iris/infer", json=IRIS_ROW)
                for r in (response, unversioned):
                    if r.status_code != 200:
                        failures.append(r.text)
                served_versions.add(unversioned.json().get("model_version", "?"))

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(traffic)
        try:
            # Unload through the API: every worker agrees at once.
            assert httpx.post(server.url + "/v2/repository/models/iris-onnx/unload").status_code == 200
            for _ in range(10):
                response = httpx.get(server.url + "/v2/models/iris-onnx/ready")
                assert response.status_code == 400
                assert "unloaded" in response.json()["error"]
            index = httpx.get(server.url + "/v2/repository/index").json()
            assert {"name": "iris-onnx", "state": "UNLOADED", "reason": "unloaded"} in index
            # The unload holds across rescans of the folder.
            time.sleep(0.5)
            assert httpx.get(server.url + "/v2/models/iris-onnx/ready").status_code == 400
            assert httpx.post(server.url + "/v2/repository/models/iris-onnx/load").status_code == 200
            for _ in range(10):
                assert httpx.get(server.url + "/v2/models/iris-onnx/ready").status_code == 200
            # A new version written to disk is picked up by every worker.
            staging = repository / ".staging"
            demo_models.train_iris(staging, versions=("3",), trees=3)
            shutil.move(staging / "iris" / "3", repository / "iris" / "3")
            _wait_for(
                lambda: all(
                    httpx.get(server.url + "/v2/models/iris").json()["versions"] == ["1", "2", "3"] for _ in range(6)
                ),
                message="version 3 on every worker",
            )
            shutil.rmtree(repository / "iris" / "3")
            _wait_for(
                lambda: all(
                    httpx.get(server.url + "/v2/models/iris").json()["versions"] == ["1", "2"] for _ in range(6)
                ),
                message="version 3 gone from every worker",
            )
        finally:
            stop.set()
    assert failures == []
    assert {"1", "2"} <= served_versions


def test_unknown_model_cannot_be_loaded(server):
    response = httpx.post(server.url + "/v2/repository/models/nope/load")
    assert response.status_code == 404
    assert "no model 'nope'" in response.json()["error"]


def test_broken_version_is_reported_and_others_keep_serving(tmp_path: Path):
    repository = build_test_repository(tmp_path / "models")
    broken = repository / "iris" / "7"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"not a model")
    running = RunningServer(repository, workers=1)
    try:
        index = httpx.get(running.url + "/v2/repository/index").json()
        row = next(r for r in index if r["name"] == "iris" and r.get("version") == "7")
        assert row["state"] == "UNAVAILABLE"
        assert "cannot load" in row["reason"]
        response = httpx.post(running.url + "/v2/models/iris/versions/7/infer", json=IRIS_ROW)
        assert response.status_code == 400
        assert "failed to load" in response.json()["error"]
        assert httpx.post(running.url + "/v2/models/iris/versions/2/infer", json=IRIS_ROW).status_code == 200
    finally:
        running.stop()


def _slow(ms: float) -> dict:
    return {"inputs": [{"name": "ms", "shape": [1], "datatype": "FP32", "data": [ms]}]}


def test_full_queue_answers_503_with_retry_after(server):
    def call(_):
        return httpx.post(server.url + "/v2/models/slow/infer", json=_slow(300), timeout=30)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1
    assert statuses.count(200) >= 2
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert "queue is full" in error or "overloaded" in error


def test_deadline_from_header_or_parameter_answers_504(server):
    response = httpx.post(
        server.url + "/v2/models/slow/infer", json=_slow(400), headers={"X-Request-Timeout": "0.05"}, timeout=30
    )
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]
    body = {**_slow(400), "parameters": {"timeout": 50_000}}
    assert httpx.post(server.url + "/v2/models/slow/infer", json=body, timeout=30).status_code == 504
    bad = httpx.post(server.url + "/v2/models/slow/infer", json=_slow(1), headers={"X-Request-Timeout": "soon"})
    assert bad.status_code == 400


def test_body_over_the_limit_answers_413(tmp_path: Path, model_repository: Path):
    config = tmp_path / "mlscale.toml"
    config.write_text("[server]\nmax_body_bytes = 1000\n")
    running = RunningServer(model_repository, workers=1, config=config)
    try:
        big = {"inputs": [{"name": "input", "shape": [100, 4], "datatype": "FP64", "data": [1.0] * 400}]}
        response = httpx.post(running.url + "/v2/models/iris/infer", json=big)
        assert response.status_code == 413
        assert "exceeds the limit" in response.json()["error"]
        assert httpx.post(running.url + "/v2/models/iris/infer", json=IRIS_ROW).status_code == 200
    finally:
        running.stop()


def test_sigterm_drains_requests_in_flight(tmp_path: Path):
    repository = build_test_repository(tmp_path / "models")
    running = RunningServer(repository, workers=1)
    marker = repository / "slow" / "started"
    result: dict = {}

    def call():
        result["response"] = httpx.post(running.url + "/v2/models/slow/infer", json=_slow(800), timeout=30)

    thread = threading.Thread(target=call)
    thread.start()
    _wait_for(marker.exists, message="the slow request to start")
    started = time.monotonic()
    # uvicorn re-raises SIGTERM after draining, so the exit status is the signal's.
    assert running.stop() in (0, -15)
    thread.join()
    assert result["response"].status_code == 200
    assert result["response"].json()["outputs"][0]["data"] == [800.0]
    assert time.monotonic() - started < 10


def _requests_total(server, model: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("mlscale_requests_total{") and f'model="{model}"' in line and "success" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_summed_over_workers(server):
    before = _requests_total(server, "iris-onnx")
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    for _ in range(40):  # a new connection each time, so both workers answer some
        assert httpx.post(server.url + "/v2/models/iris-onnx/infer", json=body).status_code == 200
    totals = {_requests_total(server, "iris-onnx") - before for _ in range(8)}
    assert totals == {40.0}
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "mlscale_request_duration_seconds_bucket",
        "mlscale_batch_size_bucket",
        "mlscale_queue_wait_seconds_bucket",
        "mlscale_model_load_seconds_count",
        "mlscale_inflight_requests",
    ):
        assert name in text, name
