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


def _moving(tracks: Sequence[TrackView], min_hits: int = 3) -> list[TrackView]:
    return [tr for tr in tracks if tr.hits >= min_hits and tr.velocity is not None]


class ActivityModel:
    """Per-camera model of normal activity, learned from warm-up frames and kept up to date after.

    Learned state (scikit-learn style, trailing underscore): the usual number of moving objects and
    the usual moving fraction of the image (mean and spread), the usual direction of motion (the
    flow, when people mostly move one way), the usual walking speeds, the usual image texture.

    Why no per-place model ("nobody was ever seen here"): a warm-up of seconds sees a handful of
    people, and every ordinary walker on a path it did not happen to see would be flagged. Places
    that matter are written as zones; the learned model judges how many, which way and how fast.
    """

    def __init__(self, adapt_seconds: float = 120.0, smooth_seconds: float = 1.0):
        # After the warm-up the normal counts follow the scene (the morning rush, an empty evening)
        # with this time constant, learning only from frames where nothing looked abnormal.
        self.adapt_seconds = adapt_seconds
        # The crowd is judged on the median of the last second: one frame's flicker is no crowd.
        self.smooth_seconds = smooth_seconds
        self._recent: deque[tuple[float, float, int]] = deque()

    def fit(self, frames: Sequence[MotionFrame]) -> ActivityModel:
        if not frames:
            raise ValueError("ActivityModel.fit needs at least one warm-up frame")
        objects = np.array([len(_moving(f.tracks, 1)) for f in frames], float)
        fg = np.array([f.fg_fraction for f in frames])
        self.objects_mean_, self.objects_var_ = float(objects.mean()), float(objects.var())
        self.fg_mean_, self.fg_var_ = float(fg.mean()), float(fg.var())
        self.texture_mean_ = float(np.mean([f.texture for f in frames]))
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
        return self

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

    def score(self, frame: MotionFrame) -> list[Finding]:
        findings = []
        ratio = frame.texture / max(self.texture_mean_, 1e-6)
        covered = (1.0 - ratio) / 0.65
        if covered > 0.3:
            findings.append(Finding("camera_covered", covered))
        if frame.shift is not None and covered < 1.0:
            # A view shifted by 4% of the frame or more: shake, lighting drift and people passing
            # move the correlation peak by up to ~2-3% on real footage.
            findings.append(Finding("camera_moved", frame.shift / 0.04))
        if covered >= 1.0 or (frame.shift is not None and frame.shift >= 0.04):
            return findings  # motion means nothing while the view itself is broken
        moving = _moving(frame.tracks, 1)
        self._recent.append((frame.t, frame.fg_fraction, len(moving)))
        while frame.t - self._recent[0][0] > self.smooth_seconds:
            self._recent.popleft()
        fg = float(np.median([r[1] for r in self._recent]))
        count = float(np.median([r[2] for r in self._recent]))
        # A crowd: the moving area (people, not a change of light: that is told apart first) at
        # least triples, beyond the usual spread, and by 3% of the image at least (in a quiet scene a
        # handful of walkers is no crowd). A busy moment of ordinary traffic doubles the area.
        # The count of blobs only backs it up: people in a crowd merge into few blobs.
        fg_excess = (fg - self.fg_mean_) / max(2.0 * self.fg_mean_, 4.0 * math.sqrt(self.fg_var_), 0.03)
        count_excess = (count - self.objects_mean_) / max(
            2.0 * self.objects_mean_, 4.0 * math.sqrt(self.objects_var_), 6.0
        )
        crowd = max(fg_excess, count_excess) if fg_excess > 0.5 else fg_excess
        if frame.relit or frame.fg_fraction > 0.45 or covered > 0.3:
            crowd = min(crowd, 0.0)  # the whole view changed: not people
        if crowd > 0.3:
            findings.append(Finding("crowd", crowd))
        for tr in _moving(frame.tracks, 3):
            speed = math.hypot(*tr.velocity)
            usual = self.speed_ if self.speed_ is not None else 0.1
            if speed < max(0.5 * usual, 0.03) or tr.box[0] <= 0.01 or tr.box[2] >= 0.99:
                continue  # too slow to judge, or half out of the frame (its centre slides)
            if self.flow_ is not None:
                cos = (tr.velocity[0] * self.flow_[0] + tr.velocity[1] * self.flow_[1]) / speed
                # Against the flow now, and has gone a good way against it: a blob that merges with
                # a passer-by makes its centre jump back for a moment, and that is no one.
                back = -(tr.travel[0] * self.flow_[0] + tr.travel[1] * self.flow_[1])
                if cos < -0.5 and back > 0.05 and back > 0.5 * usual * max(tr.age, 0.2):
                    # Walking straight against the flow scores 1.0; running against it, more.
                    findings.append(Finding("wrong_way", -cos * (0.6 + 0.4 * speed / usual), tr.box))
            # Someone merely faster than usual along the flow is not an anomaly by itself (a
            # jogger); without a learned flow, direction is judged only by a configured ``flow``.
        return findings


class RuleDetector:
    """Zones and rules from the config: restricted zones, expected flow, loitering, crowd size."""

    def __init__(self, zones: Sequence[ZoneSettings] = (), rules: RuleSettings | None = None):
        self.zones = list(zones)
        self.rules = rules or RuleSettings()

    def fit(self, frames: Sequence[MotionFrame]) -> RuleDetector:
        return self  # rules are written, not learned

    def score(self, frame: MotionFrame) -> list[Finding]:
        findings = []
        tracks = [tr for tr in frame.tracks if tr.hits >= 2]
        for tr in tracks:
            x, y = tr.center
            for zone in self.zones:
                x0, y0, x1, y1 = zone.box
                if zone.kind == "restricted" and x0 <= x <= x1 and y0 <= y <= y1:
                    findings.append(Finding("restricted_zone", 2.0, tr.box))
            if self.rules.loiter_seconds > 0 and tr.dwell > 0.25 * self.rules.loiter_seconds:
                findings.append(Finding("loitering", tr.dwell / self.rules.loiter_seconds, tr.box))
            flow = self.rules.flow
            if flow is not None and tr.velocity is not None:
                speed = math.hypot(*tr.velocity)
                norm = math.hypot(*flow) or 1.0
                cos = (tr.velocity[0] * flow[0] + tr.velocity[1] * flow[1]) / (norm * max(speed, 1e-9))
                if speed > 0.08 and cos < -0.5:
                    findings.append(Finding("wrong_way", 1.5, tr.box))
        if self.rules.loiter_seconds > 0:
            for box, level in frame.stationary:
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
