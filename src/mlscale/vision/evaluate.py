"""Scoring the detector on the labelled synthetic suite: event-level precision/recall/F1 and
frame-level ROC AUC.

An event is a true positive when it fires inside a labelled anomaly of its clip (with a little slack
after the end, since an event needs a couple of frames to confirm); a labelled anomaly is found
when at least one event matches it. Frames of the warm-up are left out of the ROC AUC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlscale.vision.camera import CameraDetector
from mlscale.vision.settings import FeedSettings, RuleSettings, ZoneSettings
from mlscale.vision.synthetic import FLOW, RESTRICTED_ZONE, Clip, labelled_suite


def synthetic_feed(name: str = "synthetic", **overrides) -> FeedSettings:
    """The feed config that matches the synthetic scene: its restricted zone and flow direction."""
    base = dict(
        name=name,
        source="synthetic",
        zones=[ZoneSettings(name="doorway", box=RESTRICTED_ZONE)],
        rules=RuleSettings(flow=FLOW, loiter_seconds=8.0),
    )
    base.update(overrides)
    return FeedSettings(**base)


@dataclass
class ClipResult:
    name: str
    labels: list  # the clip's anomalies
    events: list[tuple[float, str]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)


def run_clip(clip: Clip, detect_fps: float = 5.0, warmup: float = 10.0) -> ClipResult:
    """Run one clip through a fresh camera detector at the detection rate."""
    detector = CameraDetector(synthetic_feed(clip.name), warmup_seconds=warmup)
    result = ClipResult(clip.name, list(clip.scene.anomalies))
    for t, frame in clip.scene.frames(detect_fps, clip.duration):
        verdict = detector.process(detector.prepare(frame), t)
        result.events += [(t, f.kind) for f in verdict.fired]
        if not verdict.warming_up:
            result.scores.append(verdict.score)
            result.truth.append(int(clip.scene.anomaly_at(t) is not None))
    return result


def _matches(t: float, anomaly, slack: float) -> bool:
    end = anomaly.end if math.isfinite(anomaly.end) else math.inf
    return anomaly.start - 0.5 <= t <= end + slack


def summarize(results: list[ClipResult], slack: float = 2.0) -> dict:
    """Event precision/recall/F1, kind accuracy of matched events, and frame-level ROC AUC."""
    from sklearn.metrics import roc_auc_score

    tp_events = fp_events = found = labelled = kind_right = 0
    for r in results:
        for t, kind in r.events:
            hit = [a for a in r.labels if _matches(t, a, slack)]
            if hit:
                tp_events += 1
                kind_right += int(any(a.kind == kind for a in hit))
            else:
                fp_events += 1
        for a in r.labels:
            labelled += 1
            found += int(any(_matches(t, a, slack) for t, _ in r.events))
    precision = tp_events / max(1, tp_events + fp_events) if (tp_events + fp_events) else 1.0
    recall = found / labelled if labelled else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores = [s for r in results for s in r.scores]
    truth = [y for r in results for y in r.truth]
    auc = roc_auc_score(truth, scores) if 0 < sum(truth) < len(truth) else float("nan")
    return {
        "clips": len(results),
        "anomalies": labelled,
        "found": found,
        "events": tp_events + fp_events,
        "false_events": fp_events,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "kind_accuracy": kind_right / tp_events if tp_events else float("nan"),
        "roc_auc": auc,
    }


def evaluate(seeds: int = 3, detect_fps: float = 5.0, size: tuple[int, int] = (320, 240)) -> tuple[dict, list]:
    """Run the whole labelled suite; returns the summary and the per-clip results."""
    results = [run_clip(clip, detect_fps) for clip in labelled_suite(seeds, size)]
    return summarize(results), results
