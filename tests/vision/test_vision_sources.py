"""Sources: a dropped feed reconnects with backoff, corrupt frames are skipped and counted, a missing
or corrupt file is a clear error (in the API and on the command line)."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from vision_helpers import wait_for

from mlscale.errors import ConfigError
from mlscale.vision.pipeline import VisionPipeline
from mlscale.vision.settings import FeedSettings, VisionSettings
from mlscale.vision.sources import ImageFolderSource, Source
from mlscale.vision.synthetic import SyntheticScene


class FlakySource(Source):
    """A camera whose connection fails twice when opened and drops once after 10 frames."""

    live = True

    def __init__(self):
        super().__init__("flaky")
        self.scene = SyntheticScene((160, 120), seed=3)
        self.opens = 0
        self.index = 0

    def open(self):
        self.opens += 1
        if self.opens <= 2:
            raise ConnectionError("connection refused")

    def read(self):
        self.index += 1
        if self.index == 10 and self.opens == 3:
            raise ConnectionError("connection reset by peer")
        return float(self.index), self.scene.render(self.index / 15)


def _settings(tmp_path, **feed) -> VisionSettings:
    return VisionSettings(
        feeds=[FeedSettings(name="cam", **feed)],
        events_dir=str(tmp_path / "events"),
        warmup_seconds=0.5,
        backoff_initial=0.05,
        backoff_max=0.2,
    )


def test_a_feed_that_fails_and_drops_reconnects_with_backoff_and_counts_it(tmp_path):
    source = FlakySource()
    pipeline = VisionPipeline(_settings(tmp_path), sources={"cam": source})
    with pipeline:
        assert wait_for(lambda: pipeline.status()["cameras"][0]["frames_in"] >= 30)
        cam = pipeline.status()["cameras"][0]
    assert cam["reconnects"] == 3
    assert source.opens == 4
    assert cam["connected"]
    assert "connection reset" in cam["last_error"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_http_stream_that_is_down_at_start_connects_when_the_server_comes_up(normal_clip, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/{normal_clip.name}"
    pipeline = VisionPipeline(_settings(tmp_path, source=url))
    server = None
    try:
        pipeline.start()
        assert wait_for(lambda: pipeline.status()["cameras"][0]["reconnects"] >= 2)
        assert pipeline.status()["cameras"][0]["frames_in"] == 0
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(normal_clip.parent))
        handler.log_message = lambda *args: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        assert wait_for(lambda: pipeline.status()["cameras"][0]["frames_processed"] >= 3)
    finally:
        pipeline.stop()
        if server is not None:
            server.shutdown()
            server.server_close()


def test_a_corrupt_video_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(ConfigError, match=r"camera 'cam': .*broken.mp4.* not a readable video"):
        VisionPipeline(_settings(tmp_path, source=str(bad))).start()


def test_a_missing_video_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        VisionPipeline(_settings(tmp_path, source=str(tmp_path / "nope.mp4"))).start()


def test_a_truncated_video_file_skips_what_it_cannot_decode(normal_clip, tmp_path):
    data = bytearray(normal_clip.read_bytes())
    # Scribble over the middle of the stream: some packets no longer decode.
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    pipeline = VisionPipeline(_settings(tmp_path, source=str(damaged), fps=120.0, loop=False))
    with pipeline:
        assert wait_for(lambda: not pipeline.status()["cameras"][0]["connected"])
    cam = pipeline.status()["cameras"][0]
    assert cam["corrupt"] >= 1
    assert 0 < cam["frames_in"] < 60  # damaged frames skipped, the rest read


def test_unreadable_images_in_a_folder_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    scene = SyntheticScene((160, 120), seed=4)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene.render(i / 15))
    (folder / "003.png").write_bytes(b"garbage")
    source = ImageFolderSource("cam", str(folder), fps=1000.0, loop=False)
    source.open()
    frames = []
    while (item := source.read()) is not None:
        frames.append(item[1])
    assert len(frames) == 5
    assert source.corrupt == 1
    assert all(isinstance(f, np.ndarray) and f.shape == (120, 160, 3) for f in frames)


def _run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", "from mlscale.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_run_with_a_corrupt_file_exits_2_with_one_line(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"garbage" * 50)
    (tmp_path / "mlscale.toml").write_text('[[vision.feeds]]\nname = "gate"\nsource = "broken.mp4"\n')
    result = _run_cli("vision", "run", "--config", "mlscale.toml", "--duration", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "camera 'gate'" in result.stderr and "not a readable video" in result.stderr


def test_cli_run_rejects_an_unknown_setting(tmp_path):
    (tmp_path / "mlscale.toml").write_text("[vision]\nfeedz = []\n")
    result = _run_cli("vision", "run", "--config", "mlscale.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "feedz" in result.stderr


def test_cli_run_processes_a_file_feed_and_reports_status(normal_clip, tmp_path):
    shutil.copy(normal_clip, tmp_path / "clip.mp4")
    (tmp_path / "mlscale.toml").write_text(
        '[vision]\nwarmup_seconds = 1.0\nevents_dir = "ev"\n'
        '[[vision.feeds]]\nname = "gate"\nsource = "clip.mp4"\nfps = 30\n'
    )
    result = _run_cli("vision", "run", "--config", "mlscale.toml", "--duration", "2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]  # JSON lines only
    assert "events logged" in result.stderr
    last = lines[-1]
    assert last["cameras"][0]["camera"] == "gate"
    assert last["cameras"][0]["frames_processed"] > 0
    assert json.loads((tmp_path / "ev" / "status.json").read_text())["cameras"][0]["camera"] == "gate"


def _clip_with_b_frames(path, seconds: float = 24.0, fps: float = 15.0) -> None:
    """A recorded-file-like H.264 clip: B-frames (x264's default), unlike an IP camera's stream."""
    from fractions import Fraction

    import av

    scene = SyntheticScene((320, 240), seed=5, scenario="wrong_way", warmup=8.0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=Fraction(int(fps)))
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"bf": "3", "preset": "veryfast"}
        for _, frame in scene.frames(fps, seconds):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_frames_nothing_needs_are_not_decoded_and_verdicts_do_not_change(tmp_path):
    """Non-reference frames before the next due frame are skipped by the decoder: fewer frames
    decoded, and every judged frame, score and event is what decoding everything gives."""
    from mlscale.vision.sources import AVSource

    clip = tmp_path / "b-frames.mp4"
    _clip_with_b_frames(clip)

    def judge(skip: bool):
        settings = VisionSettings(
            feeds=[FeedSettings(name="cam", source=str(clip), fps=15.0, loop=False)],
            events_dir=str(tmp_path / f"events-{skip}"),
            warmup_seconds=8.0,
        )
        source = AVSource("cam", str(clip), 15.0, loop=False, paced=False, skip_unneeded=skip)
        pipeline = VisionPipeline(settings, sources={"cam": source}, paced=False)
        verdicts = []
        pipeline.on_verdict = lambda _, t, v: verdicts.append(
            (round(t, 4), round(v.score, 6), [f.kind for f in v.fired])
        )
        with pipeline:
            wait_for(pipeline.finished, timeout=60)
        return verdicts, source.decoded

    everything, decoded_all = judge(skip=False)
    skipped, decoded_some = judge(skip=True)
    assert decoded_all == 360
    assert decoded_some < 0.8 * decoded_all, f"only {decoded_all - decoded_some} of {decoded_all} frames skipped"
    assert any(kinds for _, _, kinds in everything), "the clip must raise an event for the comparison to mean much"
    assert skipped == everything
