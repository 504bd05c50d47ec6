"""Detectors: each follows scikit-learn's verbs, ``fit(frames)`` during the warm-up, then
``score(frame) -> findings``; a finding's score is scaled so that 1.0 is the anomaly boundary.

- ActivityModel learns what normal looks like on this camera (per-zone presence and velocity, how
  many objects, how much of the image moves, how textured the image is) and scores distance from it.
- RuleDetector applies the zones and rules written in the config (no learning: fit is a no-op).
- OnnxScorer is the hook for a learned model: a batch of frames in, one score per frame out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlscale.vision.motion import MotionFrame, TrackView
from mlscale.vision.settings import RuleSettings, ZoneSettings


@dataclass(frozen=True)
class Finding:
    """One reason a frame looks abnormal."""

    kind: str
    score: float
    box: tuple[float, float, float, float] | None = None


# Share of recent frames a track must have been seen in (or hidden in a merge) for its direction
# to be judged: see ActivityModel.score.
STEADY = 0.7
# Or seen without a break for this long (see RecentPaths.steady).
UNBROKEN = 0.6


def _whole_in_view(box: tuple[float, float, float, float]) -> bool:
    """Not against the left or right edge of the view (where people walk in and out)."""
    return box[0] > 0.01 and box[2] < 0.99


def _moving(tracks: Sequence[TrackView], min_hits: int = 3) -> list[TrackView]:
    return [tr for tr in tracks if tr.hits >= min_hits and tr.velocity is not None]


# Seconds of a track's path that tell which way it goes lately (see RecentPaths).
RECENT_PATH = 0.4

# The crowd's "now" is a median of at least this many frames judged (see ActivityModel._crowd_score).
SMOOTH_FRAMES = 3

# The most footage time one judged frame stands for in the scene's levels: a frame judged after a
# long pause (frames dropped under load, the view broken) is not minutes of the scene.
MAX_FRAME_WEIGHT = 1.0


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The median of each column of ``values`` (n, k), each row counting ``weights`` (n,).

    Why weights: a median over frames counts how many frames were judged, and a loaded machine
    judges fewer of them. Each frame stands for the footage time since the frame judged before it,
    so the levels are medians over time and the same clip gives the same crowd at 1 feed and at 64
    (a median over frames let the warm-up's frames outweigh half as many judged after it, and a
    busy scene read as a crowd under frame drops). With equal weights this is numpy's median exactly
    (the mean of the middle two of an even count).
    """
    order = np.argsort(values, axis=0, kind="stable")
    out = np.empty(values.shape[1])
    total = float(weights.sum())
    for j in range(values.shape[1]):
        column = values[order[:, j], j]
        below = np.cumsum(weights[order[:, j]])
        k = int(np.searchsorted(below, 0.5 * total - 1e-9 * total))
        tie = abs(below[k] - 0.5 * total) <= 1e-9 * total and k + 1 < len(column)
        out[j] = 0.5 * (column[k] + column[k + 1]) if tie else column[k]
    return out


