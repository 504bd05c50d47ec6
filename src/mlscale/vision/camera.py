"""One camera's detector: motion analysis, warm-up, the detectors, and turning per-frame findings into
events (one event per incident, not one per frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlscale.vision.detectors import ActivityModel, Finding, RuleDetector
from mlscale.vision.motion import MotionAnalyzer, MotionFrame
from mlscale.vision.settings import FeedSettings


@dataclass
class Verdict:
    """The detector's answer for one frame."""

    t: float
    score: float
    warming_up: bool
    findings: list[Finding] = field(default_factory=list)
    fired: list[Finding] = field(default_factory=list)  # findings that open a new event


class _Debouncer:
    """A kind fires when it has been above threshold for ``confirm`` seconds of the footage's own
    time (a gap shorter than ``gap`` seconds, an occlusion say, does not reset it), then stays
    silent until it has been below threshold for ``cooldown`` seconds: one incident, one event.

    Why seconds and not frames: when a loaded machine judges fewer frames of a camera, a rule
    counted in frames would wait longer (or shorter) in time, and the same clip would give
    different events at 1 feed and at 64. For the same reason a run is broken only by frames
    judged below threshold, not by frames that were never judged (dropped under load): a pause
    with no frame at all says nothing, up to ``max_pause`` seconds.
    """

    def __init__(self, threshold: float, confirm: float, cooldown: float, gap: float = 0.5, max_pause: float = 2.0):
        self.threshold, self.confirm, self.cooldown, self.gap = threshold, confirm, cooldown, gap
        self.max_pause = max_pause
        self.since: dict[str, float] = {}  # kind -> start of its current run above threshold
        self.active: dict[str, bool] = {}
        self.last_above: dict[str, float] = {}
        self.below: set[str] = set()  # kinds judged below threshold since they were last above

    def update(self, t: float, findings: list[Finding], confirm: dict[str, float] | None = None) -> list[Finding]:
        best: dict[str, Finding] = {}
        for f in findings:
            if f.score >= self.threshold and (f.kind not in best or f.score > best[f.kind].score):
                best[f.kind] = f
        fired = []
        for kind, finding in best.items():
            pause = t - self.last_above[kind] if kind in self.last_above else math.inf
            if kind not in self.since or (pause > self.gap and kind in self.below) or pause > self.max_pause:
                self.since[kind] = t
            self.last_above[kind] = t
            self.below.discard(kind)
            needed = (confirm or {}).get(kind, self.confirm)
            if t - self.since[kind] >= needed - 1e-6 and not self.active.get(kind):
                self.active[kind] = True
                fired.append(finding)
        for kind in self.last_above:
            if kind not in best:
                self.below.add(kind)
        for kind in list(self.active):
            if kind not in best and self.active[kind] and t - self.last_above[kind] >= self.cooldown:
                self.active[kind] = False
        return fired

    def recently(self, kind: str, t: float, within: float) -> bool:
        """Was ``kind`` above threshold within the last ``within`` seconds?"""
        return kind in self.last_above and t - self.last_above[kind] <= within


