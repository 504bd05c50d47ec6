"""How many 640x480 15 fps camera feeds this machine analyses in real time, mlscale.vision against a
naive baseline, in one run on the same video; plus event F1 on the labelled synthetic suite.

- mlscale: the VisionPipeline (PyAV decoding, detection at 5 fps per feed on a 160x120 grey frame,
  latest-frame-wins slots, one batched detector loop).
- naive: one thread per feed, OpenCV VideoCapture reading every frame and MOG2 background
  subtraction + connected components on every full-size frame (what a first attempt looks like).

A feed count is "sustained" when every feed reads at >= 95% of 15 fps, the detector keeps >= 90% of
its rate (5 fps for mlscale, 15 fps for the naive loop), and the lag stays under 1 s for the whole
measurement. The ladder stops at the first count that is not sustained.

    python bench/vision/run.py            # full: 60 s per step (the lead runs this on a quiet machine)
    python bench/vision/run.py --quick    # a short check that everything works

Quality on footage the detector was not tuned on (tests/vision/footage.py: real photographs,
perspective, noise, light drift and a sudden change, shake, H.264 / MPEG-4), scored through the
pipeline exactly as `mlscale vision eval --clip` does, and the same events at 1 feed and at N:

    python bench/vision/run.py --quality --seeds 6 --normal-hours 2   # F1, kind accuracy, TTD, false alarms/h
    python bench/vision/run.py --quality --photos tune                 # the same on the tuning photos (develop here)
    python bench/vision/run.py --identical 64                         # events at 64 feeds == at 1 feed
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "vision"))  # footage.py: the held-out footage generator

from mlscale.vision.evaluate import evaluate  # noqa: E402
from mlscale.vision.pipeline import make_pipeline  # noqa: E402
from mlscale.vision.settings import FeedSettings, VisionSettings  # noqa: E402
from mlscale.vision.synthetic import SyntheticScene  # noqa: E402
from mlscale.vision.video import write_video  # noqa: E402

FPS = 15.0
DETECT_FPS = 5.0


def clip_path() -> Path:
    """A 20 s 640x480 15 fps H.264 clip of the synthetic scene, rendered once and cached."""
    path = ROOT / ".cache" / "bench-vision" / "scene-640x480.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scene = SyntheticScene((640, 480), seed=11, scenario="normal")
        write_video(str(path), (f for _, f in scene.frames(FPS, 20.0)), FPS)
    return path


def run_mlscale(feeds: int, clip: Path, seconds: float, warmup: float, workers: int = 1) -> dict:
    settings = VisionSettings(
        feeds=[
            FeedSettings(name=f"cam{i}", source=str(clip), fps=FPS, detect_fps=DETECT_FPS, resolution=(160, 120))
            for i in range(feeds)
        ],
        events_dir=tempfile.mkdtemp(prefix="mlscale-bench-vision-"),
        warmup_seconds=3.0,
        workers=workers,
    )
    pipeline = make_pipeline(settings).start()
    try:
        time.sleep(warmup)
        before = pipeline.status()["cameras"]
        start, max_lag = time.monotonic(), 0.0
        while time.monotonic() - start < seconds:
            time.sleep(1.0)
            max_lag = max(max_lag, max(c["lag_seconds"] for c in pipeline.status()["cameras"]))
        after = pipeline.status()["cameras"]
    finally:
        pipeline.stop()
    # Rates from each camera's own snapshot times: worker processes report twice a second, so the
    # wall-clock window of the parent would misstate them.
    pairs = list(zip(after, before, strict=True))
    fps_in = min((a["frames_in"] - b["frames_in"]) / (a["at"] - b["at"]) for a, b in pairs)
    fps_done = min((a["frames_processed"] - b["frames_processed"]) / (a["at"] - b["at"]) for a, b in pairs)
    p99 = max(c["latency_p99"] or 0.0 for c in after)
    ok = fps_in >= 0.95 * FPS and fps_done >= 0.9 * DETECT_FPS and max_lag < 1.0
    return {"ok": ok, "fps_in": fps_in, "fps_done": fps_done, "lag": max_lag, "p99": p99}


def run_naive(feeds: int, clip: Path, seconds: float, warmup: float) -> dict:
    stop = threading.Event()
    counts = [0] * feeds
    lags = [0.0] * feeds
    measuring = threading.Event()

    def camera(i: int) -> None:
        subtractor = cv2.createBackgroundSubtractorMOG2(detectShadows=False)
        cap = cv2.VideoCapture(str(clip))
        begin, n = time.monotonic(), 0
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:  # loop the clip like a camera that never stops
                cap.release()
                cap = cv2.VideoCapture(str(clip))
                continue
            due = begin + n / FPS
            n += 1
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            mask = subtractor.apply(frame)
            cv2.connectedComponentsWithStats(mask)
            if measuring.is_set():
                counts[i] += 1
                lags[i] = max(lags[i], time.monotonic() - due)
        cap.release()

    threads = [threading.Thread(target=camera, args=(i,), daemon=True) for i in range(feeds)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    measuring.set()
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    stop.set()
    for t in threads:
        t.join(5)
    fps = min(counts) / elapsed
    lag = max(lags)
    return {"ok": fps >= 0.95 * FPS and lag < 1.0, "fps_in": fps, "fps_done": fps, "lag": lag, "p99": None}


def ladder(name, runner, steps, clip, seconds, warmup) -> tuple[int, list]:
    best, rows = 0, []
    for feeds in steps:
        result = runner(feeds, clip, seconds, warmup)
        rows.append((name, feeds, result))
        print(
            f"  {name:10s} {feeds:3d} feeds: read {result['fps_in']:.1f} fps, analysed {result['fps_done']:.1f} fps, "
            f"max lag {result['lag']:.2f} s -> {'sustained' if result['ok'] else 'NOT sustained'}",
            flush=True,
        )
        if not result["ok"]:
            break
        best = feeds
    return best, rows


def _heldout_clip(folder: Path, name: str, footage, codec: str, fps: float = 10.0) -> tuple[Path, Path]:
    """Render a footage clip once (cached by name) and return (clip, labels)."""
    import footage as footage_module

    clip = folder / f"{name}.mp4"
    labels = clip.with_suffix(".json")
    if not (clip.exists() and labels.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        footage_module.write_clip(clip, footage, fps=fps, codec=codec)
    return clip, labels


def run_quality(
    seeds: int,
    normal_hours: float,
    seconds: float,
    photos: str = "heldout",
    first_seed: int | None = None,
    normal_first_seed: int | None = None,
) -> None:
    """F1, kind accuracy and time to detection on held-out footage; false alarms per camera-hour on
    hours of normal footage. Defaults only: no zones, no rules.

    ``photos="tune"`` runs the same measures on the photos the detector may be tuned on, with other
    seeds (200+ for the clips, 6000+ for normal footage): develop there, report on the held-out half.
    """
    import statistics

    import footage as footage_module

    from mlscale.vision.evaluate import ClipResult, load_labels, score_clip, summarize

    tune = photos == "tune"
    folder = ROOT / ".cache" / "bench-vision" / ("tune" if tune else "heldout")
    pool = footage_module.TUNE_PHOTOS if tune else footage_module.HELDOUT_PHOTOS
    first = first_seed if first_seed is not None else (200 if tune else 100)
    clips = footage_module.suite(pool, range(first, first + seeds), seconds=seconds)
    results, ttd = [], {}
    for name, footage, codec in clips:
        clip, labels = _heldout_clip(folder, f"{name}-{seconds:g}s", footage, codec)
        s = score_clip(clip, load_labels(labels))
        events = ", ".join(f"{e['kind']}@{e['time_s']:.1f}" for e in s["events"]) or "-"
        print(f"  {name:32s} events: {events}", flush=True)
        results.append(ClipResult(name, load_labels(labels), [(e["time_s"], e["kind"]) for e in s["events"]]))
        for d in s["detections"]:
            if d["time_to_detection_s"] is not None:
                ttd.setdefault(d["kind"], []).append(d["time_to_detection_s"])
    total = summarize(results)
    names = ", ".join(pool)
    what = "tuning" if tune else "held-out"
    print(f"\n{what} footage ({len(clips)} clips, {total['anomalies']} anomalies, photos {names}):")
    print(
        f"  precision {total['precision']:.3f}, recall {total['recall']:.3f}, event F1 {total['f1']:.3f}, "
        f"kind accuracy {total['kind_accuracy']:.3f}, false events {total['false_events']}"
    )
    for kind, values in sorted(ttd.items()):
        median, worst = statistics.median(values), max(values)
        print(f"  time to detection {kind:15s} median {median:.1f} s, max {worst:.1f} s ({len(values)} found)")
    if normal_hours > 0:
        # Long normal clips (15 min each) over the held-out photos, new seeds.
        minutes = 15.0
        count = max(1, round(normal_hours * 60 / minutes))
        alarms, hours = 0, 0.0
        base = normal_first_seed if normal_first_seed is not None else (6000 if tune else 5000)
        for i in range(count):
            photo = pool[i % len(pool)]
            footage = footage_module.Footage(photo, base + i, "normal", minutes * 60)
            name = f"normal-{photo.split('.')[0]}-{base + i}-{minutes:g}m"
            clip, labels = _heldout_clip(folder, name, footage, "h264")
            s = score_clip(clip, load_labels(labels))
            alarms += s["false_alarms"]
            hours += minutes / 60
            kinds = ", ".join(f"{e['kind']}@{e['time_s']:.0f}" for e in s["events"]) or "-"
            print(f"  normal {photo:14s} {minutes:g} min: {s['false_alarms']} false alarms ({kinds})", flush=True)
        print(
            f"normal footage: {alarms} false alarms in {hours:.2f} camera-hours = {alarms / hours:.2f} per camera-hour"
        )


def run_identical(feeds: int, seconds: float) -> None:
    """The same 640x480 15 fps clip on 1 feed, then on ``feeds`` feeds, paced as cameras: are the
    events (kind, clip time) of every feed those of the single feed? Also the worst lag."""
    import footage as footage_module

    folder = ROOT / ".cache" / "bench-vision" / "identical"
    clips = [
        _heldout_clip(
            folder,
            f"{kind}-640-{seconds:g}s",
            footage_module.Footage(photo, seed, kind, seconds, (640, 480)),
            "h264",
            FPS,
        )
        for photo, seed, kind in (("china.jpg", 7, "crowd"), ("chelsea.png", 8, "wrong_way"))
    ]

    def run(n: int) -> tuple[dict, float, int]:
        settings = VisionSettings(
            feeds=[FeedSettings(name=f"cam{i}", source=str(clips[i % 2][0]), fps=FPS, loop=False) for i in range(n)],
            events_dir=tempfile.mkdtemp(prefix="mlscale-bench-vision-"),
        )
        pipeline = make_pipeline(settings).start()
        max_lag, deadline = 0.0, time.monotonic() + seconds * 3 + 60
        try:
            while not pipeline.finished() and time.monotonic() < deadline:
                time.sleep(0.5)
                max_lag = max(max_lag, max(c["lag_seconds"] for c in pipeline.status()["cameras"]))
            dropped = sum(c["dropped"] for c in pipeline.status()["cameras"])
        finally:
            pipeline.stop()
        events: dict[str, list] = {f"cam{i}": [] for i in range(n)}
        for e in pipeline.events.read():
            events[e.camera].append((e.kind, e.clip_time))
        return events, max_lag, dropped

    single = [run(1)[0]["cam0"] for _ in range(1)]
    reference = {0: single[0], 1: run(2)[0]["cam1"]}
    events, lag, dropped = run(feeds)
    same = sum(events[f"cam{i}"] == reference[i % 2] for i in range(feeds))
    # Looser than identical: the same kinds in the same order (times may move by a step or more
    # when frames were dropped), and the events one feed does not raise or raises but these miss.
    kinds = [[k for k, _ in events[f"cam{i}"]] for i in range(feeds)]
    wanted = [[k for k, _ in reference[i % 2]] for i in range(feeds)]
    same_kinds = sum(k == w for k, w in zip(kinds, wanted, strict=True))
    extra = sum(max(0, len(k) - len(w)) for k, w in zip(kinds, wanted, strict=True))
    missed = sum(sum(1 for kind in w if kind not in k) for k, w in zip(kinds, wanted, strict=True))
    print(f"clips: {', '.join(str(c.relative_to(ROOT)) for c, _ in clips)}")
    print(f"1 feed: {reference[0]} / {reference[1]}")
    print(f"{feeds} feeds: {same}/{feeds} feeds with identical events; max lag {lag:.2f} s; dropped frames {dropped}")
    print(f"{feeds} feeds: {same_kinds}/{feeds} with the same kinds; {extra} events more, {missed} missed")
    for i in range(feeds):
        if events[f"cam{i}"] != reference[i % 2]:
            print(f"  cam{i}: {events[f'cam{i}']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short steps and a small ladder (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None, help="measurement seconds per step")
    parser.add_argument("--quality", action="store_true", help="held-out footage: F1, kind accuracy, false alarms")
    parser.add_argument("--seeds", type=int, default=6, help="--quality: seeds per held-out photo")
    parser.add_argument("--clip-seconds", type=float, default=60.0, help="--quality/--identical: clip length")
    parser.add_argument("--normal-hours", type=float, default=0.0, help="--quality: hours of normal footage")
    parser.add_argument(
        "--photos", choices=("heldout", "tune"), default="heldout", help="--quality: held-out photos or tuning ones"
    )
    parser.add_argument(
        "--first-seed", type=int, default=None, help="--quality: first clip seed (default 100 held-out, 200 tuning)"
    )
    parser.add_argument(
        "--normal-first-seed", type=int, default=None, help="--quality: first normal seed (default 5000, 6000)"
    )
    parser.add_argument("--identical", type=int, default=0, metavar="FEEDS", help="events at FEEDS feeds == 1 feed?")
    args = parser.parse_args()
    if args.quality:
        run_quality(
            args.seeds, args.normal_hours, args.clip_seconds, args.photos, args.first_seed, args.normal_first_seed
        )
        return
    if args.identical:
        run_identical(args.identical, args.clip_seconds)
        return
    seconds = args.seconds or (6.0 if args.quick else 60.0)
    warmup = 4.0 if args.quick else 8.0
    ours_steps = [2, 4] if args.quick else [4, 8, 12, 16, 20, 24, 28, 32, 40, 48]
    naive_steps = [1, 2] if args.quick else [1, 2, 3, 4, 6, 8, 10, 12, 16]

    clip = clip_path()
    print(f"clip: {clip.relative_to(ROOT)} (640x480, {FPS:g} fps); {seconds:g} s per step", flush=True)
    ours, _ = ladder("mlscale", run_mlscale, ours_steps, clip, seconds, warmup)
    runner = functools.partial(run_mlscale, workers=2)
    sharded, _ = ladder("mlscale-2p", runner, ours_steps[1:], clip, seconds, warmup)
    naive, _ = ladder("naive", run_naive, naive_steps, clip, seconds, warmup)
    summary, _ = evaluate(seeds=1 if args.quick else 3)

    best = max(ours, sharded)
    ratio = f"{best / naive:.1f}x" if naive else "n/a (naive sustained none)"
    print()
    print("| pipeline | feeds sustained (640x480 @ 15 fps, lag < 1 s) | detection |")
    print("|---|---|---|")
    top = lambda n: f"{n}{'+' if n == ours_steps[-1] else ''}"  # noqa: E731
    print(f"| mlscale.vision, threads (workers=1) | {top(ours)} | 5 fps per feed at 160x120 |")
    print(f"| mlscale.vision, 2 processes (workers=2) | {top(sharded)} | 5 fps per feed at 160x120 |")
    print(f"| naive (thread per feed, MOG2 full frame) | {naive} | every frame at 640x480 |")
    print(f"\nratio best mlscale / naive: {ratio}")
    print(
        f"\nsynthetic suite ({summary['clips']} clips, {summary['anomalies']} anomalies): "
        f"event precision {summary['precision']:.3f}, recall {summary['recall']:.3f}, F1 {summary['f1']:.3f}, "
        f"kind accuracy {summary['kind_accuracy']:.3f}, frame ROC AUC {summary['roc_auc']:.3f} "
        "(the suite the detector was built with; see --quality for footage it was not)"
    )


if __name__ == "__main__":
    main()