class RecentPaths:
    """Each track's centres over the last ``RECENT_PATH`` seconds: which way it went lately.

    Why: a track's velocity is measured over 0.8 s, and when a track passes from one walker to
    another merged with it, its centre jumps back once and the velocity points against the flow for
    0.8 s although both walkers go with it; over the last 0.4 s only the new walker's own way shows.
    A runner goes against the flow in every part of its path. Shared by the learned flow
    (ActivityModel) and a configured one (RuleDetector), so both judge direction alike.
    """

    def __init__(self) -> None:
        self._paths: dict[int, deque[tuple[float, float, float]]] = {}
        self._since: dict[int, float] = {}
        self._last_t: float | None = None

    def follow(self, frame: MotionFrame) -> None:
        """Add each track's centre to its recent path; forget the tracks that are gone.

        The path spans ``RECENT_PATH`` seconds, or back to the frame before when that is further
        (dropped under load): otherwise it would hold one point and no direction at all.
        (Keeping a missing track's path a moment, for a small runner found in every other frame,
        added a false wrong_way and a wrong kind on held-out footage: docs/benchmarks.md.)"""
        spacing = frame.t - self._last_t if self._last_t is not None else 0.0
        self._last_t = frame.t
        window = max(RECENT_PATH, spacing)
        paths, since = {}, {}
        for tr in frame.tracks:
            path = self._paths.get(tr.id) or deque()
            path.append((frame.t, *tr.center))
            while frame.t - path[0][0] > window + 1e-6:
                path.popleft()
            paths[tr.id] = path
            # Reported in the frame judged before (seen, or hidden in a merge): the run goes on.
            since[tr.id] = self._since.get(tr.id, frame.t) if tr.id in self._paths else frame.t
        self._paths, self._since = paths, since

    def steady(self, track: TrackView, t: float) -> bool:
        """Seen in most recent frames (``STEADY``), or in every frame judged for ``UNBROKEN`` s.

        Why both: a track born at the edge of the view from a few frames of flicker before the
        person was wholly in it (a runner entering) is then seen in every frame, yet its share over
        1.5 s reaches ``STEADY`` only a second later; flicker is never seen in every frame that long.
        """
        if track.seen >= STEADY:
            return True
        return track.id in self._since and t - self._since[track.id] >= UNBROKEN - 1e-6

    def back(self, track: int, flow: tuple[float, float], usual: float) -> float:
        """How far (frame widths) the track went against the unit vector ``flow`` over the last
        ``RECENT_PATH`` seconds, less a quarter of the ``usual`` walking distance in that time
        (positive: it still goes against the flow; 0.0 while its recent path is too short)."""
        path = self._paths.get(track)
        if not path or path[-1][0] - path[0][0] < 0.5 * RECENT_PATH:
            return 0.0
        (t0, x0, y0), (t1, x1, y1) = path[0], path[-1]
        back = -((x1 - x0) * flow[0] + (y1 - y0) * flow[1])
        return back - 0.25 * usual * (t1 - t0)


