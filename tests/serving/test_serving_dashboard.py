"""The dashboard served by the model server shows this server's own models and traffic."""

from __future__ import annotations

import httpx


def test_root_redirects_to_the_dashboard_page(server):
    response = httpx.get(server.url + "/")
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard/"
    page = httpx.get(server.url + "/dashboard/")
    assert page.status_code == 200
    assert "plotly" in page.text


def test_summary_reports_the_servers_models_and_requests(server):
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    for _ in range(5):
        assert httpx.post(server.url + "/v2/models/iris/versions/2/infer", json=body).status_code == 200
    summary = httpx.get(server.url + "/dashboard/api/summary").json()
    models = {m["name"]: m for m in summary["models"]["data"]}
    assert {"iris", "iris-onnx", "echo"} <= set(models)
    iris_versions = {v["version"]: v for v in models["iris"]["versions"]}
    assert iris_versions["1"]["traffic"] == 0.9
    assert iris_versions["2"]["traffic"] == 0.1
    assert models["iris"]["aliases"] == {"production": "1", "canary": "2"}
    assert summary["drift"]["status"] == "not configured"
