"""Replay the detector's decisions on recorded motion: change a rule, see its events in seconds.

Motion analysis (decode, background model, blobs, tracks) is most of the cost of scoring a clip, and
the rules that turn motion into events (ActivityModel, RuleDetector, the debouncing in CameraDetector)
are what gets tuned. So each clip's per-frame motion (the MotionFrame the analyzer returned, and the
image texture) is recorded once through the real pipeline, then the current rules are replayed on it.

    python bench/vision/replay.py --photos tune --seeds 8 --normal-hours 2.8   # record (once) and replay
    python bench/vision/replay.py --photos tune --seeds 8 --normal-hours 2.8 --show-normal

Clips are those of ``bench/vision/run.py --quality`` (same names, same cache). Approximation: after a
``camera_moved`` event the real detector resets its analyzer, a replay keeps the recorded motion.
Develop on ``--photos tune``; report with ``run.py --quality`` on held-out photos and new seeds.
"""

from __future__ import annotations

import argparse
import functools
import pickle
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "vision"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import _heldout_clip  # noqa: E402

from mlscale.vision import motion as motion_module  # noqa: E402
from mlscale.vision.camera import CameraDetector  # noqa: E402
from mlscale.vision.detectors import ActivityModel  # noqa: E402
from mlscale.vision.evaluate import ClipResult, _matches, load_labels, score_clip, summarize  # noqa: E402
from mlscale.vision.settings import FeedSettings, VisionSettings  # noqa: E402


def record(clip: Path, labels: Path) -> dict:
    """Score ``clip`` through the pipeline once, keeping every frame's motion (cached beside it)."""
    saved = clip.with_suffix(".motion.pkl")
    if saved.exists():
        return pickle.loads(saved.read_bytes())
    frames: list = []
    original = motion_module.MotionAnalyzer.update

    def update(self, gray, t, learn=True, chroma=None):
        result = original(self, gray, t, learn=learn, chroma=chroma)
        frames.append((float(gray.std()), result))
        return result

    motion_module.MotionAnalyzer.update = update
    try:
        summary = score_clip(clip, load_labels(labels))
    finally:
        motion_module.MotionAnalyzer.update = original
    data = {"frames": frames, "events": [(e["time_s"], e["kind"]) for e in summary["events"]]}
    saved.write_bytes(pickle.dumps(data))
    return data


class _Texture:
    """Stands in for the grey frame: the detector reads only its standard deviation."""

    def __init__(self, value: float) -> None:
        self.value = value

    def std(self) -> float:
        return self.value


def replay(data: dict, model: dict | None = None) -> list[tuple[float, str]]:
    """The events today's rules raise on the recorded motion, in clip time; ``model``: keyword
    arguments for ActivityModel (a rule's parameter tried without editing the code)."""
    vision = VisionSettings()
    factory = functools.partial(ActivityModel, **(model or {}))
    detector = CameraDetector(
        FeedSettings(name="replay"), vision.warmup_seconds, vision.cooldown_seconds, model_factory=factory
    )
    frames = iter(data["frames"])
    current: list = [None]

    def update(gray, t, learn=True, chroma=None):
        return current[0]

    detector.analyzer.update = update
    detector.analyzer.set_reference = lambda: None
    detector.analyzer.reset = lambda: None
    events = []
    for texture, motion in frames:
        current[0] = motion
        verdict = detector.process(_Texture(texture), motion.t)
        events += [(motion.t, f.kind) for f in verdict.fired]
        if detector.analyzer.update is not update:  # a restart made a new analyzer
            detector.analyzer.update = update
            detector.analyzer.set_reference = lambda: None
            detector.analyzer.reset = lambda: None
    return events


