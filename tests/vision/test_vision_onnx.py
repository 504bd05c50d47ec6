"""The ONNX hook: a model scoring batches of frames from every camera that uses it."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from vision_helpers import wait_for

from mlscale.errors import ConfigError
from mlscale.vision.pipeline import VisionPipeline
from mlscale.vision.settings import FeedSettings, VisionSettings


def _brightness_model(path, scale: float) -> str:
    """score = scale * mean pixel value of each frame: a stand-in for a trained anomaly model."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["frames"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "scale"], ["score"]),
        ],
        "brightness",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_an_onnx_model_scores_frames_and_its_verdict_becomes_an_event(tmp_path):
    loud = _brightness_model(tmp_path / "loud.onnx", scale=10.0)  # any lit frame scores above 1
    quiet = _brightness_model(tmp_path / "quiet.onnx", scale=0.01)
    feeds = [
        FeedSettings(name="a", fps=30.0, size=(160, 120), onnx_model=loud),
        FeedSettings(name="b", fps=30.0, size=(160, 120), seed=1, onnx_model=quiet),
    ]
    received = []
    settings = VisionSettings(feeds=feeds, events_dir=str(tmp_path / "ev"), warmup_seconds=0.5)
    with VisionPipeline(settings, sinks=[received.append]) as pipeline:
        assert wait_for(lambda: any(e.kind == "model" for e in received))
        assert wait_for(lambda: pipeline.status()["cameras"][1]["frames_processed"] >= 10)
    model_events = [e for e in received if e.kind == "model"]
    assert {e.camera for e in model_events} == {"a"}
    assert model_events[0].score > 1.0


def test_a_missing_onnx_model_is_a_clear_error(tmp_path):
    feed = FeedSettings(name="a", onnx_model=str(tmp_path / "missing.onnx"))
    with pytest.raises(ConfigError, match="cannot load ONNX model"):
        VisionPipeline(VisionSettings(feeds=[feed], events_dir=str(tmp_path)))
