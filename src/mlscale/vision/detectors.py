"""Detectors: each follows scikit-learn's verbs, ``fit(frames)`` during the warm-up, then
``score(frame) -> findings``; a finding's score is scaled so that 1.0 is the anomaly boundary.

- ActivityModel learns what normal looks like on this camera (per-zone presence and velocity, how
  many objects, how much of the image moves, how textured the image is) and scores distance from it.
- RuleDetector applies the zones and rules written in the config (no learning: fit is a no-op).
- OnnxScorer is the hook for a learned model: a batch of frames in, one score per frame out.
"""

from __future__ import annotations

import math
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


def _cell(center: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    gx, gy = grid
    return min(gy - 1, max(0, int(center[1] * gy))), min(gx - 1, max(0, int(center[0] * gx)))


def _moving(tracks: Sequence[TrackView], min_hits: int = 3) -> list[TrackView]:
    return [tr for tr in tracks if tr.hits >= min_hits and tr.velocity is not None]


class ActivityModel:
    """Per-camera model of normal activity, learned from warm-up frames.

    Learned state (scikit-learn style, trailing underscore): per grid cell, how often objects were
    seen there and the mean/covariance of their velocity; per frame, the mean/std of the number of
    objects and of the moving fraction; the usual image texture.
    """

    def __init__(self, grid: tuple[int, int] = (8, 6), velocity_floor: float = 0.04, velocity_z: float = 7.0):
        self.grid = grid
        # Below this spread (frame widths per second) velocity differences are measurement noise.
        self.velocity_floor = velocity_floor
        self.velocity_z = velocity_z

    def fit(self, frames: Sequence[MotionFrame]) -> ActivityModel:
        if not frames:
            raise ValueError("ActivityModel.fit needs at least one warm-up frame")
        gy, gx = self.grid[1], self.grid[0]
        counts = np.zeros((gy, gx))
        sums = np.zeros((gy, gx, 2))
        outer = np.zeros((gy, gx, 2, 2))
        for frame in frames:
            for tr in _moving(frame.tracks, min_hits=2):
                r, c = _cell(tr.center, self.grid)
                v = np.asarray(tr.velocity)
                counts[r, c] += 1
                sums[r, c] += v
                outer[r, c] += np.outer(v, v)
        # Pool each cell with its neighbours: a warm-up of a few seconds cannot visit every cell of the
        # path, and a neighbour's statistics are a better guess than none.
        pooled_n = np.zeros_like(counts)
        pooled_s = np.zeros_like(sums)
        pooled_o = np.zeros_like(outer)
        for r in range(gy):
            for c in range(gx):
                rs, cs = slice(max(0, r - 1), r + 2), slice(max(0, c - 1), c + 2)
                pooled_n[r, c] = counts[rs, cs].sum()
                pooled_s[r, c] = sums[rs, cs].sum(axis=(0, 1))
                pooled_o[r, c] = outer[rs, cs].sum(axis=(0, 1))
        n = np.maximum(pooled_n, 1)[..., None]
        self.cell_counts_ = pooled_n
        self.cell_mean_ = pooled_s / n
        self.cell_cov_ = pooled_o / n[..., None] - np.einsum("...i,...j->...ij", self.cell_mean_, self.cell_mean_)
        total = max(1, counts.sum())
        self.global_mean_ = sums.sum(axis=(0, 1)) / total
        objects = np.array([len(_moving(f.tracks, 1)) for f in frames], float)
        fg = np.array([f.fg_fraction for f in frames])
        self.objects_mean_, self.objects_std_ = float(objects.mean()), float(objects.std())
        self.fg_mean_, self.fg_std_ = float(fg.mean()), float(fg.std())
        self.texture_mean_ = float(np.mean([f.texture for f in frames]))
        self.min_known_ = max(2.0, 0.002 * total)
        return self

    def score(self, frame: MotionFrame) -> list[Finding]:
        findings = []
        ratio = frame.texture / max(self.texture_mean_, 1e-6)
        covered = (1.0 - ratio) / 0.65
        if covered > 0.3:
            findings.append(Finding("camera_covered", covered))
        if frame.shift is not None and covered < 1.0:
            findings.append(Finding("camera_moved", frame.shift / 0.02))
        if covered >= 1.0 or (frame.shift is not None and frame.shift >= 0.02):
            return findings  # motion means nothing while the view itself is broken
        objects = len(_moving(frame.tracks, 1))
        crowd = max(
            # A crowd is well beyond the usual spread and at least 2.5x the usual count: busy
            # moments of normal traffic reach twice the mean.
            (objects - self.objects_mean_) / max(4.0 * self.objects_std_, 5.0, 1.5 * self.objects_mean_),
            (frame.fg_fraction - self.fg_mean_) / max(5.0 * self.fg_std_, 0.02, 1.5 * self.fg_mean_),
        )
        if crowd > 0.3:
            findings.append(Finding("crowd", crowd))
        for tr in _moving(frame.tracks):
            r, c = _cell(tr.center, self.grid)
            if self.cell_counts_[r, c] < self.min_known_:
                findings.append(Finding("unusual_location", 1.2 if tr.hits >= 4 else 0.8, tr.box))
                continue
            mean = self.cell_mean_[r, c]
            cov = self.cell_cov_[r, c] + np.eye(2) * self.velocity_floor**2
            diff = np.asarray(tr.velocity) - mean
            z = math.sqrt(max(0.0, float(diff @ np.linalg.solve(cov, diff))))
            score = z / self.velocity_z
            if score > 0.3:
                against = float(np.dot(tr.velocity, mean)) < 0 and np.linalg.norm(mean) > self.velocity_floor
                findings.append(Finding("wrong_way" if against else "unusual_motion", score, tr.box))
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