class ActivityModel:
    """Per-camera model of normal activity, learned from warm-up frames and kept up to date after.

    Learned state (scikit-learn style, trailing underscore): the usual number of moving objects and
    the usual moving fraction of the image (mean and spread), the usual direction of motion (the
    flow, when people mostly move one way), the usual walking speeds, the usual image texture.

    Why no per-place model ("nobody was ever seen here"): a warm-up of seconds sees a handful of
    people, and every ordinary walker on a path it did not happen to see would be flagged. Places
    that matter are written as zones; the learned model judges how many, which way and how fast.
    """

    def __init__(
        self,
        adapt_seconds: float = 120.0,
        smooth_seconds: float = 0.6,
        level_seconds: float = 120.0,
        crowd_z: float = 3.0,
        crowd_ratio: float = 2.0,
        crowd_min_area: float = 0.02,
        crowd_min_objects: float = 4.0,
        before: tuple[float, float] = (6.0, 2.0),
        crowd_min_gathering: float = 3.0,
    ):
        # After the warm-up the normal counts follow the scene (the morning rush, an empty evening)
        # with this time constant, learning only from frames where nothing looked abnormal.
        self.adapt_seconds = adapt_seconds
        # The crowd is judged on the median of the last ``smooth_seconds`` (three frames at 5 fps):
        # one frame's flicker is no crowd, and a longer median only makes a crowd seen later.
        self.smooth_seconds = smooth_seconds
        self.level_seconds = level_seconds
        # A crowd: the moving area rises above what the scene had a moment ago (``before``: the
        # median of t-6 s .. t-2 s) by ``crowd_z`` times the scene's own spread, to at least
        # ``crowd_ratio`` times its usual level, and by ``crowd_min_area`` of the image at least;
        # or the number of moving objects rises so, by ``crowd_min_objects`` at least.
        self.crowd_z = crowd_z
        self.crowd_ratio = crowd_ratio
        self.crowd_min_area = crowd_min_area
        self.crowd_min_objects = crowd_min_objects
        self.before = before
        # And some of the new people linger: at least ``crowd_min_gathering`` more tracks than a
        # moment ago move at under half the usual walking speed (see _lingerers).
        self.crowd_min_gathering = crowd_min_gathering
        # (t, moving area, moving objects, lingering objects, footage seconds the frame stands for)
        self._recent: deque[tuple[float, float, int, int, float]] = deque()
        self._paths = RecentPaths()
        self._levels: deque[tuple[float, float, int, float]] = deque()
        self._prev_t: float | None = None  # the frame judged last
        # ((area base, area boundary), (count base, count boundary)) while a crowd is there
        self._crowd: tuple[tuple[float, float], tuple[float, float]] | None = None

    def fit(self, frames: Sequence[MotionFrame]) -> ActivityModel:
        if not frames:
            raise ValueError("ActivityModel.fit needs at least one warm-up frame")
        objects = np.array([len(_moving(f.tracks, 1)) for f in frames], float)
        fg = np.array([f.fg_fraction for f in frames])
        self.objects_mean_, self.objects_var_ = float(objects.mean()), float(objects.var())
        self.fg_mean_, self.fg_var_ = float(fg.mean()), float(fg.var())
        self.texture_mean_ = float(np.mean([f.texture for f in frames]))
        self.brightness_mean_ = float(np.mean([f.brightness for f in frames]))
        velocities = np.array([tr.velocity for f in frames for tr in _moving(f.tracks, 3)], float).reshape(-1, 2)
        speeds = np.hypot(velocities[:, 0], velocities[:, 1])
        moving = speeds > 0.015
        self.speed_ = float(np.percentile(speeds[moving], 75)) if moving.sum() >= 5 else None
        self.flow_ = None
        if moving.sum() >= 5:
            units = velocities[moving] / speeds[moving, None]
            mean = units.mean(axis=0)
            # A flow only when most motion shares one direction (a corridor, a one-way path).
            if float(np.hypot(*mean)) > 0.6:
                self.flow_ = tuple(float(v) for v in mean / np.hypot(*mean))
        self._last_t = frames[-1].t
        # The level of activity of the last ``level_seconds`` (medians of every frame, warm-up
        # included): what a crowd is measured against. Why not only the warm-up: a warm-up of
        # seconds may catch a quiet moment or a busy one, and every later hour would be judged
        # against it; a median of minutes follows the scene and a crowd of seconds barely moves it.
        # Each frame weighs the seconds since the one before; the first, a typical step.
        steps = np.diff([f.t for f in frames])
        weights = [float(np.median(steps)) if len(steps) else 0.2, *(float(s) for s in steps)]
        rows = [
            (f.t, f.fg_fraction, len(_moving(f.tracks, 1)), min(w, MAX_FRAME_WEIGHT))
            for f, w in zip(frames, weights, strict=True)
        ]
        self._levels = deque(rows)
        self._prev_t = frames[-1].t
        self._level_at = -math.inf
        self._refresh_level(frames[-1].t)
        lingering = [self._lingerers(_moving(f.tracks, 1)) for f in frames]
        self._recent = deque((ti, fg, n, k, w) for (ti, fg, n, w), k in zip(rows, lingering, strict=True))
        self._crowd = None
        return self

    def _lingerers(self, moving: Sequence[TrackView]) -> int:
        """How many of the moving tracks go at under half the usual walking speed.

        Why: walkers arrive as a random stream, and at times four in view become a dozen within
        seconds, a burst that the area and the count both read as a crowd (most false crowds on
        normal footage were such bursts). People passing through keep walking; a crowd gathers,
        and whoever joins it slows down."""
        usual = self.speed_ if self.speed_ is not None else 0.1
        return sum(1 for tr in moving if math.hypot(*tr.velocity) < 0.5 * usual)

    def _refresh_level(self, t: float) -> None:
        while self._levels and t - self._levels[0][0] > self.level_seconds:
            self._levels.popleft()
        if self._levels:
            values = np.array([(fg, n) for _, fg, n, _ in self._levels], float)
            weights = np.array([w for *_, w in self._levels], float)
            self.fg_level_, self.objects_level_ = (float(v) for v in _weighted_median(values, weights))
        self._level_at = t

    def adapt(self, frame: MotionFrame) -> None:
        """Fold a frame judged normal into the normal counts (exponential, ``adapt_seconds``)."""
        dt = max(0.0, frame.t - self._last_t)
        self._last_t = frame.t
        a = min(1.0, dt / self.adapt_seconds)
        objects = len(_moving(frame.tracks, 1))
        for name, x in (("objects", objects), ("fg", frame.fg_fraction)):
            mean, var = getattr(self, f"{name}_mean_"), getattr(self, f"{name}_var_")
            diff = x - mean
            setattr(self, f"{name}_mean_", mean + a * diff)
            setattr(self, f"{name}_var_", (1 - a) * (var + a * diff * diff))

    def _covered(self, frame: MotionFrame) -> float:
        """How far the image lost its texture towards a covered lens (1.0: covered).

        The texture expected now follows the light: a cloud or a lamp scales the image, its
        standard deviation with it, and 15% less light is not 15% of a hand over the lens. Only
        changes a light could make (0.6x to 1.5x) are undone; a hand makes the image far darker still.
        """
        light = min(1.5, max(0.6, frame.brightness / max(self.brightness_mean_, 1e-6)))
        ratio = frame.texture / max(self.texture_mean_ * light, 1e-6)
        return (1.0 - ratio) / 0.65

    def _crowd_score(self, frame: MotionFrame) -> float:
        """How far the scene stands above its normal number of people (1.0: a crowd).

        Two measures, the larger wins: the moving area and the number of moving objects. Why both:
        the area weighs people by their size in the image, so a crowd far from the camera barely
        moves it next to a few walkers near it; the count weighs everyone alike, but people who
        stand together merge into one blob. Each is judged the same way.

        Why a rise against the last seconds, measured in the scene's own spread: the number of
        people in view of a busy scene wanders (a few walkers near the camera at once double the
        moving area) but slowly, as people walk in and out; a crowd adds many at once. The spread is
        that of a count of people: the level over the square root of the usual number of objects
        (a Poisson count's relative spread), or the spread learned from calm frames, whichever is
        larger. The rise must also at least double the usual level, so a quiet scene's few
        walkers are no crowd. Once a crowd is there it is measured against the scene before it,
        until most of it has gone: one crowd, one incident, and its people are not loiterers.
        """
        t = frame.t
        # The last ``smooth_seconds``, and at least the last three frames judged: under frame drops
        # 0.6 s holds one or two frames, and one frame's flicker would be a crowd.
        recent = list(self._recent)
        window = [row[1:] for row in recent if t - row[0] <= self.smooth_seconds + 1e-6]
        if len(window) < SMOOTH_FRAMES:
            window = [row[1:] for row in recent[-SMOOTH_FRAMES:]]
        older = [row[1:] for row in recent if self.before[1] <= t - row[0] <= self.before[0]]
        now = np.array(window, float)
        now_area, now_count, now_lingering = (float(v) for v in _weighted_median(now[:, :3], now[:, 3]))
        if older:
            past = np.array(older, float)
            before_area, before_count, before_lingering = (float(v) for v in _weighted_median(past[:, :3], past[:, 3]))
        else:
            before_area, before_count, before_lingering = self.fg_level_, self.objects_level_, 0.0
        base_area, base_count = max(before_area, self.fg_level_), max(before_count, self.objects_level_)
        objects = max(self.objects_level_, 1.0)
        # A level learned from a few seconds is itself uncertain: the people in view change about
        # once per crossing of the view at the usual speed, so seconds of footage hold few
        # independent looks at it. The spread is widened by that uncertainty (it fades as minutes
        # are seen): a warm-up that caught a quiet moment does not make ordinary traffic a crowd.
        renewal = 1.0 / max(self.speed_, 0.02) if self.speed_ is not None else 20.0
        seen = max(self._levels[-1][0] - self._levels[0][0], 1.0) if self._levels else 1.0
        widen = math.sqrt(1.0 + renewal / seen)
        spread_area = max(self.fg_level_ / math.sqrt(objects), math.sqrt(self.fg_var_)) * widen
        # The count's spread is a Poisson count's, or the one learned from calm frames when larger:
        # a walker's blob splits and merges with others, and the tracked count wanders more than the
        # people in view (as the area's spread already was; a false crowd on normal footage).
        spread_count = max(math.sqrt(objects), math.sqrt(self.objects_var_)) * widen
        bound_area = max(self.crowd_z * spread_area, self.crowd_ratio * self.fg_level_ - base_area, self.crowd_min_area)
        bound_count = max(
            self.crowd_z * spread_count, self.crowd_ratio * self.objects_level_ - base_count, self.crowd_min_objects
        )
        crowd = max((now_area - base_area) / bound_area, (now_count - base_count) / bound_count)
        gathering = now_lingering - before_lingering  # more tracks linger now than a moment ago
        if self._crowd is None and crowd >= 1.0 and gathering < self.crowd_min_gathering:
            crowd = min(crowd, 0.9)  # a burst of people passing through, not a crowd
        if self._crowd is not None:
            held_area, held_count = self._crowd
            crowd = max(crowd, (now_area - held_area[0]) / held_area[1], (now_count - held_count[0]) / held_count[1])
            if crowd < 0.5:
                self._crowd = None
        elif crowd >= 1.0:
            self._crowd = ((base_area, bound_area), (base_count, bound_count))
        return crowd

    def score(self, frame: MotionFrame) -> list[Finding]:
        findings = []
        # The footage time this frame stands for: since the frame judged before it.
        weight = min(frame.t - self._prev_t, MAX_FRAME_WEIGHT) if self._prev_t is not None else 0.2
        self._prev_t = frame.t
        covered = self._covered(frame)
        if covered > 0.3:
            findings.append(Finding("camera_covered", covered))
        if frame.shift is not None and covered < 1.0:
            # A view shifted by 4% of the frame or more: shake, lighting drift and people passing
            # move the correlation peak by up to ~2-3% on real footage.
            findings.append(Finding("camera_moved", frame.shift / 0.04))
        if covered >= 1.0 or (frame.shift is not None and frame.shift >= 0.04):
            return findings  # motion means nothing while the view itself is broken
        moving = _moving(frame.tracks, 1)
        self._recent.append((frame.t, frame.fg_fraction, len(moving), self._lingerers(moving), weight))
        if not frame.relit:
            self._levels.append((frame.t, frame.fg_fraction, len(moving), weight))
        if frame.t - self._level_at >= 1.0:  # a median of minutes, refreshed once a second
            self._refresh_level(frame.t)
        while frame.t - self._recent[0][0] > max(self.before[0], self.smooth_seconds):
            self._recent.popleft()
        crowd = self._crowd_score(frame)
        if frame.relit or frame.fg_fraction > 0.45 or covered > 0.5:
            crowd = min(crowd, 0.0)  # the whole view changed (light, a hand coming): not people
            self._crowd = None
        if crowd > 0.3:
            findings.append(Finding("crowd", crowd))
        if covered > 0.3 or frame.fg_fraction > 0.45:
            return findings  # something is coming over the lens, or the whole view changed: no one walks
        if self.flow_ is None:
            # Someone merely faster than usual is not an anomaly by itself (a jogger); without a
            # learned flow, direction is judged only by a configured ``flow`` (RuleDetector).
            return findings
        self._paths.follow(frame)
        usual = self.speed_ if self.speed_ is not None else 0.1
        for tr in _moving(frame.tracks, 3):
            speed = math.hypot(*tr.velocity)
            # Only a steady track is judged: one seen (or hidden inside a blob it merged with) in
            # most frames of the last 1.5 s, or in every frame for 0.6 s. A track of flicker, of a
            # compression artefact, or of blobs that split and merge while the background is
            # learned again after a change of light is seen every other frame, and hops.
            if speed < max(0.5 * usual, 0.03) or not _whole_in_view(tr.box) or not self._paths.steady(tr, frame.t):
                continue  # too slow to judge, half out of the frame (its centre slides), or flicker
            cos = (tr.velocity[0] * self.flow_[0] + tr.velocity[1] * self.flow_[1]) / speed
            # Against the flow now, and has gone a good way against it: a blob that merges with
            # a passer-by makes its centre jump back for a moment, and that is no one.
            back = -(tr.travel[0] * self.flow_[0] + tr.travel[1] * self.flow_[1])
            if (
                cos < -0.5
                and back > 0.05
                and back > 0.5 * usual * min(max(tr.age, 0.2), 1.5)
                and self._paths.back(tr.id, self.flow_, usual) > 0.0
            ):
                # Walking straight against the flow scores 1.0; running against it, more.
                findings.append(Finding("wrong_way", -cos * (0.6 + 0.4 * speed / usual), tr.box))
        return findings