def main() -> None:
    import footage as footage_module

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", choices=("tune", "heldout"), default="tune")
    parser.add_argument("--seeds", type=int, default=8, help="seeds per photo")
    parser.add_argument("--first-seed", type=int, default=None, help="default: 200 (tune), 100 (heldout)")
    parser.add_argument("--clip-seconds", type=float, default=60.0)
    parser.add_argument("--normal-hours", type=float, default=0.0, help="15-minute normal clips, as run.py")
    parser.add_argument("--normal-first-seed", type=int, default=None, help="default: 6000 (tune), 5000 (heldout)")
    parser.add_argument("--show-normal", action="store_true", help="list each false alarm on normal footage")
    parser.add_argument("--kind", default=None, help="every clip of this anomaly kind, e.g. crowd")
    parser.add_argument("--recorded", action="store_true", help="score the recorded events, not a replay")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=VALUE", help="an ActivityModel argument, e.g. crowd_z=3.5"
    )
    args = parser.parse_args()
    model = {k: float(v) for k, v in (item.split("=", 1) for item in args.model)}

    tune = args.photos == "tune"
    folder = ROOT / ".cache" / "bench-vision" / ("tune" if tune else "heldout")
    pool = footage_module.TUNE_PHOTOS if tune else footage_module.HELDOUT_PHOTOS
    first = args.first_seed if args.first_seed is not None else (200 if tune else 100)
    results, ttd = [], {}
    clips = footage_module.suite(pool, range(first, first + args.seeds), args.clip_seconds)
    if args.kind:  # every clip of one kind (same footage seeds as the suite's)
        clips = [
            (
                f"{photo.split('.')[0]}-{seed}-{args.kind}",
                footage_module.Footage(photo, 1000 * seed + i, args.kind, args.clip_seconds),
                codec,
            )
            for (_, _, codec), (i, photo, seed) in zip(
                clips, [(i, p, s) for i, p in enumerate(pool) for s in range(first, first + args.seeds)], strict=True
            )
        ]
    for name, footage, codec in clips:
        clip, labels = _heldout_clip(folder, f"{name}-{args.clip_seconds:g}s", footage, codec)
        data = record(clip, labels)
        events = data["events"] if args.recorded else replay(data, model)
        anomalies = load_labels(labels)
        results.append(ClipResult(name, anomalies, events))
        for a in anomalies:
            hits = [t for t, _ in events if _matches(t, a, 2.0)]
            if hits:
                ttd.setdefault(a.kind, []).append(max(0.0, hits[0] - a.start))
        wrong = [e for e in events if not any(_matches(e[0], a, 2.0) for a in anomalies)]
        missed = [a.kind for a in anomalies if not any(_matches(t, a, 2.0) for t, _ in events)]
        if wrong or missed:
            print(f"  {name:30s} false {[(round(t, 1), k) for t, k in wrong]} missed {missed}")
    total = summarize(results)
    print(
        f"{args.photos} {len(results)} clips: precision {total['precision']:.3f} recall {total['recall']:.3f} "
        f"F1 {total['f1']:.3f} kind accuracy {total['kind_accuracy']:.3f}"
    )
    for kind, values in sorted(ttd.items()):
        print(f"  ttd {kind:15s} median {statistics.median(values):.2f} max {max(values):.2f} ({len(values)})")
    if args.normal_hours > 0:
        minutes = 15.0
        base = args.normal_first_seed if args.normal_first_seed is not None else (6000 if tune else 5000)
        alarms, hours = [], 0.0
        for i in range(max(1, round(args.normal_hours * 60 / minutes))):
            photo = pool[i % len(pool)]
            footage = footage_module.Footage(photo, base + i, "normal", minutes * 60)
            stem = f"normal-{photo.split('.')[0]}-{base + i}-{minutes:g}m"
            clip, labels = _heldout_clip(folder, stem, footage, "h264")
            data = record(clip, labels)
            events = data["events"] if args.recorded else replay(data, model)
            alarms += [(clip.stem, round(t), k) for t, k in events]
            hours += minutes / 60
        print(f"normal: {len(alarms)} false alarms in {hours:.2f} camera-hours = {len(alarms) / hours:.2f} per hour")
        if args.show_normal:
            for alarm in alarms:
                print("   ", *alarm)


if __name__ == "__main__":
    main()
