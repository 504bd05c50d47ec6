"""Fixtures of the vision tests: small synthetic clips rendered to real video files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlscale.vision.synthetic import SyntheticScene
from mlscale.vision.video import write_video


@pytest.fixture(scope="session")
def covered_clip(tmp_path_factory) -> Path:
    """An H.264 file: 2 s of normal scene, then the lens covered (320x240, 15 fps, 14 s)."""
    path = tmp_path_factory.mktemp("clips") / "covered.mp4"
    scene = SyntheticScene((320, 240), seed=5, scenario="camera_covered", warmup=1.0, duration=14.0)
    write_video(str(path), (frame for _, frame in scene.frames(15.0)), 15.0)
    return path


@pytest.fixture(scope="session")
def normal_clip(tmp_path_factory) -> Path:
    """An H.264 file of a normal scene (160x120, 15 fps, 4 s)."""
    path = tmp_path_factory.mktemp("clips") / "normal.mp4"
    scene = SyntheticScene((160, 120), seed=1, scenario="normal", duration=4.0)
    write_video(str(path), (frame for _, frame in scene.frames(15.0)), 15.0)
    return path
