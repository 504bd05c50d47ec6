"""Feeds sharded over worker processes behave like the in-process pipeline."""

from __future__ import annotations

import pytest
from vision_helpers import wait_for

from mlscale.errors import ConfigError
from mlscale.vision.pipeline import make_pipeline
from mlscale.vision.settings import FeedSettings, VisionSettings
from mlscale.vision.workers import ShardedPipeline


def test_feeds_spread_over_two_processes_all_report_status(tmp_path):
    feeds = [FeedSettings(name=f"cam{i}", fps=20.0, size=(160, 120), seed=i) for i in range(3)]
    settings = VisionSettings(feeds=feeds, events_dir=str(tmp_path), warmup_seconds=1.0, workers=2)
    pipeline = make_pipeline(settings)
    assert isinstance(pipeline, ShardedPipeline)
    with pipeline:
        assert wait_for(
            lambda: (
                len(pipeline.status()["cameras"]) == 3
                and all(c["frames_processed"] >= 5 for c in pipeline.status()["cameras"])
            ),
            timeout=30,
        )
        status = pipeline.status()
    assert status["workers"] == 2
    assert [c["camera"] for c in status["cameras"]] == ["cam0", "cam1", "cam2"]


def test_a_corrupt_file_in_a_worker_is_raised_by_start(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope" * 100)
    feeds = [FeedSettings(name="ok"), FeedSettings(name="bad", source=str(bad))]
    settings = VisionSettings(feeds=feeds, events_dir=str(tmp_path), workers=2)
    with pytest.raises(ConfigError, match=r"camera 'bad'.*not a readable video"):
        make_pipeline(settings).start()
