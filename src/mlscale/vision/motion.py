"""Motion analysis of one camera: background subtraction on a downscaled frame, blobs, and tracks with
speed, direction and dwell time.

Everything it reports is in normalized units (fractions of the frame width/height, seconds), so the
model of normal activity and the rules do not depend on the detection resolution or the frame rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class TrackView:
    """A tracked moving object as seen in one frame."""

    id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, normalized
    center: tuple[float, float]
    velocity: tuple[float, float] | None  # frame widths/heights per second; None until known
    age: float  # seconds since first seen
    hits: int  # frames it was seen in
    dwell: float  # seconds it has stayed within a small radius
    travel: tuple[float, float] = (0.0, 0.0)  # displacement since first seen (frame widths, heights)


@dataclass(frozen=True)
class MotionFrame:
    """What motion analysis saw in one frame: the input of the detectors."""

    t: float
    fg_fraction: float
    texture: float  # standard deviation of the grey image: drops when the lens is covered
    brightness: float
    tracks: tuple[TrackView, ...]
    shift: float | None = None  # global image shift against the reference (camera moved), if checked
    # Regions that have been foreground nearly all the time lately: (box, persistence 0..1).
    stationary: tuple[tuple[tuple[float, float, float, float], float], ...] = ()
    # The light changed suddenly a moment ago and the background is being learned again: what moves
    # now is mostly the change of light, not people.
    relit: bool = False


@dataclass
class _Track:
    id: int
    box: tuple[float, float, float, float]
    first_seen: float
    history: deque = field(default_factory=lambda: deque(maxlen=256))
    hits: int = 0
    misses: int = 0

    def center(self) -> tuple[float, float]:
        return self.history[-1][1], self.history[-1][2]

    def predict(self, t: float) -> tuple[float, float]:
        """Where a constant-velocity object would be at ``t``: matching against the prediction
        keeps a runner from being handed to the walker it passes."""
        t0, x, y = self.history[-1]
        v = self.velocity() if len(self.history) > 1 else None
        return (x, y) if v is None else (x + v[0] * (t - t0), y + v[1] * (t - t0))

    def velocity(self, window: float = 0.8) -> tuple[float, float] | None:
        # Measured over ~window seconds, not frame to frame: a blob's centroid jitters as it merges
        # and splits, and a one-frame velocity would turn that jitter into "running".
        t, x, y = self.history[-1]
        for t0, x0, y0 in self.history:
            if t - t0 <= window + 1e-6 and t - t0 > 0:
                return (x - x0) / (t - t0), (y - y0) / (t - t0)
        return None

    def dwell(self, radius: float) -> float:
        t, x, y = self.history[-1]
        since = t
        for t0, x0, y0 in reversed(self.history):
            if math.hypot(x - x0, y - y0) > radius:
                break
            since = t0
        return t - since


def _detail(image: np.ndarray) -> np.ndarray:
    """The image less its blur (float32, a new array: phaseCorrelate writes into its inputs)."""
    return image - cv2.GaussianBlur(image, (0, 0), 4.0)


class MotionAnalyzer:
    """Background subtraction + blob tracking for one camera (stateful: one per feed)."""

    def __init__(
        self,
        resolution: tuple[int, int] = (160, 120),
        history: int = 1500,
        var_threshold: float = 16.0,
        min_area: float = 0.0006,
        dwell_radius: float = 0.06,
        keep_seconds: float = 1.5,
        persistence_seconds: float = 5.0,
    ) -> None:
        self.resolution = resolution
        self.history = history
        self.var_threshold = var_threshold
        self.min_area = min_area
        self.dwell_radius = dwell_radius
        self.keep_seconds = keep_seconds
        self.persistence_seconds = persistence_seconds
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._sway = cv2.getStructuringElement(cv2.MORPH_RECT, (5, 5))
        self.reset()

    def reset(self) -> None:
        """Forget the background and every track (after the camera moved, say)."""
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=self.history, varThreshold=self.var_threshold, detectShadows=False
        )
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._frames = 0
        self._last_t: float | None = None
        self.reference: np.ndarray | None = None
        self._persist: np.ndarray | None = None
        self._scene: np.ndarray | None = None  # persistent already at the end of the warm-up
        self._window: np.ndarray | None = None
        self._light: np.ndarray | None = None  # brightness of 4x4 blocks, averaged over the last seconds
        self._relearn_until = -math.inf
        self._last_shift_check = -math.inf
        self._shifted = False

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Downscale a BGR or grey frame to the detection resolution, in grey."""
        w, h = self.resolution
        if frame.shape[1] != w or frame.shape[0] != h:
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        return frame

    def set_reference(self) -> None:
        """Remember the learned background, against which a moved camera is measured."""
        background = self._subtractor.getBackgroundImage()
        if background is not None:
            if background.ndim == 3:
                background = cv2.cvtColor(background, cv2.COLOR_BGR2GRAY)
            self.reference = background.astype(np.float32)
            self._window = cv2.createHanningWindow(self.resolution, cv2.CV_32F)
        if self._persist is not None:
            # What already stayed put through the warm-up is part of the scene (a parked car, the
            # ghost of someone who stood there while the background was first learned), not a
            # loiterer: left out until it has gone.
            self._scene = cv2.dilate((self._persist > 0.3 * 255).astype(np.uint8) * 255, self._sway)

    def update(self, gray: np.ndarray, t: float, learn: bool = True) -> MotionFrame:
        """Analyse one downscaled grey frame taken at ``t`` seconds.

        ``learn=False`` keeps the background model as it is (while the lens is covered, so that the
        dark image does not become "the background").
        """
        mean, std = cv2.meanStdDev(gray)
        brightness, texture = float(mean[0, 0]), float(std[0, 0])
        # Compensate global lighting (a gain, as a cloud or a camera's exposure control applies it) so
        # a change of light is not motion everywhere.
        normalized = cv2.convertScaleAbs(gray, alpha=min(4.0, 128.0 / max(brightness, 1.0)))
        # Bootstrap fast (OpenCV's automatic rate), then learn at 1/history: with the automatic rate a
        # young model absorbs someone standing still within seconds, and loitering would go unseen.
        self._frames += 1
        rate = -1.0 if self._frames < 30 else 1.0 / self.history
        dt = 0.2 if self._last_t is None else max(1e-3, t - self._last_t)
        # A sudden change of light (a lamp, a cloud, the camera's exposure): gain normalization does
        # not undo it where the image saturates, so the background is learned again for a moment.
        # Told apart from people arriving by being everywhere: most of a 4x4 grid of blocks
        # changes brightness the same way (a crowd changes a few blocks, a lamp all of them).
        blocks = cv2.resize(gray, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32) + 1.0
        if self._light is not None and learn:
            change = blocks / self._light - 1.0
            if max((change > 0.05).mean(), (change < -0.05).mean()) >= 0.75:
                self._relearn_until = t + 1.5
                self._light = blocks
        self._light = blocks if self._light is None else self._light + (blocks - self._light) * min(1.0, dt / 3.0)
        relit = t < self._relearn_until + 1.0
        if learn and t < self._relearn_until:
            rate = 0.2
        mask = self._subtractor.apply(normalized, learningRate=rate if learn else 0.0)
        if self._frames >= 30:
            # A shaking camera moves every strong edge by a pixel: a pixel is foreground only if it
            # differs from the background at every point of its 3x3 neighbourhood (the darkest and
            # brightest of them), otherwise the edges of the scene "move" all the time.
            background = self._subtractor.getBackgroundImage()
            if background is not None:
                low = cv2.erode(background, self._kernel)
                high = cv2.dilate(background, self._kernel)
                outside = cv2.bitwise_or(
                    cv2.compare(normalized, cv2.subtract(low, 12), cv2.CMP_LT),
                    cv2.compare(normalized, cv2.add(high, 12), cv2.CMP_GT),
                )
                mask = cv2.bitwise_and(mask, outside)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.dilate(mask, self._kernel)
        w, h = self.resolution
        count, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_px = self.min_area * w * h
        # Moving area counted over blobs large enough to be someone: compression artefacts (a
        # keyframe's sudden sharpness) and sensor noise light up specks all over the image.
        areas = stats[1:count, cv2.CC_STAT_AREA]
        fg_fraction = float(areas[areas >= min_px].sum()) / (w * h)
        blobs = [
            (
                (float(x) / w, float(y) / h, float(x + bw) / w, float(y + bh) / h),
                (float(cx) / w, float(cy) / h),
            )
            for (x, y, bw, bh, area), (cx, cy) in zip(stats[1:count].tolist(), centroids[1:count].tolist(), strict=True)
            if area >= min_px
        ]
        self._match(blobs, t)
        stationary = self._stationary(mask, dt) if learn else ()
        # Checked when much of the image changed, while the background is learned again after a
        # change of light (it would learn the moved view too), after a shift was seen, and once a
        # second anyway: a view that moved while the background was adapting shows little motion.
        due = fg_fraction > 0.2 or relit or self._shifted or t - self._last_shift_check >= 1.0
        shift = None
        if self.reference is not None and due:
            self._last_shift_check = t
            # Against the view at the end of the warm-up (its background), with the peak's strength:
            # a weak peak is the correlation of noise and passers-by, not a moved view.
            current = normalized.astype(np.float32)
            # A copy: OpenCV's phaseCorrelate multiplies its inputs by the window in place, and
            # the reference would fade a little more at every check.
            # Correlated on detail (each image less its blur): the broad shading of a scene (a sky
            # gradient, a lamp's pool of light) says little about where the view points.
            (dx, dy), response = cv2.phaseCorrelate(_detail(self.reference), _detail(current), self._window)
            shift = math.hypot(dx / w, dy / h) if response >= 0.05 else 0.0
            if shift >= 0.02 and not self._aligns(current, dx, dy):
                shift = 0.0
            self._shifted = shift >= 0.02
        views = tuple(
            TrackView(
                id=tr.id,
                box=tr.box,
                center=tr.center(),
                velocity=tr.velocity(),
                age=t - tr.first_seen,
                hits=tr.hits,
                dwell=tr.dwell(self.dwell_radius),
                travel=(tr.history[-1][1] - tr.history[0][1], tr.history[-1][2] - tr.history[0][2]),
            )
            for tr in self._tracks
            if tr.misses == 0
        )
        return MotionFrame(t, fg_fraction, texture, brightness, views, shift, stationary, relit)

    def _aligns(self, current: np.ndarray, dx: float, dy: float) -> bool:
        """Does moving the frame back by (dx, dy) match the reference much better than leaving it?

        Why: on a repetitive texture (bricks, tiles, a fence) the correlation peak can land on the
        pattern's period while the view has not moved at all; then the frame as it is already
        matches the reference.
        """
        w, h = self.resolution
        mx, my = int(abs(dx)) + 2, int(abs(dy)) + 2
        inner = (slice(my, h - my), slice(mx, w - mx))
        if h - 2 * my < 8 or w - 2 * mx < 8:
            return True
        # Blurred: a slight turn of the camera comes with the shift, and fine texture (gravel,
        # leaves) would decorrelate under it even when aligned.
        ref = cv2.GaussianBlur(self.reference, (0, 0), 2.0)[inner]
        current = cv2.GaussianBlur(current, (0, 0), 2.0)
        still = float(np.mean(np.abs(current[inner] - ref)))
        size = (w, h)
        # Both directions tried: which way round the peak reads is OpenCV's convention, and
        # getting it wrong must not hide a moved camera.
        moved = min(
            float(
                np.mean(
                    np.abs(cv2.warpAffine(current, np.float32([[1, 0, s * dx], [0, 1, s * dy]]), size)[inner] - ref)
                )
            )
            for s in (-1.0, 1.0)
        )
        return still > 1.3 * moved

    def _stationary(self, mask: np.ndarray, dt: float) -> tuple:
        """Foreground persistence per pixel, an exponential average over ``persistence_seconds``.

        Why not only track dwell: a person standing still fragments into pieces and merges with
        every passer-by, so track identities churn; the pixels they cover stay foreground regardless.
        """
        if self._persist is None:
            self._persist = np.zeros(mask.shape, np.float32)
        alpha = 1.0 - math.exp(-dt / self.persistence_seconds)
        # Widened first: someone shifting their weight sways a few pixels, and each pixel at their
        # edge would otherwise be foreground only part of the time.
        cv2.accumulateWeighted(cv2.dilate(mask, self._sway), self._persist, alpha)
        level = self._persist  # mask is 0/255, so full persistence is 255
        hot = cv2.compare(level, 0.8 * 255.0, cv2.CMP_GT)
        if self._scene is not None:
            self._scene[level < 0.1 * 255] = 0  # gone: watched again from now on
            hot[self._scene > 0] = 0
        count, _, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
        w, h = self.resolution
        found = []
        for x, y, bw, bh, area in stats[1:count].tolist():
            if area >= self.min_area * w * h:
                peak = float(level[y : y + bh, x : x + bw].max()) / 255.0
                found.append(((x / w, y / h, (x + bw) / w, (y + bh) / h), peak))
        return tuple(found)

    def _match(self, blobs: list, t: float) -> None:
        """Greedy nearest-centroid association of blobs to tracks (cheap, and enough at 5 fps)."""
        dt = 0.2 if self._last_t is None else max(1e-3, t - self._last_t)
        self._last_t = t
        # A new track may have moved far (a runner's first step); one with a velocity is looked for
        # near where it should be now, so it is not handed to someone else passing close by.
        reaches = [max(0.06, 0.6 * dt) if len(tr.history) < 2 else max(0.04, 0.3 * dt) for tr in self._tracks]
        reach = max(reaches, default=0.0)
        predicted = [tr.predict(t) for tr in self._tracks]
        pairs = sorted(
            (math.hypot(c[0] - p[0], c[1] - p[1]), ti, bi)
            for ti, p in enumerate(predicted)
            for bi, (_, c) in enumerate(blobs)
        )
        used_tracks: set[int] = set()
        used_blobs: set[int] = set()
        for dist, ti, bi in pairs:
            if dist > reach:
                break
            if ti in used_tracks or bi in used_blobs or dist > reaches[ti]:
                continue
            used_tracks.add(ti)
            used_blobs.add(bi)
            track = self._tracks[ti]
            track.box, (cx, cy) = blobs[bi]
            track.history.append((t, cx, cy))
            track.hits += 1
            track.misses = 0
        for ti, track in enumerate(self._tracks):
            if ti not in used_tracks:
                track.misses += 1
        # A track survives a short absence: someone standing still is hidden whenever a passer-by
        # merges with their blob, and must come back as the same track or their dwell time resets.
        self._tracks = [tr for tr in self._tracks if t - tr.history[-1][0] <= self.keep_seconds]
        for bi, (box, (cx, cy)) in enumerate(blobs):
            if bi not in used_blobs:
                track = _Track(self._next_id, box, t)
                track.history.append((t, cx, cy))
                track.hits = 1
                self._next_id += 1
                self._tracks.append(track)
