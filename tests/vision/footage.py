"""Held-out test footage: labelled clips unlike mlscale's own synthetic scene.

Written apart from the detector and from mlscale.vision.synthetic, and on purpose different from it:
a real photograph is the scene (scikit-image ships them; nothing is downloaded), people are shaded
ellipses whose size follows perspective (small far away, large near the camera), they walk in lanes
across the ground at varied speeds as a Poisson stream, the light drifts slowly and changes once
suddenly, the sensor adds noise, the camera shakes a little, and the clip is compressed with H.264 or
MPEG-4 by PyAV, as a user's camera would deliver it.

Labelled anomalies (kinds as mlscale names them): ``wrong_way`` (a runner against the flow),
``crowd`` (many people arrive at once), ``camera_covered`` (a hand over the lens), ``loitering``
(someone stops and stays), ``camera_moved`` (the view shifts and stays shifted); ``normal`` clips
have none. Labels are written as ``{"anomalies": [{"kind", "start_s", "end_s"}]}``.

Photos are split: TUNE_PHOTOS may be used to tune the detector, HELDOUT_PHOTOS only to evaluate it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

KINDS = ("wrong_way", "crowd", "camera_covered", "loitering", "camera_moved")
TUNE_PHOTOS = ("camera.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
HELDOUT_PHOTOS = ("astronaut.png", "chelsea.png", "brick.png", "gravel.png", "china.jpg")


def photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A photograph shipped by scikit-image (or scikit-learn for china.jpg), cropped to the aspect
    ratio of ``size`` and resized to it, as BGR uint8."""
    if name == "china.jpg":
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
    else:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
    image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"photo {name} not found in {folder}")
    w, h = size
    ih, iw = image.shape[:2]
    scale = max(w / iw, h / ih)
    cw, ch = round(w / scale), round(h / scale)
    x0, y0 = (iw - cw) // 2, (ih - ch) // 2
    return cv2.resize(image[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)


@dataclass
class Person:
    """Someone in the scene: a path in ground coordinates (x in 0..1 of width, depth in 0..1 from the
    far edge of the ground to the near one) as a function of time."""

    appear: float
    leave: float
    x0: float
    depth0: float
    vx: float  # frame widths per second, at the near edge; scaled down with distance
    vdepth: float
    color: tuple[int, int, int]
    stop_at: float | None = None  # a loiterer stops here (clip seconds)...
    go_at: float | None = None  # ...and walks on here
    sway: float = 0.0

    def where(self, t: float) -> tuple[float, float] | None:
        if not self.appear <= t < self.leave:
            return None
        if self.stop_at is None or t < self.stop_at:
            moving = t - self.appear
        elif t < self.go_at:
            moving = self.stop_at - self.appear
        else:
            moving = (self.stop_at - self.appear) + (t - self.go_at)
        x = self.x0 + self.vx * moving
        depth = self.depth0 + self.vdepth * moving
        if self.stop_at is not None and self.stop_at <= t < self.go_at:
            x += self.sway * math.sin(2.3 * t) + 0.3 * self.sway * math.sin(5.1 * t)
        return x, min(1.0, max(0.0, depth))


class Footage:
    """One labelled clip: ``render(t)`` is the BGR frame at ``t`` seconds; every frame is a function
    of (seed, t) plus per-frame noise drawn from the seed."""

    def __init__(
        self,
        photo_name: str,
        seed: int,
        anomaly: str = "normal",
        seconds: float = 60.0,
        size: tuple[int, int] = (320, 240),
        anomaly_at: float | None = None,
    ):
        if anomaly not in ("normal", *KINDS):
            raise ValueError(f"unknown anomaly {anomaly!r}")
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.size = size
        self.seconds = seconds
        self.scene = photo(photo_name, size).astype(np.float32)
        h = size[1]
        # The ground: a band of the image between far_y and near_y where people are seen.
        self.far_y = h * rng.uniform(0.35, 0.5)
        self.near_y = h * rng.uniform(0.85, 0.97)
        self.far_h = h * rng.uniform(0.07, 0.1)  # a person's height at the far edge, pixels
        self.near_h = self.far_h * rng.uniform(2.0, 2.8)
        self.direction = 1.0 if rng.random() < 0.5 else -1.0
        self.walk_speed = rng.uniform(0.08, 0.13)  # frame widths per second at the near edge
        self.rate = rng.uniform(0.35, 0.7)  # people arriving per second
        self.people: list[Person] = []
        t = -12.0  # some are already walking at the start
        while t < seconds:
            t += rng.exponential(1.0 / self.rate)
            self.people.append(self._walker(t, self.direction))
        # Light: slow drift all the time, and one sudden step (a cloud, a lamp) in every clip.
        self.drift_period = rng.uniform(40, 90)
        self.drift_amp = rng.uniform(0.06, 0.12)
        self.step_at = rng.uniform(0.35, 0.8) * seconds
        self.step_gain = rng.choice([0.82, 0.88, 1.12, 1.18])
        self.noise_sigma = rng.uniform(2.0, 5.0)
        self.shake = rng.uniform(0.3, 1.0)  # pixels
        self.anomalies: list[dict] = []
        self.anomaly = anomaly
        if anomaly != "normal":
            start = anomaly_at if anomaly_at is not None else rng.uniform(0.4, 0.65) * seconds
            self._add_anomaly(anomaly, start)
        self._noise_rng_seed = seed

    # -- people ------------------------------------------------------------------------------------
    def _scale(self, depth: float) -> float:
        """Size of things at ``depth`` relative to the near edge (perspective)."""
        return (self.far_h + (self.near_h - self.far_h) * depth) / self.near_h

    def _walker(self, appear: float, direction: float, speed_factor: float = 1.0) -> Person:
        rng = self.rng
        depth = rng.uniform(0.05, 0.95)
        speed = self.walk_speed * rng.uniform(0.7, 1.35) * speed_factor
        vx = direction * speed * self._scale(depth)
        crossing = 1.2 / abs(vx)
        x0 = -0.1 if direction > 0 else 1.1
        color = tuple(int(v) for v in rng.integers(10, 245, 3))
        return Person(appear, appear + crossing, x0, depth, vx, rng.normal(0, 0.004), color)

    def _add_anomaly(self, kind: str, start: float) -> None:
        rng = self.rng
        if kind == "wrong_way":
            runner = self._walker(start - 0.3, -self.direction, speed_factor=rng.uniform(2.6, 3.4))
            # Enter at the edge at ``start``: shift the path so it is inside the frame from then on.
            runner.x0 = 1.02 if self.direction > 0 else -0.02
            runner.appear = start
            runner.leave = start + 1.04 / abs(runner.vx)
            self.people.append(runner)
            end = runner.leave
        elif kind == "crowd":
            end = start + rng.uniform(8, 12)
            for _ in range(int(rng.integers(14, 22))):
                p = self._walker(start + rng.uniform(0, 1.2), self.direction)
                p.x0 = rng.uniform(0.1, 0.9)
                p.vx *= rng.uniform(-0.4, 0.4)
                p.vdepth = rng.normal(0, 0.01)
                p.leave = end + rng.uniform(0, 1.5)
                self.people.append(p)
        elif kind == "loitering":
            depth = rng.uniform(0.3, 0.9)
            p = self._walker(start - 4.0, self.direction)
            p.depth0, p.vdepth = depth, 0.0
            p.vx = self.direction * self.walk_speed * 0.8 * self._scale(depth)
            stop_x = rng.uniform(0.3, 0.7)
            p.x0 = stop_x - p.vx * 4.0
            p.stop_at = start
            p.go_at = start + rng.uniform(18, 24)
            p.leave = p.go_at + 1.2 / abs(p.vx)
            p.sway = 0.004
            self.people.append(p)
            end = p.go_at
        elif kind == "camera_covered":
            end = start + rng.uniform(5, 8)
        else:  # camera_moved: the view shifts and stays
            end = self.seconds
            angle = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(0.06, 0.1) * self.size[0]
            self.moved = (start, dist * math.cos(angle), dist * math.sin(angle), rng.uniform(-2.0, 2.0))
        self.anomalies.append({"kind": kind, "start_s": round(start, 3), "end_s": round(end, 3)})

    # -- rendering ---------------------------------------------------------------------------------
    def _draw(self, img: np.ndarray, p: Person, t: float) -> None:
        pos = p.where(t)
        if pos is None:
            return
        x, depth = pos
        w, _ = self.size
        feet_y = self.far_y + (self.near_y - self.far_y) * depth
        height = self.far_h + (self.near_h - self.far_h) * depth
        cx = x * w
        body_w = height * 0.22
        # Legs swing while walking; a standing person does not.
        walking = p.stop_at is None or not p.stop_at <= t < p.go_at
        step = 0.12 * height * math.sin(9.0 * t + p.appear) if walking else 0.0
        dark = tuple(int(c * 0.55) for c in p.color)
        for side in (-1, 1):
            cv2.line(
                img,
                (round(cx + side * body_w * 0.3), round(feet_y - height * 0.45)),
                (round(cx + side * step * 0.5), round(feet_y)),
                dark,
                max(1, round(height * 0.07)),
            )
        cv2.ellipse(
            img,
            (round(cx), round(feet_y - height * 0.62)),
            (max(1, round(body_w / 2)), max(2, round(height * 0.22))),
            0,
            0,
            360,
            p.color,
            -1,
        )
        cv2.circle(img, (round(cx), round(feet_y - height * 0.91)), max(1, round(height * 0.09)), (60, 80, 120), -1)

    def render(self, t: float, index: int) -> np.ndarray:
        img = self.scene.copy()
        order = sorted((p for p in self.people if p.appear <= t < p.leave), key=lambda p: p.depth0)
        for p in order:
            self._draw(img, p, t)
        gain = 1.0 + self.drift_amp * math.sin(2 * math.pi * t / self.drift_period)
        if t >= self.step_at:
            gain *= self.step_gain
        img *= gain
        w, h = self.size
        noise_rng = np.random.default_rng([self._noise_rng_seed, index])
        dx, dy = noise_rng.normal(0, self.shake, 2)
        angle = 0.0
        if self.anomaly == "camera_moved" and t >= self.moved[0]:
            dx, dy, angle = dx + self.moved[1], dy + self.moved[2], self.moved[3]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        matrix[:, 2] += (dx, dy)
        img = cv2.warpAffine(img, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
        for a in self.anomalies:
            if a["kind"] == "camera_covered" and a["start_s"] <= t < a["end_s"]:
                # A hand slides over the lens within half a second: dark, blurred, nearly flat.
                cover = min(1.0, (t - a["start_s"]) / 0.5, (a["end_s"] - t) / 0.5)
                hand = np.full_like(img, 18.0)
                hand += cv2.GaussianBlur(img, (0, 0), 12) * 0.08
                edge = round(w * cover)
                img[:, :edge] = hand[:, :edge]
        img += noise_rng.normal(0, self.noise_sigma, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    def labels(self) -> dict:
        return {"anomalies": list(self.anomalies)}


def write_clip(
    path: str | Path,
    footage: Footage,
    fps: float = 10.0,
    codec: str = "h264",
    bitrate: int | None = None,
) -> Path:
    """Render ``footage`` to ``path`` (H.264 or MPEG-4 via PyAV) and its labels beside it
    (``<path>.json``); returns the labels path."""
    import av

    path = Path(path)
    w, h = footage.size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = bitrate or int(w * h * fps * 0.08)
        if codec == "h264":
            stream.options = {"preset": "veryfast"}
        for i in range(round(footage.seconds * fps)):
            frame = av.VideoFrame.from_ndarray(footage.render(i / fps, i), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    labels = path.with_suffix(".json")
    labels.write_text(json.dumps(footage.labels()))
    return labels


def suite(
    photos: tuple[str, ...], seeds: range, seconds: float = 60.0, size: tuple[int, int] = (320, 240)
) -> list[tuple[str, Footage, str]]:
    """One clip per (photo, seed) as (name, footage, codec): the anomaly kind cycles with the seed
    (every sixth clip is normal), the codec alternates between H.264 and MPEG-4."""
    kinds = ("normal", *KINDS)
    clips = []
    for i, name in enumerate(photos):
        for seed in seeds:
            kind = kinds[(seed + i) % len(kinds)]
            stem = name.split(".")[0]
            codec = "h264" if (seed + i) % 2 else "mpeg4"
            clips.append((f"{stem}-{seed}-{kind}", Footage(name, 1000 * seed + i, kind, seconds, size), codec))
    return clips
