"""The real-time pipeline: events reach the log and the sinks, an overloaded detector drops frames
and keeps lag bounded, status and Prometheus metrics describe every camera."""

from __future__ import annotations

import json
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from vision_helpers import wait_for

from mlscale.vision.pipeline import VisionPipeline, start_vision
from mlscale.vision.settings import FeedSettings, VisionSettings
from mlscale.vision.sources import SyntheticSource
from mlscale.vision.synthetic import SyntheticScene


def test_covered_camera_in_a_video_file_is_logged_with_snapshot_and_sent_to_sinks(covered_clip, tmp_path):
    received = []

    def broken_sink(event):
        raise RuntimeError("webhook down")

    feed = FeedSettings(name="door", source=str(covered_clip), fps=60.0, detect_fps=10.0, loop=False)
    settings = VisionSettings(feeds=[feed], events_dir=str(tmp_path / "events"), warmup_seconds=1.0)
    with VisionPipeline(settings, sinks=[broken_sink, received.append]) as pipeline:
        assert wait_for(lambda: any(e.kind == "camera_covered" for e in received), timeout=20)
    event = next(e for e in received if e.kind == "camera_covered")
    assert event.camera == "door"
    assert event.jpeg[:2] == b"\xff\xd8"  # a JPEG
    logged = pipeline.events.read()
    assert [e.kind for e in logged] == [e.kind for e in received]  # a failing sink loses nothing
    snapshot = tmp_path / "events" / logged[0].snapshot
    assert snapshot.read_bytes() == received[0].jpeg


def test_overloaded_detector_drops_old_frames_and_keeps_lag_bounded(tmp_path):
    feed = FeedSettings(name="busy", fps=60.0, detect_fps=30.0, resolution=(80, 60))
    scene = SyntheticScene((160, 120), seed=2)
    settings = VisionSettings(feeds=[feed], events_dir=str(tmp_path), warmup_seconds=0.5)
    pipeline = VisionPipeline(settings, sources={"busy": SyntheticSource("busy", scene, fps=60.0)})

    def slow_model(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.15)  # a model that needs 150 ms a batch: at most ~6 verdicts per second
        return np.zeros(len(batch), np.float32)

    pipeline.feeds[0].scorer = slow_model
    with pipeline:
        assert wait_for(lambda: pipeline.status()["cameras"][0]["frames_processed"] >= 15, timeout=20)
        cam = pipeline.status()["cameras"][0]
    assert cam["dropped"] > 0
    assert cam["frames_in"] > 3 * cam["frames_processed"]
    # Frames older than the backlog bound (0.6 s) are dropped: the verdict stays within that bound
    # plus a slow batch or two of the newest frame, under a second.
    assert cam["lag_seconds"] < 0.95
    assert cam["latency_p99"] < 0.95


def test_status_is_json_and_metrics_carry_the_documented_names(tmp_path):
    settings = VisionSettings(
        feeds=[FeedSettings(name=f"cam{i}", fps=30.0, size=(160, 120), seed=i) for i in range(2)],
        events_dir=str(tmp_path),
        warmup_seconds=1.0,
    )
    registry = CollectorRegistry()
    pipeline = start_vision(settings)
    try:
        pipeline.register_metrics(registry)
        assert wait_for(lambda: all(c["frames_processed"] >= 5 for c in pipeline.status()["cameras"]))
        status = json.loads(json.dumps(pipeline.status()))
    finally:
        pipeline.stop()
    assert [c["camera"] for c in status["cameras"]] == ["cam0", "cam1"]
    for cam in status["cameras"]:
        assert cam["fps_in"] > cam["fps_processed"] > 0
        assert cam["latency_p50"] is not None and cam["latency_p50"] <= cam["latency_p99"]
    text = generate_latest(registry).decode()
    for name in (
        'mlscale_vision_input_fps{camera="cam0"}',
        'mlscale_vision_processed_fps{camera="cam1"}',
        'mlscale_vision_dropped_frames_total{camera="cam0"}',
        'mlscale_vision_latency_seconds_bucket{camera="cam0",le="0.05"}',
        'mlscale_vision_latency_seconds_count{camera="cam1"}',
    ):
        assert name in text


def test_start_vision_without_feeds_runs_the_synthetic_demo_cameras(tmp_path):
    pipeline = start_vision(VisionSettings(events_dir=str(tmp_path)))
    try:
        assert wait_for(lambda: all(c["frames_in"] > 0 for c in pipeline.status()["cameras"]))
        assert len(pipeline.status()["cameras"]) == 3
        assert pipeline.status()["running"]
    finally:
        pipeline.stop()
    assert not pipeline.status()["running"]


def test_events_reach_the_alerting_channels_through_alert_sink(covered_clip, tmp_path):
    from mlscale.monitoring.alerts.channels import FileChannel
    from mlscale.monitoring.alerts.manager import AlertManager
    from mlscale.vision.events import alert_sink

    alerts_file = tmp_path / "alerts.jsonl"
    manager = AlertManager(channels=[FileChannel(alerts_file)])
    feed = FeedSettings(name="door", source=str(covered_clip), fps=60.0, detect_fps=10.0, loop=False)
    settings = VisionSettings(feeds=[feed], events_dir=str(tmp_path / "events"), warmup_seconds=1.0)
    with VisionPipeline(settings, sinks=[alert_sink(manager)]):
        assert wait_for(lambda: alerts_file.exists() and "vision.camera_covered" in alerts_file.read_text(), 20)
    note = next(json.loads(line) for line in alerts_file.read_text().splitlines() if "camera_covered" in line)
    assert note["labels"] == {"camera": "door", "kind": "camera_covered"}
    assert note["data"]["snapshot"].startswith("snapshots/")
