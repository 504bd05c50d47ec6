"""The feature lookup of a model fed by entity ids is a span of its request, before the queue wait."""

from __future__ import annotations

import asyncio

import pytest
from tracing_support import build_feature_project, new_parent, one, running_app

SCORE_MODEL = '''
class Model:
    """2 * conv_rate + acc_rate."""
    def predict(self, inputs):
        x = inputs["input"]
        return {"score": x[:, 0] * 2.0 + x[:, 1]}
'''

MODEL_TOML = """execution = "inline"
[features]
service = "driver_model"
entity_key = "driver_id"
[[inputs]]
name = "input"
datatype = "FP64"
shape = [-1, 2]
[[outputs]]
name = "score"
datatype = "FP64"
shape = [-1]
"""


def test_feature_lookup_is_a_span_of_the_request(exporter, tmp_path):
    project = build_feature_project(tmp_path)
    folder = tmp_path / "models" / "driver-score" / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(SCORE_MODEL)
    (folder / "model.toml").write_text(MODEL_TOML)
    trace_id, _, header = new_parent()

    async def scenario():
        async with running_app(tmp_path / "models", project=project) as (_, client):
            request = {"inputs": [{"name": "driver_id", "shape": [2], "datatype": "INT64", "data": [3, 1]}]}
            response = await client.post("/v2/models/driver-score/infer", json=request, headers={"traceparent": header})
            assert response.status_code == 200, response.text
            return response.json()["outputs"][0]["data"]

    # The features of drivers 3 and 1 reached the model: 2 * conv_rate + acc_rate.
    assert asyncio.run(scenario()) == pytest.approx([2 * 0.3 + 0.7, 2 * 0.1 + 0.5], rel=1e-6)
    spans = exporter.get_finished_spans()
    server = one(spans, "POST /v2/models/{model}/infer", trace_id)
    lookup = one(spans, "feature lookup", trace_id)
    assert lookup.parent.span_id == server.context.span_id
    assert lookup.attributes["mlscale.model"] == "driver-score"
    wait = one(spans, "queue wait", trace_id)
    assert lookup.end_time <= wait.start_time
