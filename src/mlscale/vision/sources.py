"""Camera sources: video files and RTSP/HTTP streams (PyAV), image folders, synthetic scenes.

A source is opened, then read frame by frame; ``read`` returns ``(capture_time, frame)`` or
``(capture_time, frame, position, clip_time)``, or None at the end. ``position`` is the frame's own time
in seconds (a file's presentation time, increasing across loops): the detector decides on it, so its
answers do not depend on how fast the machine reads. ``clip_time`` is the time within the file (it
restarts when a file loops), which events carry so a user can find the moment in the file.

A frame is a BGR ndarray or, from PyAV, an ``av.VideoFrame`` kept undecoded to pixels until
the detector actually wants it (most frames are skipped by the detection rate, so converting them
all would waste most of the decoding budget). Errors a user causes (a missing or corrupt file) raise
ConfigError at ``open``; a stream that drops raises ConnectionError from ``read`` and the pipeline
reopens it with backoff. Corrupt frames are skipped and counted in ``corrupt``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mlscale.errors import ConfigError
from mlscale.vision.synthetic import SyntheticScene

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Source:
    """Base of all sources. ``live`` sources (streams) set their own pace and are reconnected.

    ``paced`` sources release frames at their frame rate in wall-clock time, like a camera; unpaced
    ones as fast as they are read (``vision eval``, which scores a file as fast as it can).
    """

    live = False
    paced = True

    def __init__(self, name: str):
        self.name = name
        self.corrupt = 0
        # The position (seconds) of the next frame the detector will judge, set by the pipeline:
        # a source may skip the work of producing earlier frames nothing else depends on.
        self.due_from = -math.inf

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[float, Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Pacer:
    """Releases frames at ``fps`` in wall-clock time, as a camera would (files and synthetic scenes)."""

    def __init__(self, fps: float):
        self.interval = 1.0 / fps
        self.next = time.monotonic()

    def wait(self) -> float:
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # we fell far behind (a paused process): do not burst to catch up
            self.next = time.monotonic()
        self.next += self.interval
        return time.time()


class AVSource(Source):
    """A video file or a network stream (rtsp://, http(s)://) decoded by PyAV / FFmpeg."""

    def __init__(
        self,
        name: str,
        url: str,
        fps: float | None = None,
        loop: bool = True,
        timeout: float = 5.0,
        decoder_threads: int = 1,
        paced: bool = True,
        skip_unneeded: bool = True,
    ):
        super().__init__(name)
        self.skip_unneeded = skip_unneeded
        self.decoded = 0  # frames the decoder produced (skipped ones are not)
        self.paced = paced
        self.decoder_threads = decoder_threads
        self.url = url
        self.live = "://" in url
        self.loop = loop and not self.live
        self.fps = fps
        self.timeout = timeout
        self._container = None
        self._frames = None
        self._pacer: _Pacer | None = None
        self._offset = 0.0  # position of the current pass's start (a looping file goes on in time)
        self._last_clip = 0.0
        self._index = 0

    def open(self) -> None:
        import av

        if not self.live and not Path(self.url).exists():
            raise ConfigError(f"camera {self.name!r}: video file {self.url!r} does not exist")
        options = {"rtsp_transport": "tcp"} if self.url.startswith("rtsp") else {}
        try:
            self._container = av.open(self.url, options=options, timeout=self.timeout)
            stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as exc:
            self.close()
            if self.live:
                raise ConnectionError(f"cannot open stream {self.url}: {exc}") from None
            raise ConfigError(f"camera {self.name!r}: {self.url!r} is not a readable video: {exc}") from None
        # Many feeds already keep every core busy, so one decoder thread each avoids oversubscription;
        # deblocking is skipped because detection looks at a 4x downscaled frame where it is invisible
        # (it is about a third of H.264 decoding time).
        ctx = stream.codec_context
        ctx.thread_count = self.decoder_threads
        ctx.options = {"skip_loop_filter": "all", "flags2": "fast"}
        rate = self.fps or float(stream.average_rate or 15)
        self._pacer = _Pacer(rate) if self.paced and not self.live else None
        self._rate = float(stream.average_rate or rate)
        self._index = 0
        self._first_pts: float | None = None
        self._frames = self._decode(stream)

    def _decode(self, stream):
        """Frames in presentation order. A file's non-reference frames (no other frame is decoded
        from them: most B-frames) that come before the next frame due for detection are not decoded
        at all (FFmpeg's ``skip_frame``, set per packet from the packet's own timestamp): with the
        usual 15 fps in and 5 fps judged, that is a third or more of the decoding, and which frames
        are judged does not change, because a frame due for detection is always decoded and
        reference frames always are. Frames are placed by timestamp, so pacing and positions stay
        right; a file whose packets lack timestamps is decoded whole."""
        import av

        ctx = stream.codec_context
        base = stream.time_base
        margin = 0.5 / self._rate  # half a frame: rounding never makes a due frame look early
        skipping = False
        for packet in self._container.demux(stream):
            skip = False
            known = base is not None and packet.pts is not None and self._first_pts is not None
            if self.skip_unneeded and not self.live and known:
                position = self._offset + float(packet.pts * base) - self._first_pts
                skip = position < self.due_from - margin
            if skip != skipping:
                ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.corrupt += 1
                continue
            self.decoded += len(frames)
            yield from frames

    def read(self) -> tuple[float, Any] | None:
        import av

        try:
            frame = next(self._frames, None)
        except av.error.FFmpegError as exc:
            raise ConnectionError(f"{self.url}: {exc}") from None
        if frame is None:
            if self.live:
                raise ConnectionError(f"stream {self.url} ended")
            if not self.loop:
                return None
            self._offset += self._last_clip + 1.0 / self._rate
            self.close()
            self.open()
            return self.read()
        if self.live:  # a stream's timestamps restart when it reconnects: judge it on arrival time
            captured = self._pacer.wait() if self._pacer else time.time()
            return captured, frame, captured, None
        # The presentation time, from the file's first frame; a frame without one is placed by count.
        if frame.time is None:
            self.skip_unneeded = False  # counting frames needs every frame
        clip = float(frame.time) if frame.time is not None else self._index / self._rate
        if self._first_pts is None:
            self._first_pts = clip
        clip = max(0.0, clip - self._first_pts)
        if self._pacer is not None:
            # Frames not decoded (see _decode) still take their time, as on a camera.
            skipped = round((clip - self._last_clip) * self._rate) - 1 if self._index else 0
            if skipped > 0:
                self._pacer.next += skipped * self._pacer.interval
        captured = self._pacer.wait() if self._pacer else time.time()
        self._index += 1
        self._last_clip = clip
        return captured, frame, self._offset + clip, clip

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class ImageFolderSource(Source):
    """A folder of images read in name order at ``fps`` (a timelapse, or frames dumped by another tool)."""

    def __init__(self, name: str, folder: str, fps: float = 15.0, loop: bool = True, paced: bool = True):
        super().__init__(name)
        self.paced = paced
        self.folder = Path(folder)
        self.fps = fps
        self.loop = loop
        self._files: list[Path] = []
        self._index = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise ConfigError(f"camera {self.name!r}: image folder {str(self.folder)!r} does not exist")
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise ConfigError(f"camera {self.name!r}: image folder {str(self.folder)!r} has no images")
        self._index = 0
        self._count = 0
        self._pacer = _Pacer(self.fps) if self.paced else None

    def read(self) -> tuple[float, Any, float, float] | None:
        while True:
            if self._index >= len(self._files):
                if not self.loop:
                    return None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            self._count += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.corrupt += 1
                if self.corrupt > 10 * len(self._files):
                    raise ConfigError(f"camera {self.name!r}: no readable image in {str(self.folder)!r}")
                continue
            captured = self._pacer.wait() if self._pacer else time.time()
            return captured, image, (self._count - 1) / self.fps, (self._index - 1) / self.fps


class SyntheticSource(Source):
    """A synthetic scene rendered at ``fps`` in real time."""

    def __init__(self, name: str, scene: SyntheticScene, fps: float = 15.0, paced: bool = True):
        super().__init__(name)
        self.scene = scene
        self.fps = fps
        self.paced = paced

    def open(self) -> None:
        self._pacer = _Pacer(self.fps) if self.paced else None
        self._index = 0

    def read(self) -> tuple[float, np.ndarray, float, float] | None:
        t = self._index / self.fps
        if self.scene.duration is not None and t >= self.scene.duration:
            return None
        self._index += 1
        frame = self.scene.render(t)
        captured = self._pacer.wait() if self._pacer else time.time()
        return captured, frame, t, t


def open_source(feed, warmup: float = 10.0, root: Path | None = None, paced: bool = True) -> Source:
    """The source a feed's settings describe (not opened yet). ``paced=False`` reads files as fast
    as they decode (scoring a clip); streams always run at their own pace."""
    spec = feed.source
    if spec == "synthetic":
        try:
            scene = SyntheticScene(tuple(feed.size), seed=feed.seed, scenario=feed.scenario, warmup=warmup)
        except ValueError as exc:
            raise ConfigError(f"camera {feed.name!r}: {exc}") from None
        return SyntheticSource(feed.name, scene, feed.fps, paced=paced)
    if "://" in spec:
        return AVSource(feed.name, spec)
    path = Path(spec) if root is None or Path(spec).is_absolute() else root / spec
    if path.is_dir():
        return ImageFolderSource(feed.name, str(path), feed.fps, feed.loop, paced=paced)
    return AVSource(feed.name, str(path), feed.fps, feed.loop, paced=paced)


def to_bgr(frame: Any) -> np.ndarray:
    """Pixels of a frame from any source, as BGR."""
    if isinstance(frame, np.ndarray):
        return frame
    return frame.to_ndarray(format="bgr24")


def to_small_gray(frame: Any, size: tuple[int, int]) -> np.ndarray:
    """A frame downscaled to the detection size in grey. For decoded YUV frames the luma plane already
    is the grey image: it is read in place, no colour conversion and no full-size copy."""
    if not isinstance(frame, np.ndarray):
        name = frame.format.name
        if name.startswith(("yuv", "nv")):
            plane = frame.planes[0]
            luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
            return cv2.resize(luma, size, interpolation=cv2.INTER_AREA)
        frame = frame.to_ndarray(format="bgr24")
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small


def to_small_chroma(frame: Any, size: tuple[int, int]) -> np.ndarray | None:
    """The colour of a frame without its brightness, downscaled: (h, w, 2) uint8 (Cb, Cr), or None
    for a grey source.

    Why: someone whose grey level matches the background behind them (a red coat on green grass)
    is invisible in grey but not in colour. For decoded YUV 4:2:0 frames the chroma planes are read
    in place (already a quarter of the pixels), no colour conversion of the full frame.
    """
    if not isinstance(frame, np.ndarray):
        name = frame.format.name
        if name in ("yuv420p", "yuvj420p"):
            cw, ch = (frame.width + 1) // 2, (frame.height + 1) // 2
            planes = []
            for plane in frame.planes[1:3]:
                data = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ch, :cw]
                planes.append(cv2.resize(data, size, interpolation=cv2.INTER_AREA))
            return np.dstack(planes)
        frame = frame.to_ndarray(format="bgr24")
    if frame.ndim != 3:
        return None
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ycrcb = cv2.cvtColor(small, cv2.COLOR_BGR2YCrCb)
    return np.ascontiguousarray(ycrcb[:, :, :0:-1])  # Cb, Cr as in the planes of a YUV frame
