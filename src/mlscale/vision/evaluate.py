"""Scoring the detector: on the labelled synthetic suite, or on any labelled video file a user has
(``score_clip``, behind ``mlscale vision eval --clip``): event-level precision/recall/F1, kind
accuracy, time to detection, false alarms and frame-level ROC AUC.

An event is a true positive when it fires inside a labelled anomaly of its clip (with a little slack
after the end, since an event needs a couple of frames to confirm); a labelled anomaly is found
when at least one event matches it. Frames of the warm-up are left out of the ROC AUC.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from mlscale.errors import ConfigError
from mlscale.vision.camera import CameraDetector, Verdict
from mlscale.vision.settings import FeedSettings, RuleSettings, VisionSettings, ZoneSettings
from mlscale.vision.synthetic import FLOW, RESTRICTED_ZONE, Anomaly, Clip, labelled_suite


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


# -- a user's labelled clip ----------------------------------------------------------------------
class LabelledAnomaly(msgspec.Struct, forbid_unknown_fields=True):
    """One labelled anomaly of LABELS.json, in clip seconds."""

    kind: str
    start_s: float
    end_s: float


class Labels(msgspec.Struct, forbid_unknown_fields=True):
    anomalies: list[LabelledAnomaly]


def load_labels(path: str | Path) -> list[Anomaly]:
    """Read ``{"anomalies": [{"kind", "start_s", "end_s"}, ...]}``; a bad file is a ConfigError."""
    try:
        labels = msgspec.json.decode(Path(path).read_bytes(), type=Labels)
    except FileNotFoundError:
        raise ConfigError(f"labels file {str(path)!r} does not exist") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"labels file {str(path)!r}: {exc}") from None
    for a in labels.anomalies:
        if a.end_s < a.start_s:
            raise ConfigError(f"labels file {str(path)!r}: {a.kind} ends ({a.end_s}) before it starts ({a.start_s})")
    return [Anomaly(a.kind, a.start_s, a.end_s) for a in labels.anomalies]


def score_clip(
    clip: str | Path,
    labels: list[Anomaly],
    feed: FeedSettings | None = None,
    vision: VisionSettings | None = None,
    slack: float = 2.0,
    timeout: float = 3600.0,
) -> dict:
    """Run a video file through the same pipeline as ``vision run`` (as fast as it decodes, every
    frame due for detection judged, none dropped) and score its events against the labels.

    Returns precision, recall, F1, kind accuracy, time to detection per anomaly, false alarms (and
    per camera-hour), frame ROC AUC, and the events in clip time.
    """
    import tempfile

    from mlscale.vision.pipeline import VisionPipeline

    clip = Path(clip)
    if not clip.exists():
        raise ConfigError(f"clip {str(clip)!r} does not exist")
    vision = vision or VisionSettings()
    feed = msgspec.structs.replace(feed or FeedSettings(name="clip"), source=str(clip.resolve()), loop=False)
    verdicts: list[tuple[float, Verdict]] = []
    with tempfile.TemporaryDirectory(prefix="mlscale-vision-eval-") as folder:
        settings = msgspec.structs.replace(vision, feeds=[feed], events_dir=folder, workers=1)
        pipeline = VisionPipeline(settings, paced=False)
        pipeline.on_verdict = lambda camera, t, verdict: verdicts.append((t, verdict))
        deadline = time.monotonic() + timeout
        with pipeline:
            while not pipeline.finished() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not pipeline.finished():
                raise ConfigError(f"clip {str(clip)!r} was not scored within {timeout:g} s")
        events = [e for e in pipeline.events.read() if e.clip_time is not None]
    duration = max((t for t, _ in verdicts), default=0.0)
    judged = [(t, v) for t, v in verdicts if not v.warming_up]
    result = ClipResult(clip.name, labels, [(e.clip_time, e.kind) for e in events])
    result.scores = [v.score for _, v in judged]
    result.truth = [int(any(a.start <= t < a.end for a in labels)) for t, _ in judged]
    summary = summarize([result], slack)
    detection = []
    for a in labels:
        hits = [(t, k) for t, k in result.events if _matches(t, a, slack)]
        detection.append(
            {
                "kind": a.kind,
                "start_s": a.start,
                "end_s": a.end,
                "detected_kind": hits[0][1] if hits else None,
                "time_to_detection_s": round(max(0.0, hits[0][0] - a.start), 3) if hits else None,
            }
        )
    warm = min((t for t, v in verdicts if not v.warming_up), default=duration)
    hours = max(duration - warm, 0.0) / 3600.0
    summary["event_count"] = summary.pop("events")
    summary.update(
        clip=str(clip),
        duration_s=round(duration, 3),
        frames_judged=len(verdicts),
        false_alarms=summary["false_events"],
        false_alarms_per_hour=summary["false_events"] / hours if hours else None,
        detections=detection,
        events=[{"kind": e.kind, "time_s": e.clip_time, "score": e.score} for e in events],
    )
    return summary
