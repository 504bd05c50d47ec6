"""A deterministic synthetic camera: a static scene, people walking along a path, lighting noise, and
labelled anomalies.

Why synthetic: tests, the demo and the quality benchmark need footage whose ground truth is known
exactly and which nobody has to download. Every frame is a pure function of (seed, time), so a clip
can be rendered at any rate, in any order, and forever (the "mixed" scenario never ends).

Anomaly kinds: restricted_zone (someone walks into the zone above the path), wrong_way (someone runs
against the flow), loitering (someone stands still on the path), crowd (a sudden crowd), camera_covered
(the image goes dark and flat), camera_moved (the whole view shifts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ANOMALY_KINDS = (
    "restricted_zone",
    "wrong_way",
    "loitering",
    "crowd",
    "camera_covered",
    "camera_moved",
)
# The restricted zone of every synthetic scene (normalized x0, y0, x1, y1): a doorway above the path.
RESTRICTED_ZONE = (0.62, 0.06, 0.9, 0.4)
# People walk left to right along this band of the image (normalized y of their feet).
PATH_BAND = (0.6, 0.88)
FLOW = (1.0, 0.0)


@dataclass(frozen=True)
class Anomaly:
    """A labelled anomaly: what happens and when (seconds from the start of the clip)."""

    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class _Actor:
    x: float
    y: float  # top-left corner, pixels
    w: int
    h: int
    color: tuple[int, int, int]


class SyntheticScene:
    """A camera looking at a path. ``render(t)`` gives the BGR frame at ``t`` seconds.

    ``scenario`` is "normal" (nothing happens), one of ANOMALY_KINDS (that anomaly once, after the
    warm-up), or "mixed" (every kind in turn, forever, for the demo).
    """

    def __init__(
        self,
        size: tuple[int, int] = (320, 240),
        seed: int = 0,
        scenario: str = "normal",
        warmup: float = 10.0,
        duration: float | None = None,
    ) -> None:
        if scenario not in ("normal", "mixed", *ANOMALY_KINDS):
            raise ValueError(f"unknown synthetic scenario {scenario!r}")
        self.width, self.height = size
        self.seed = seed
        self.scenario = scenario
        self.warmup = warmup
        rng = np.random.default_rng([seed, 0])
        self.speed = self.width / 8.0 * (0.9 + 0.2 * rng.random())  # crossing the image takes ~8 s
        self.person = (max(4, round(self.width * 0.03)), max(8, round(self.height * 0.1)))
        # Each seed is its own camera: its own walker rate, palette and, in the "mixed" scenario, its
        # own order and timing of anomalies (demo cameras must not all raise the same event at once).
        self.spawn_interval = 1.1 + 0.5 * rng.random()
        self.tint = rng.uniform(0.75, 1.25, size=3)
        self.phase = (13.0 * seed) % 40.0  # neighbouring seeds 13 s apart
        self.rotation = seed % len(ANOMALY_KINDS)
        self._params: dict[int, tuple | None] = {}
        self.background = self._background(rng)
        self._noise = rng.normal(0.0, 3.0, size=(8, self.height, self.width, 1)).astype(np.int16)
        self.anomalies: list[Anomaly] = []
        if scenario in ANOMALY_KINDS:
            start = warmup + 6.0 + 2.0 * rng.random()
            self.anomalies = [self._episode(scenario, start, duration)]
        self.duration = duration

    # -- scene -----------------------------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.height, self.width
        ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        base = 90 + 70 * ys + np.zeros((1, w), np.float32)
        img = np.repeat(base[:, :, None], 3, axis=2) * self.tint
        for _ in range(int(rng.integers(10, 20))):  # buildings, windows, street furniture: texture for registration
            x0, y0 = rng.integers(0, w), rng.integers(0, int(h * 0.55))
            bw, bh = rng.integers(w // 20, w // 5), rng.integers(h // 20, h // 3)
            img[y0 : y0 + bh, x0 : x0 + bw] = rng.integers(60, 200, size=3)
        y0, y1 = (round(v * h) for v in PATH_BAND)
        img[y0 - self.person[1] : y1, :] = (150, 150, 145)  # the path
        for _ in range(40):  # paving stones
            x0, yy = rng.integers(0, w), rng.integers(y0 - self.person[1], y1)
            img[yy : yy + 2, x0 : x0 + w // 16] = 135
        return img.astype(np.int16)

    def _walker_params(self, k: int) -> tuple[float, float, float, tuple[int, int, int]] | None:
        """Spawn time, speed, feet height and colour of walker ``k`` (cached: drawn once per walker)."""
        cached = self._params.get(k)
        if cached is None and k not in self._params:
            rng = np.random.default_rng([self.seed, 1, k + 1_000_000])  # k < 0: already walking at t=0
            if rng.random() <= 0.8:
                spawn = (k + rng.random() * 0.8) * self.spawn_interval
                speed = self.speed * (0.8 + 0.45 * rng.random())
                feet = PATH_BAND[0] + (PATH_BAND[1] - PATH_BAND[0]) * rng.random()
                cached = (spawn, speed, feet, _color(rng))
            if len(self._params) > 4096:
                self._params.clear()
            self._params[k] = cached
        return cached

    def _walker(self, k: int, t: float) -> _Actor | None:
        params = self._walker_params(k)
        if params is None:
            return None
        spawn, speed, feet, color = params
        pw, ph = self.person
        x = -pw + speed * (t - spawn)
        if not -pw < x < self.width:
            return None
        return _Actor(x, feet * self.height - ph, pw, ph, color)

    def _walkers(self, t: float) -> list[_Actor]:
        lifetime = (self.width + self.person[0]) / (self.speed * 0.8) + self.spawn_interval
        first = math.floor((t - lifetime) / self.spawn_interval)
        last = math.floor(t / self.spawn_interval)
        found = (self._walker(k, t) for k in range(first, last + 1))
        return [a for a in found if a is not None]

    # -- anomalies -------------------------------------------------------------------------------
    def _episode(self, kind: str, start: float, duration: float | None) -> Anomaly:
        lengths = {
            "restricted_zone": 12.0,
            "wrong_way": (self.width + self.person[0]) / (3.5 * self.speed),
            "loitering": 18.0,
            "crowd": 8.0,
            "camera_covered": 6.0,
            "camera_moved": 10.0,
        }
        end = start + lengths[kind]
        if kind == "camera_moved" and self.scenario != "mixed":
            end = duration if duration is not None else math.inf  # a moved camera stays moved
        return Anomaly(kind, start, end)

    def _mixed(self, t: float) -> Anomaly | None:
        period = 40.0
        first = self.warmup + 5.0 + self.phase
        index = math.floor((t - first) / period)
        if index < 0:
            return None
        kind = ANOMALY_KINDS[(index + self.rotation) % len(ANOMALY_KINDS)]
        episode = self._episode(kind, first + index * period, None)
        if kind == "camera_moved":
            episode = Anomaly(kind, episode.start, episode.start + 15.0)
        return episode

    def anomaly_at(self, t: float) -> Anomaly | None:
        """The labelled anomaly in progress at ``t``, if any (the ground truth)."""
        if self.scenario == "mixed":
            episode = self._mixed(t)
            return episode if episode and episode.start <= t < episode.end else None
        return next((a for a in self.anomalies if a.start <= t < a.end), None)

    def _anomalous_actors(self, episode: Anomaly, t: float) -> list[_Actor]:
        rng = np.random.default_rng([self.seed, 3, round(episode.start * 1000)])
        pw, ph = self.person
        w, h = self.width, self.height
        color = _color(rng)
        local = t - episode.start
        length = episode.end - episode.start
        if episode.kind == "restricted_zone":
            zx0, zy0, zx1, zy1 = RESTRICTED_ZONE
            path = (0.5 * w, PATH_BAND[0] * h + 4 - ph)
            inside = ((zx0 + zx1) / 2 * w, (zy0 + zy1) / 2 * h - ph / 2)
            if local < 0 or local > length:  # walking along the path before and after
                x = path[0] + self.speed * (local if local < 0 else local - length)
                return [_Actor(x, path[1], pw, ph, color)] if x < w else []
            frac = min(1.0, local / 3.0, max(0.0, (length - local) / 3.0))
            wobble = 0.04 * w * math.sin(local * 1.3)
            x = path[0] + (inside[0] - path[0]) * frac + wobble * frac
            y = path[1] + (inside[1] - path[1]) * frac
            return [_Actor(x, y, pw, ph, color)]
        if episode.kind == "wrong_way" and local >= 0:
            y = (PATH_BAND[0] + 0.5 * (PATH_BAND[1] - PATH_BAND[0])) * h - ph
            return [_Actor(w - 3.5 * self.speed * local, y, pw, ph, color)]
        if episode.kind == "loitering":
            y = (PATH_BAND[0] + 0.3 * (PATH_BAND[1] - PATH_BAND[0])) * h - ph
            stop = 0.4 * w
            if local < 0:
                x = stop + self.speed * local
            elif local < length:
                x = stop + 0.012 * w * math.sin(local * 2.1)
                y += 0.01 * h * math.sin(local * 1.7)
            else:
                x = stop + self.speed * (local - length)
            return [_Actor(x, y, pw, ph, color)] if -pw < x < w else []
        if episode.kind == "crowd" and 0 <= local < length:
            actors = []
            for _ in range(16):
                appear = rng.random() * 1.0
                x0, y0 = rng.random() * (w - pw), (0.35 + 0.5 * rng.random()) * h - ph
                vx, vy = rng.normal(0, 0.04 * w), rng.normal(0, 0.02 * h)
                c = _color(rng)
                if local >= appear:
                    x = np.clip(x0 + vx * local, 0, w - pw)
                    y = np.clip(y0 + vy * local, 0, h - ph)
                    actors.append(_Actor(float(x), float(y), pw, ph, c))
            return actors
        return []

    def _current_episodes(self, t: float) -> list[Anomaly]:
        if self.scenario == "mixed":
            episode = self._mixed(t)
            # actors of an episode walk in a few seconds before it starts
            nxt = self._mixed(t + 8.0)
            return [e for e in {episode, nxt} if e is not None]
        return self.anomalies

    # -- rendering -------------------------------------------------------------------------------
    def render(self, t: float) -> np.ndarray:
        """The BGR uint8 frame at ``t`` seconds."""
        img = self.background.copy()
        episodes = self._current_episodes(t)
        actors = self._walkers(t)
        for episode in episodes:
            if episode.start - 8.0 <= t < episode.end + 8.0:
                actors += self._anomalous_actors(episode, t)
        for a in actors:
            x0, y0 = max(0, round(a.x)), max(0, round(a.y))
            x1, y1 = min(self.width, round(a.x) + a.w), min(self.height, round(a.y) + a.h)
            if x1 > x0 and y1 > y0:
                img[y0:y1, x0:x1] = a.color
        light = 6.0 * math.sin(2 * math.pi * t / 17.0) + 3.0 * math.sin(2 * math.pi * t / 5.3)
        for episode in episodes:
            if not episode.start <= t < episode.end:
                continue
            if episode.kind == "camera_covered":
                img[:] = 25
            elif episode.kind == "camera_moved":
                img = np.roll(img, (round(0.05 * self.height), round(0.07 * self.width)), axis=(0, 1))
        # A different noise pattern each frame whatever the rate (t * 1000 % 8 was always 0 at 5 fps:
        # fixed-pattern noise, which phase correlation locks onto).
        img += self._noise[round(t * 997) % len(self._noise)]
        img += round(light)
        return np.clip(img, 0, 255).astype(np.uint8)

    def frames(self, fps: float, duration: float | None = None):
        """Yield (t, frame) at ``fps`` until ``duration`` (or the clip's own duration, or forever)."""
        end = duration if duration is not None else self.duration
        i = 0
        while end is None or i / fps < end:
            yield i / fps, self.render(i / fps)
            i += 1


def _color(rng: np.random.Generator) -> tuple[int, int, int]:
    dark = rng.random() < 0.5
    low, high = (20, 80) if dark else (190, 250)
    return tuple(int(v) for v in rng.integers(low, high, size=3))


@dataclass(frozen=True)
class Clip:
    """One clip of the labelled suite: a scene and how long it runs."""

    name: str
    scene: SyntheticScene
    duration: float


def labelled_suite(
    seeds: int = 3, size: tuple[int, int] = (320, 240), warmup: float = 10.0, normal: int | None = None
) -> list[Clip]:
    """The evaluation suite: every anomaly kind under ``seeds`` seeds plus as many normal clips."""
    clips = []
    for seed in range(seeds):
        for kind in ANOMALY_KINDS:
            duration = 42.0
            scene = SyntheticScene(
                size,
                seed=100 * seed + ANOMALY_KINDS.index(kind),
                scenario=kind,
                warmup=warmup,
                duration=duration,
            )
            clips.append(Clip(f"{kind}-{seed}", scene, duration))
    for seed in range(seeds * 2 if normal is None else normal):
        scene = SyntheticScene(size, seed=7000 + seed, scenario="normal", warmup=warmup, duration=42.0)
        clips.append(Clip(f"normal-{seed}", scene, 42.0))
    return clips