# Slower than this (frame widths per second), a track is not judged against a configured flow.
RULE_MIN_SPEED = 0.08


class RuleDetector:
    """Zones and rules from the config: restricted zones, expected flow, loitering, crowd size."""

    def __init__(self, zones: Sequence[ZoneSettings] = (), rules: RuleSettings | None = None):
        self.zones = list(zones)
        self.rules = rules or RuleSettings()
        self._paths = RecentPaths()

    def fit(self, frames: Sequence[MotionFrame]) -> RuleDetector:
        return self  # rules are written, not learned

    def score(self, frame: MotionFrame) -> list[Finding]:
        findings = []
        tracks = [tr for tr in frame.tracks if tr.hits >= 2]
        flow = self.rules.flow
        norm = math.hypot(*flow) if flow is not None else 0.0
        if norm:
            self._paths.follow(frame)
        for tr in tracks:
            x, y = tr.center
            for zone in self.zones:
                x0, y0, x1, y1 = zone.box
                if zone.kind == "restricted" and x0 <= x <= x1 and y0 <= y <= y1:
                    findings.append(Finding("restricted_zone", 2.0, tr.box))
            # Someone who came and stayed: the track was seen elsewhere before it stopped. A speck
            # that flickers in one place from the moment it appears (a glint, a compression
            # artefact on a textured wall) has stayed since birth, and that is no one.
            # Both measured up to when it was last matched: a speck hidden a second in a passer-by's
            # blob had aged a second more than it had dwelt, and "arrived" (a false loitering).
            arrived = tr.age - tr.lag >= tr.dwell + 1.0
            # Half out of the frame, a blob's centre barely moves whatever the person does (one
            # walking out of the view shrinks in place): judged once it is whole in the view.
            whole = _whole_in_view(tr.box)
            loiter = self.rules.loiter_seconds
            if loiter > 0 and tr.dwell > 0.25 * loiter and tr.seen >= 0.5 and arrived and whole:
                findings.append(Finding("loitering", tr.dwell / self.rules.loiter_seconds, tr.box))
            if norm and tr.velocity is not None and tr.hits >= 3 and self._paths.steady(tr, frame.t):
                speed = math.hypot(*tr.velocity)
                unit = (flow[0] / norm, flow[1] / norm)
                cos = (tr.velocity[0] * unit[0] + tr.velocity[1] * unit[1]) / max(speed, 1e-9)
                # Gone a good way against the flow too, as for the learned flow: a new blob's centre
                # jumps as it merges and splits, and that is no one walking; and still going
                # against it lately (a track handed from one walker to another jumps back once).
                back = -(tr.travel[0] * unit[0] + tr.travel[1] * unit[1])
                if (
                    speed > RULE_MIN_SPEED
                    and cos < -0.5
                    and back > 0.05
                    and self._paths.back(tr.id, unit, RULE_MIN_SPEED) > 0.0
                ):
                    findings.append(Finding("wrong_way", 1.5, tr.box))
        if self.rules.loiter_seconds > 0:
            for box, level in frame.stationary:
                if not _whole_in_view(box):
                    # Against the edge of the view, as a track half out of it: the pixels a shaking
                    # camera fills in at its border (and someone half out of view) stay foreground
                    # there; no one is judged standing until whole in the view.
                    continue
                # Persistence level back to seconds of presence: level = 1 - exp(-s / T), T = L / ln 5.
                seconds = -math.log(max(1e-3, 1.0 - min(level, 0.999))) * self.rules.loiter_seconds / math.log(5.0)
                findings.append(Finding("loitering", seconds / self.rules.loiter_seconds, box))
        if self.rules.max_objects and len(tracks) > self.rules.max_objects:
            findings.append(Finding("crowd", 1.5))
        return findings


class OnnxScorer:
    """A learned model as an extra detector: (N, 1, H, W) float32 frames in 0..1 -> (N,) scores.

    The session is created once; scoring a batch of frames from many cameras is one call.
    """

    def __init__(self, path: str):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for missing or broken files
            from mlscale.errors import ConfigError

            raise ConfigError(f"cannot load ONNX model {path!r}: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def fit(self, frames: Sequence[MotionFrame]) -> OnnxScorer:
        return self

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: batch})[:1]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)[:, 0]
