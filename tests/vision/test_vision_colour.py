"""Someone as bright as the background behind them: invisible in grey, seen by colour."""

from __future__ import annotations

import cv2
import numpy as np

from mlscale.vision.motion import MotionAnalyzer
from mlscale.vision.sources import to_small_chroma

BACKGROUND = (120, 130, 110)  # BGR, grey level 123
SAME_GREY = (190, 100, 140)  # BGR, grey level 122: another colour, the same brightness


def _frames(seed: int = 0):
    """320x240 BGR frames at 5 fps: 10 s of the empty scene, then someone standing in it."""
    rng = np.random.default_rng(seed)
    base = np.empty((240, 320, 3), np.float32)
    base[:] = BACKGROUND
    base += cv2.GaussianBlur(rng.normal(0, 25, (240, 320, 1)).astype(np.float32), (0, 0), 3)[:, :, None]
    for i in range(80):
        frame = base + rng.normal(0, 2.0, base.shape).astype(np.float32)
        if i >= 50:
            frame[100:160, 150:175] += np.array(SAME_GREY, np.float32) - np.array(BACKGROUND, np.float32)
        yield i / 5.0, np.clip(frame, 0, 255).astype(np.uint8)


def _run(colour: bool):
    analyzer = MotionAnalyzer((160, 120), history=1500)
    motion = None
    for t, frame in _frames():
        chroma = to_small_chroma(frame, analyzer.chroma_resolution) if colour else None
        motion = analyzer.update(analyzer.prepare(frame), t, chroma=chroma)
    return motion


def test_the_patch_has_the_grey_level_of_the_background():
    grey = cv2.cvtColor(np.array([[BACKGROUND, SAME_GREY]], np.uint8), cv2.COLOR_BGR2GRAY)
    assert abs(int(grey[0, 0]) - int(grey[0, 1])) <= 2


def test_someone_as_bright_as_the_background_is_seen_by_colour_and_not_in_grey_alone():
    assert _run(colour=False).fg_fraction == 0.0
    motion = _run(colour=True)
    assert motion.fg_fraction > 0.02
    (track,) = [tr for tr in motion.tracks if tr.hits >= 5]
    x, y = track.center
    assert 150 / 320 <= x <= 175 / 320 and 100 / 240 <= y <= 160 / 240


def test_colour_of_decoded_yuv_frames_matches_colour_of_bgr_frames(tmp_path):
    from mlscale.vision.video import write_video

    frames = [f for _, f in _frames()][-5:]
    path = tmp_path / "still.mp4"
    write_video(str(path), iter(frames), 5.0)
    import av

    with av.open(str(path)) as container:
        decoded = next(container.decode(video=0))
    assert decoded.format.name.startswith("yuv")
    yuv = to_small_chroma(decoded, (80, 60)).astype(int)
    bgr = to_small_chroma(decoded.to_ndarray(format="bgr24"), (80, 60)).astype(int)
    assert yuv.shape == bgr.shape == (60, 80, 2)
    assert np.abs(yuv - bgr).mean() < 3.0
