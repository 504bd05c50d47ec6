"""How many tracks linger (move at under half the usual walking speed) at a crowd's rise, on
recorded motion: at false crowds of normal footage (bursts of walkers) and 1.5 s into real crowds.

The figures behind the crowd rule's ``crowd_min_gathering`` (docs/benchmarks.md). Reads the motion
that ``replay.py`` recorded; run these first so the clips and their motion are in the cache:

    python bench/vision/replay.py --photos tune --seeds 8 --normal-hours 2
    python bench/vision/replay.py --photos tune --kind crowd
    python bench/vision/replay.py --photos heldout --seeds 0 --normal-hours 2 --normal-first-seed 5300
    python bench/vision/lingering.py
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "bench-vision"

# False crowds the rule without the gathering check raised (clip, clip time of the event).
BURSTS = [
    ("tune/normal-coffee-6001-15m", 620.0),
    ("tune/normal-rocket-6002-15m", 199.8),
    ("heldout/normal-china-5304-15m", 288.4),
    ("tune/motorcycle_left-203-crowd-60s", 52.8),
    ("heldout/normal-gravel-5303-15m", 277.0),
]


def lingering_at(stem: str, t: float) -> tuple[int, int]:
    """Lingering tracks 4 s before ``t`` and at ``t`` (the usual speed learned as the detector does:
    the 75th percentile of steady tracks' speeds in the first 10 s)."""
    frames = [m for _, m in pickle.loads((CACHE / f"{stem}.motion.pkl").read_bytes())["frames"]]
    speeds = [math.hypot(*v.velocity) for m in frames if m.t < 10 for v in m.tracks if v.velocity and v.hits >= 3]
    usual = float(np.percentile([s for s in speeds if s > 0.015], 75))

    def count(at: float) -> int:
        m = min(frames, key=lambda m: abs(m.t - at))
        return sum(1 for v in m.tracks if v.velocity is not None and math.hypot(*v.velocity) < 0.5 * usual)

    return count(t - 4.0), count(t)


def main() -> None:
    crowds = sorted(CACHE.glob("tune/*-crowd-60s.motion.pkl"))
    if not crowds or not all((CACHE / f"{stem}.motion.pkl").exists() for stem, _ in BURSTS):
        sys.exit("lingering: recorded motion missing; run the replay.py commands in this file's docstring first")
    print("kind   clip                                  lingering 4 s before -> at the rise")
    for stem, t in BURSTS:
        before, now = lingering_at(stem, t)
        print(f"burst  {stem:38s} {before} -> {now}")
    for path in crowds:
        stem = f"tune/{path.name.removesuffix('.motion.pkl')}"
        start = json.loads((CACHE / f"{stem}.json").read_text())["anomalies"][0]["start_s"]
        before, now = lingering_at(stem, start + 1.5)
        print(f"crowd  {stem:38s} {before} -> {now}")


if __name__ == "__main__":
    main()