class CameraDetector:
    """Warm-up then score, for one feed. Not thread-safe: one feed's frames are processed in order."""

    def __init__(
        self,
        feed: FeedSettings,
        warmup_seconds: float = 10.0,
        cooldown: float = 10.0,
        confirm: float = 0.4,
        model_factory: Callable[[], ActivityModel] = ActivityModel,
    ):
        self.feed = feed
        self.warmup_seconds = warmup_seconds
        # The background forgets over ~5 minutes whatever the detection rate: someone standing still
        # must stay foreground long enough to be seen loitering.
        history = max(200, round(300 * feed.detect_fps))
        # Pixel persistence reaches 0.8 after loiter_seconds of standing still: 1 - exp(-s/T) = 0.8.
        persistence = max(0.5, feed.rules.loiter_seconds / math.log(5.0))
        self.analyzer = MotionAnalyzer(
            tuple(feed.resolution),
            history=history,
            persistence_seconds=persistence,
            frame_interval=1.0 / feed.detect_fps,
        )
        self.rules = RuleDetector(feed.zones, feed.rules)
        self._model_factory = model_factory
        self._debouncer = _Debouncer(feed.rules.threshold, confirm, cooldown)
        # The crowd fires as its measure crosses: that measure is already a median of the last
        # 0.6 s (two frames of three above), and waiting longer only made crowds seen later (on
        # 48 tuning crowd clips, median 1.7 s -> 1.3 s; the false crowds the crowd measure still
        # raises are in docs/benchmarks.md). Every other kind is confirmed over ``confirm``.
        self._confirm: dict[str, float] = {"crowd": 0.0}
        self._restart(None)

    def _restart(self, t: float | None) -> None:
        self.analyzer.reset()
        self.model: ActivityModel | None = None
        self._warm: list[MotionFrame] = []
        self._warm_start = t
        self._crowd_seen = -math.inf
        self._crowd_near = -math.inf

    @property
    def warming_up(self) -> bool:
        return self.model is None

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        return self.analyzer.prepare(frame)

    def prepare_chroma(self, frame: np.ndarray) -> np.ndarray | None:
        return self.analyzer.prepare_chroma(frame)

    def process(
        self, gray: np.ndarray, t: float, extra: list[Finding] | None = None, chroma: np.ndarray | None = None
    ) -> Verdict:
        """Analyse a downscaled grey frame (from ``prepare``) captured at ``t`` seconds, with its
        colour (from ``prepare_chroma``) when the source has one."""
        if self.model is None:
            if self._warm_start is None:
                self._warm_start = t
            motion = self.analyzer.update(gray, t, chroma=chroma)
            # The first part of the warm-up learns the background (the empty scene); only then is
            # its foreground people, whose numbers, directions and speeds are learned as normal.
            if t - self._warm_start >= max(1.0, 0.4 * self.warmup_seconds):
                self._warm.append(motion)
            if t - self._warm_start >= self.warmup_seconds and self._warm:
                self.model = self._model_factory().fit(self._warm)
                self.rules.fit(self._warm)
                self.analyzer.set_reference()
                self._warm = []
            return Verdict(t, 0.0, True)
        # Do not learn a covered lens as the new background: look at the texture first.
        texture = float(gray.std())
        covered = texture < 0.35 * self.model.texture_mean_
        motion = self.analyzer.update(gray, t, learn=not covered, chroma=chroma)
        self.last_motion = motion
        findings = self.model.score(motion)
        # A crowd building up (half way to the boundary already) makes directions and standing
        # people mean little: blobs merge and split, and people in a crowd stand.
        if any(f.kind == "crowd" and f.score >= 0.5 * self.feed.rules.threshold for f in findings):
            self._crowd_seen = t
        if any(f.kind == "crowd" and f.score >= 0.75 * self.feed.rules.threshold for f in findings):
            self._crowd_near = t
        crowded = t - self._crowd_seen <= 5.0
        if not any(f.kind.startswith("camera_") and f.score >= 1.0 for f in findings):
            rules = self.rules.score(motion)
            # People standing in a crowd are the crowd, not loiterers; a moment after the light
            # changed the background is still being learned again.
            if motion.relit or crowded:
                rules = [f for f in rules if f.kind != "loitering"]
            findings += rules
        # Direction means little inside a crowd (three quarters there already: a busy moment of
        # ordinary traffic reaches half way, and a runner must still be seen then), or right after
        # an uncovered lens (after a change of light only steady tracks are judged: see
        # ActivityModel): blobs merge and split and seem to jump. Someone walking out of a
        # restricted zone is the zone's incident, whichever way they go.
        if (
            t - self._crowd_near <= 5.0
            or self._debouncer.recently("crowd", t, 5.0)
            or self._debouncer.recently("camera_covered", t, 3.0)
            or self._debouncer.recently("restricted_zone", t, 3.0)
        ):
            findings = [f for f in findings if f.kind != "wrong_way"]
        if crowded:
            # A crowd spreading over a zone is the crowd: one incident, one event of its kind.
            findings = [f for f in findings if f.kind != "restricted_zone"]
        if self._debouncer.recently("camera_covered", t, 3.0):
            # A hand leaving the lens breaks the view into blobs for a moment: that is no crowd.
            findings = [f for f in findings if f.kind != "crowd"]
        findings += extra or []
        fired = self._debouncer.update(t, findings, self._confirm)
        # Only calm frames teach what normal is: not one with a finding, not a crowd building up,
        # not the moment after a change of light (what moves then is mostly the light).
        if not crowded and not motion.relit and not any(f.score >= self.feed.rules.threshold for f in findings):
            self.model.adapt(motion)
        score = max((f.score for f in findings), default=0.0)
        if any(f.kind == "camera_moved" for f in fired):
            self._restart(t)  # a moved camera sees a new scene: learn it again
        return Verdict(t, score, False, findings, fired)
