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

# Clipping (see _saturated): the brightest 0.5% of pixels set the top, and at least 2% of the image
# lies within 3 grey levels of it.
SATURATED_TOP = 0.005
SATURATED_AREA = 0.02
SATURATED_LEVELS = 3
# A top below this is no sensor's white (limited-range video clips at 235, full range at 255).
SATURATED_MIN = 225


def _saturated(gray: np.ndarray) -> np.ndarray | None:
    """Where the image is clipped at its white, or None when it is not.

    Why: gain normalization undoes a change of light, but not for a clipped pixel. As the light
    rises a pale tower fades into a sky that goes white; the background still holds the tower, so
    its pixels stay "foreground" for minutes and read as someone standing there (a false
    loitering seen on normal footage). A clipped pixel says nothing about what is there, so it is
    no motion; a person in front of the sky is darker than it and is still seen.

    Clipping shows as a spike at the top of the histogram: many pixels within a few levels of
    the brightest plateau (the white of limited-range video is 235, not 255; a 3x3 median first,
    so compression's isolated overshoots do not set the top). A scene that is merely bright has
    its brightest pixels spread over many levels.
    """
    smooth = cv2.medianBlur(gray, 3)
    if int(smooth.max()) < SATURATED_MIN:
        return None  # most frames: nothing near a white at all (the check costs ~15 us, the rest ~25)
    counts = cv2.calcHist([smooth], [0], None, [256], [0, 256]).ravel()
    above = np.cumsum(counts[::-1])[::-1]  # above[v]: pixels at v or brighter
    top = int(np.nonzero(above >= SATURATED_TOP * smooth.size)[0][-1])
    if top < SATURATED_MIN or above[max(0, top - SATURATED_LEVELS)] < SATURATED_AREA * smooth.size:
        return None
    return smooth >= top - SATURATED_LEVELS


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
    travel: tuple[float, float] = (0.0, 0.0)  # displacement over the last 1.5 s (frame widths, heights)
    # Fraction of the frames of the last 1.5 s in which it was seen: a flickering speck of noise
    # or of a compression artefact is seen now and then, a person nearly always.
    seen: float = 1.0
    # Seconds since it was last matched (0.0 when seen in this frame; more while it is hidden in a
    # passer-by's blob): its dwell is measured up to then, its age up to now.
    lag: float = 0.0


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
    # Times it was not matched but its predicted place lay inside someone else's blob: hidden by
    # a passer-by it merged with, not gone (a runner passing walkers on their lane).
    merged: deque = field(default_factory=lambda: deque(maxlen=32))

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

    def travel(self, window: float = 1.5) -> tuple[float, float]:
        """Displacement over the last ``window`` seconds (or since first seen, if younger).

        Why not since first seen: when two people cross, a track can pass from one to the other,
        and a runner would inherit the way the walker had come.
        """
        t, x, y = self.history[-1]
        for t0, x0, y0 in self.history:
            if t - t0 <= window + 1e-6:
                return x - x0, y - y0
        return 0.0, 0.0

    def seen(self, t: float, frame_times: deque, window: float = 1.5) -> float:
        """Fraction of the frames of the last ``window`` seconds (since first seen, if younger)
        in which this track was seen, or hidden where a blob it merged with was. Over a window, not
        since first seen: a track that flickered for a while and is then taken over by someone
        running is judged on the runner."""
        since = max(self.first_seen, t - window) - 1e-6
        frames = sum(1 for ft in reversed(frame_times) if ft >= since) if frame_times else 1
        hits = 0
        for t0, _, _ in reversed(self.history):
            if t0 < since:
                break
            hits += 1
        hits += sum(1 for t0 in self.merged if t0 >= since)
        return min(1.0, hits / max(1, frames))

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
        chroma_threshold: float = 20.0,
        frame_interval: float = 0.2,
    ) -> None:
        self.resolution = resolution
        self.history = history
        self.var_threshold = var_threshold
        self.min_area = min_area
        self.dwell_radius = dwell_radius
        self.keep_seconds = keep_seconds
        self.persistence_seconds = persistence_seconds
        self.chroma_threshold = chroma_threshold
        # Seconds between the frames it is meant to see (1 / the detection rate): what the
        # frame-counted parts (the bootstrap, the background's learning rate) are counted on.
        self.frame_interval = frame_interval
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
        self._frames = 0  # frames analysed
        self._clock = 0  # frames of the footage's own clock since the first one (see update)
        self._bootstrapping = True
        self._first_t: float | None = None
        self._last_t: float | None = None
        self.reference: np.ndarray | None = None
        self._persist: np.ndarray | None = None
        self._scene: np.ndarray | None = None  # persistent already at the end of the warm-up
        self._window: np.ndarray | None = None
        self._light: np.ndarray | None = None  # brightness of 4x4 blocks, averaged over the last seconds
        self._relearn_until = -math.inf
        self._chroma_bg: list[np.ndarray] | None = None  # float32 Cb and Cr of the background
        self._chroma_boot: list[np.ndarray] = []
        self._frame_times: deque[float] = deque(maxlen=64)  # times of the last frames analysed
        self._chroma_light = 128.0
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

    @property
    def chroma_resolution(self) -> tuple[int, int]:
        """Colour is judged at half the detection resolution: a camera's colour planes have a
        quarter of its pixels already (4:2:0), and upscaled colour edges would "move" with every
        shake of the camera; it is also four times cheaper."""
        return max(1, self.resolution[0] // 2), max(1, self.resolution[1] // 2)

    def prepare_chroma(self, frame: np.ndarray) -> np.ndarray | None:
        """The colour (Cb, Cr) of a BGR frame at ``chroma_resolution``; None for a grey frame."""
        from mlscale.vision.sources import to_small_chroma

        return to_small_chroma(frame, self.chroma_resolution)

    def update(self, gray: np.ndarray, t: float, learn: bool = True, chroma: np.ndarray | None = None) -> MotionFrame:
        """Analyse one downscaled grey frame taken at ``t`` seconds (and its colour, when known).

        ``learn=False`` keeps the background model as it is (while the lens is covered, so that the
        dark image does not become "the background").
        """
        mean, std = cv2.meanStdDev(gray)
        brightness, texture = float(mean[0, 0]), float(std[0, 0])
        # Compensate global lighting (a gain, as a cloud or a camera's exposure control applies it) so
        # a change of light is not motion everywhere.
        normalized = cv2.convertScaleAbs(gray, alpha=min(4.0, 128.0 / max(brightness, 1.0)))
        # Bootstrap fast (OpenCV's automatic rate) for the first 30 frames, then learn at 1/history
        # per frame: with the automatic rate a young model absorbs someone standing still within
        # seconds, and loitering would go unseen. Frames are counted on the footage's clock, not
        # as they arrive: a frame analysed after two were dropped (a loaded machine) counts as
        # three, so the bootstrap lasts the same seconds (6 s at 5 fps: a longer one, under the
        # warm-up's drops, took in the people the warm-up then learned as its normal) and the
        # background forgets as fast per second at 1 feed and at 64; but never fewer than 10
        # frames analysed, a model of fewer is not mature. Judging every due frame, the clock
        # counts one per frame and all of this is the old arithmetic.
        if self._first_t is None:
            self._first_t = t
        clock = max(self._clock + 1, round((t - self._first_t) / self.frame_interval) + 1)
        step, self._clock = clock - self._clock, clock
        self._frames += 1
        self._bootstrapping = self._clock < 30 or self._frames < 10
        rate = -1.0 if self._bootstrapping else min(0.5, step / self.history)
        dt = 0.2 if self._last_t is None else max(1e-3, t - self._last_t)
        # A sudden change of light (a lamp, a cloud, the camera's exposure): gain normalization does
        # not undo it where the image saturates, so the background is learned again for a moment.
        # Told apart from people arriving by being everywhere: most of a 4x4 grid of blocks
        # changes brightness the same way (a crowd changes a few blocks, a lamp all of them).
        blocks = cv2.resize(gray, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32) + 1.0
        # Compared with the last second only, by 7% at least: a light that flickers or drifts (a
        # few percent a second) is followed by the gain normalization and must not make the
        # background be learned again (it would learn someone standing there along with it).
        if self._light is not None and learn:
            change = blocks / self._light - 1.0
            if max((change > 0.07).mean(), (change < -0.07).mean()) >= 0.75:
                self._relearn_until = t + 1.5
                self._light = blocks
        self._light = blocks if self._light is None else self._light + (blocks - self._light) * min(1.0, dt / 1.0)
        relit = t < self._relearn_until + 1.0
        if learn and t < self._relearn_until:
            rate = 0.2
        mask = self._subtractor.apply(normalized, learningRate=rate if learn else 0.0)
        if not self._bootstrapping:
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
        saturated = _saturated(gray)
        if saturated is not None:
            mask[saturated] = 0
        if chroma is not None:
            # Relative to the brightness when the colour background was learned: a dark scene's
            # colour noise is not amplified, only a change of light undone.
            if self._chroma_bg is None:
                self._chroma_light = brightness
            gain = min(4.0, self._chroma_light / max(brightness, 1.0))
            colour = self._chroma(chroma, gain, 1.0 / self._frames if rate < 0 else rate, learn, mask)
            if colour is not None:
                mask = cv2.bitwise_or(mask, colour)
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
        self._frame_times.append(t)
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
        # A track hidden this frame inside a blob it merged with is still reported, where it should
        # be by now: a runner passing walkers on their lane stays one runner through the overlap.
        views = tuple(self._view(tr, t) for tr in self._tracks if tr.misses == 0 or (tr.merged and tr.merged[-1] == t))
        return MotionFrame(t, fg_fraction, texture, brightness, views, shift, stationary, relit)

    def _view(self, tr: _Track, t: float) -> TrackView:
        center, box = tr.center(), tr.box
        if tr.misses:
            (px, py), (cx, cy) = tr.predict(t), center
            center, box = (px, py), (box[0] + px - cx, box[1] + py - cy, box[2] + px - cx, box[3] + py - cy)
        return TrackView(
            id=tr.id,
            box=box,
            center=center,
            velocity=tr.velocity(),
            age=t - tr.first_seen,
            hits=tr.hits,
            dwell=tr.dwell(self.dwell_radius),
            travel=tr.travel(),
            seen=tr.seen(t, self._frame_times),
            lag=t - tr.history[-1][0],
        )

    def _chroma(
        self, chroma: np.ndarray, gain: float, rate: float, learn: bool, grey_mask: np.ndarray
    ) -> np.ndarray | None:
        """Foreground by colour: pixels whose Cb or Cr is off the background's by ``chroma_threshold``
        at every point of their 3x3 neighbourhood (as for grey: a shaking camera moves colour edges
        too). A gain of the light scales colour about neutral grey (128) as it scales brightness:
        undone with the same gain as the grey image.

        Why a running average and not a second MOG2: two channels at a quarter of the cost, and
        colour only adds what grey missed (someone as bright as what is behind them).
        """
        # Per plane, in uint8 OpenCV calls: a few microseconds each at the detection resolution.
        current = [cv2.convertScaleAbs(p, alpha=gain, beta=128.0 * (1.0 - gain)) for p in cv2.split(chroma)]
        if self._chroma_bg is None:
            # Bootstrapped as the per-pixel median of frames of the first seconds: an average would
            # keep a ghost of everyone who passed meanwhile, and the update below (only where
            # nobody is seen) would never remove it.
            if self._frames % 2 == 0 and learn:
                self._chroma_boot.append(np.dstack(current))
            if not self._bootstrapping and self._chroma_boot:
                median = np.median(np.stack(self._chroma_boot), axis=0).astype(np.float32)
                self._chroma_bg = [np.ascontiguousarray(median[:, :, i]) for i in range(median.shape[2])]
                self._chroma_boot = []
            return None
        found = None
        if not self._bootstrapping:
            found = np.zeros(current[0].shape, np.uint8)
            for plane, background in zip(current, self._chroma_bg, strict=True):
                bg = cv2.convertScaleAbs(background)
                low = cv2.subtract(cv2.erode(bg, self._kernel), self.chroma_threshold)
                high = cv2.add(cv2.dilate(bg, self._kernel), self.chroma_threshold)
                found = cv2.bitwise_or(found, cv2.compare(plane, low, cv2.CMP_LT))
                found = cv2.bitwise_or(found, cv2.compare(plane, high, cv2.CMP_GT))
        size = current[0].shape[::-1]
        if learn:
            # Once bootstrapped, learned only where nobody is seen (in grey or in colour): a plain
            # running average would take in the colours of everyone passing by.
            keep = None
            if found is not None:
                seen = (
                    cv2.resize(grey_mask, size, interpolation=cv2.INTER_AREA)
                    if grey_mask.shape != found.shape
                    else grey_mask
                )
                keep = cv2.compare(cv2.bitwise_or(seen, found), 0, cv2.CMP_EQ)
            for plane, background in zip(current, self._chroma_bg, strict=True):
                cv2.accumulateWeighted(plane, background, rate, keep)
        if found is not None and found.shape != grey_mask.shape:
            found = cv2.resize(found, grey_mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        return found

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
        # Where someone is walking through right now (or has just appeared, and where they go is
        # not known yet), persistence is left as it is: on a busy path one passer-by follows
        # another over the same pixels, foreground nearly all the time, and that is a stream of
        # people, not someone staying. A stander's own track soon shows it does not travel.
        w, h = self.resolution
        hold = None
        for tr in self._tracks:
            young = tr.history[-1][0] - tr.first_seen < self.keep_seconds
            if tr.misses == 0 and (young or math.hypot(*tr.travel()) > self.dwell_radius):
                if hold is None:
                    hold = np.full(mask.shape, 255, np.uint8)
                x0, y0, x1, y1 = tr.box
                # Widened as the mask is below (its 5x5 dilation reaches 2 pixels further).
                top, left = max(0, int(y0 * h) - 2), max(0, int(x0 * w) - 2)
                hold[top : math.ceil(y1 * h) + 2, left : math.ceil(x1 * w) + 2] = 0
        # Widened first: someone shifting their weight sways a few pixels, and each pixel at their
        # edge would otherwise be foreground only part of the time.
        cv2.accumulateWeighted(cv2.dilate(mask, self._sway), self._persist, alpha, hold)
        level = self._persist  # mask is 0/255, so full persistence is 255
        hot = cv2.compare(level, 0.8 * 255.0, cv2.CMP_GT)
        if self._scene is not None:
            self._scene[level < 0.1 * 255] = 0  # gone: watched again from now on
            hot[self._scene > 0] = 0
        count, _, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
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
        # near where it should be now, within a margin that grows with how far it moved since last
        # seen (its speed over the gap, capped): a runner hidden while merged with a walker it
        # passes is found again further on, while a slow walker's track is not handed to the next
        # walker on the lane a tenth of the frame away.
        reaches = []
        for tr in self._tracks:
            gap = min(max(dt, t - tr.history[-1][0]), 0.6)
            v = tr.velocity() if len(tr.history) > 1 else None
            if v is None:
                reaches.append(max(0.06, 0.6 * gap) if len(tr.history) < 2 else max(0.04, 0.3 * gap))
            else:
                reaches.append(0.04 + 0.5 * math.hypot(*v) * gap)
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
                # Flicker leaves nothing where the track should be; a merge leaves a bigger blob.
                px, py = predicted[ti]
                if any(x0 <= px <= x1 and y0 <= py <= y1 for (x0, y0, x1, y1), _ in blobs):
                    track.merged.append(t)
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
