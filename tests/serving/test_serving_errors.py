"""Bad requests get a clear 4xx with {"error": ...}, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

GOOD = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _infer(server, body, model="iris", version=None, **kwargs) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    if isinstance(body, (bytes, str)):
        return httpx.post(server.url + path, content=body, **kwargs)
    return httpx.post(server.url + path, json=body, **kwargs)


def _input(**changes):
    item = {**GOOD["inputs"][0], **changes}
    return {"inputs": [item]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[]", 400, "invalid inference request"),
        ({"inputs": []}, 400, "no inputs"),
        (_input(datatype="FP128"), 400, "unknown datatype"),
        (_input(datatype="FP32"), 400, "expects FP64"),
        (_input(data=["a", "b", "c", "d"]), 400, "does not match datatype"),
        (_input(shape=[2, 4]), 400, "needs 8 elements"),
        (_input(shape=[4, 1]), 400, "expects [-1, 4]"),
        (_input(name="features"), 400, "lacks"),
        (_input(data=[[1, 2], [3]]), 400, "ragged"),
        ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64"}]}, 400, "neither data"),
        ({**GOOD, "outputs": [{"name": "nope"}]}, 400, "no output"),
    ],
)
def test_bad_request_is_a_400_naming_the_problem(server, body, status, message):
    response = _infer(server, body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert _infer(server, GOOD).status_code == 200


def test_unknown_model_and_version_are_404(server):
    assert _infer(server, GOOD, model="nope").status_code == 404
    response = _infer(server, GOOD, version="9")
    assert response.status_code == 404
    assert "no version or alias '9'" in response.json()["error"]
    assert httpx.get(server.url + "/v2/models/nope").status_code == 404
    assert httpx.get(server.url + "/v2/no/such/route").status_code == 404


@pytest.mark.parametrize("body", [b"", b"{not json", b"[]", b'{"inputs": []}'])
@pytest.mark.parametrize(("model", "version"), [("nope", None), ("iris", "9")])
def test_unknown_model_or_version_is_404_whatever_the_body(server, body, model, version):
    response = _infer(server, body, model=model, version=version)
    assert response.status_code == 404, response.text
    assert repr(model if version is None else version) in response.json()["error"]


def test_binary_header_longer_than_body_is_rejected(server):
    response = _infer(server, b'{"inputs": []}', headers={"Inference-Header-Content-Length": "999"})
    assert response.status_code == 400
    assert "outside the body" in response.json()["error"]


def test_binary_size_that_does_not_match_shape_is_rejected(server):
    header = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","parameters":{"binary_data_size":16}}]}'
    response = _infer(server, header + b"\0" * 16, headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert "needs 32 bytes" in response.json()["error"]


def test_gzip_body_is_accepted(server):
    import gzip
    import json

    body = gzip.compress(json.dumps(GOOD).encode())
    response = _infer(server, body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.json()["outputs"][0]["name"] == "label"


def test_alias_resolves_to_its_version(server):
    response = _infer(server, GOOD, version="canary")
    assert response.status_code == 200
    assert response.json()["model_version"] == "2"
