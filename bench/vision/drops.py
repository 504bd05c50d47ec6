"""Events under frame drops made explicitly: each clip judged with every due frame and with frames
skipped in the patterns a loaded pipeline produces (from the start, warm-up included), counting the
clips whose events have the same kinds as with every frame. Load-independent (clip time only).

    .venv/bin/python bench/vision/drops.py              # tuning photos, seed 1, 40 s clips
    .venv/bin/python bench/vision/drops.py --seeds 1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "vision"))

import footage as footage_module  # noqa: E402

from mlscale.vision.camera import CameraDetector  # noqa: E402
from mlscale.vision.settings import FeedSettings  # noqa: E402
from mlscale.vision.sources import to_small_chroma, to_small_gray  # noqa: E402

FPS = 5.0
PATTERNS = {
    "every frame": lambda i: True,
    "one in two": lambda i: i % 2 == 0,
    "one in three": lambda i: i % 3 == 1,
    "bursts of one in three": lambda i: (i // 10) % 2 == 0 or i % 3 == 0,
}


def events(footage) -> dict[str, list[tuple[float, str]]]:
    """Each pattern's events on one clip (each frame rendered once)."""
    detectors = {name: CameraDetector(FeedSettings(name=name), 10.0, 10.0) for name in PATTERNS}
    found: dict[str, list[tuple[float, str]]] = {name: [] for name in PATTERNS}
    chroma_size = detectors["every frame"].analyzer.chroma_resolution
    for i in range(round(footage.seconds * FPS)):
        t = i / FPS
        frame = footage.render(t, i)
        gray, chroma = to_small_gray(frame, (160, 120)), to_small_chroma(frame, chroma_size)
        for name, keep in PATTERNS.items():
            if keep(i):
                found[name] += [(round(t, 1), f.kind) for f in detectors[name].process(gray, t, None, chroma).fired]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1", help="comma-separated footage seeds")
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    same = dict.fromkeys(PATTERNS, 0)
    clips = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        for index, photo in enumerate(footage_module.TUNE_PHOTOS):
            for kind in ("crowd", "wrong_way", "normal"):
                anomaly_at = None if kind == "normal" else 25.0
                footage = footage_module.Footage(photo, 1000 * seed + index, kind, args.seconds, (320, 240), anomaly_at)
                found = events(footage)
                clips += 1
                wanted = [k for _, k in found["every frame"]]
                differ = {name: e for name, e in found.items() if [k for _, k in e] != wanted}
                for name in PATTERNS:
                    same[name] += name not in differ
                print(f"  {photo} {seed} {kind}: every frame {found['every frame']} differ {differ}", flush=True)
    for name, count in same.items():
        print(f"{name:24s} same kinds as every frame: {count} / {clips}")


if __name__ == "__main__":
    main()
