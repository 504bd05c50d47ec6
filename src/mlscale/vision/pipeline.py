"""The real-time pipeline: one reader thread per feed, a latest-frame-wins slot per feed, and a
detector loop that takes the newest frame of every feed that has one, as a batch.

Why threads and not processes: decoding (FFmpeg inside PyAV) and every OpenCV call here release the
GIL, and the Python left per frame is small at detection resolution, so threads keep both cores busy
without copying frames between processes (measured in bench/vision). ``detector_threads`` > 1 runs
the cameras of one batch in parallel; a camera's frames are still processed in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np

from mlscale.errors import ConfigError
from mlscale.vision.camera import CameraDetector, Verdict
from mlscale.vision.detectors import Finding, OnnxScorer
from mlscale.vision.events import Event, EventLog, Sink, deliver
from mlscale.vision.settings import FeedSettings, VisionSettings
from mlscale.vision.sources import Source, open_source, to_bgr, to_small_gray
from mlscale.vision.stats import FeedStats, VisionCollector

log = logging.getLogger("mlscale.vision")


@dataclass(frozen=True)
class _Item:
    captured: float
    frame: Any


class LatestSlot:
    """Holds at most one frame: a newer frame replaces an older one not yet taken (counted as dropped).

    A slow detector therefore always sees the newest frame and memory never grows, unlike a queue.
    """

    def __init__(self, stats: FeedStats, wake: threading.Event):
        self._lock = threading.Lock()
        self._item: _Item | None = None
        self._stats = stats
        self._wake = wake

    def put(self, item: _Item) -> None:
        with self._lock:
            if self._item is not None:
                self._stats.dropped += 1
            self._item = item
        self._wake.set()

    def take(self) -> _Item | None:
        with self._lock:
            item, self._item = self._item, None
        return item


class _Feed:
    def __init__(self, settings: FeedSettings, source: Source, vision: VisionSettings, wake: threading.Event):
        self.settings = settings
        self.source = source
        self.stats = FeedStats(settings.name)
        self.slot = LatestSlot(self.stats, wake)
        self.detector = CameraDetector(settings, vision.warmup_seconds, vision.cooldown_seconds)
        self.scorer = OnnxScorer(settings.onnx_model) if settings.onnx_model else None
        self.thread: threading.Thread | None = None


class VisionPipeline:
    """Runs every configured camera until ``stop()``; ``status()`` is safe to call any time."""

    def __init__(
        self,
        settings: VisionSettings,
        sinks: Iterable[Sink] = (),
        root: str | Path | None = None,
        sources: dict[str, Source] | None = None,
        detector_threads: int = 1,
    ):
        if not settings.feeds:
            raise ConfigError("[vision] has no feeds: add at least one [[vision.feeds]] table")
        names = [f.name for f in settings.feeds]
        if len(set(names)) != len(names):
            raise ConfigError(f"[vision] feed names must be unique, got {names}")
        self.settings = settings
        self.root = Path(root) if root is not None else Path.cwd()
        self.sinks: list[Sink] = list(sinks)
        events_dir = Path(settings.events_dir)
        self.events = EventLog(events_dir if events_dir.is_absolute() else self.root / events_dir)
        self._stop = threading.Event()
        self._wake = threading.Event()
        sources = sources or {}
        self.feeds = [
            _Feed(
                f,
                sources.get(f.name) or open_source(f, settings.warmup_seconds, self.root),
                settings,
                self._wake,
            )
            for f in settings.feeds
        ]
        self._pool = ThreadPoolExecutor(detector_threads) if detector_threads > 1 else None
        self._detector_thread: threading.Thread | None = None
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> VisionPipeline:
        """Open every non-live source now, so a missing or corrupt file fails here with a clear
        error, then start the threads. Streams are opened by their reader, with retries."""
        for feed in self.feeds:
            if not feed.source.live:
                feed.source.open()
                feed.stats.connected = True
        self.started_at = time.time()
        for feed in self.feeds:
            feed.thread = threading.Thread(
                target=self._read_loop, args=(feed,), name=f"vision-{feed.settings.name}", daemon=True
            )
            feed.thread.start()
        self._detector_thread = threading.Thread(target=self._detect_loop, name="vision-detector", daemon=True)
        self._detector_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        for feed in self.feeds:
            if feed.thread is not None:
                feed.thread.join(timeout)
            feed.source.close()
        if self._detector_thread is not None:
            self._detector_thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __enter__(self) -> VisionPipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._detector_thread is not None and not self._stop.is_set()

    # -- reading ---------------------------------------------------------------------------------
    def _read_loop(self, feed: _Feed) -> None:
        vision = self.settings
        backoff = vision.backoff_initial
        opened = not feed.source.live
        interval = 1.0 / feed.settings.detect_fps
        next_due = 0.0
        stats = feed.stats
        while not self._stop.is_set():
            try:
                if not opened:
                    feed.source.open()
                    opened, stats.connected, backoff = True, True, vision.backoff_initial
                    log.info("camera %s connected", feed.settings.name)
                item = feed.source.read()
            except (ConnectionError, OSError) as exc:
                opened, stats.connected, stats.last_error = False, False, str(exc)
                stats.reconnects += 1
                log.warning("camera %s dropped (%s); reconnecting in %.1fs", feed.settings.name, exc, backoff)
                feed.source.close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, vision.backoff_max)
                continue
            except ConfigError as exc:  # a file replaced by garbage while looping: stop this feed only
                stats.connected, stats.last_error = False, str(exc)
                log.error("camera %s stopped: %s", feed.settings.name, exc)
                return
            finally:
                stats.corrupt = feed.source.corrupt
            if item is None:
                stats.connected = False
                return
            captured, frame = item
            stats.frame_read(captured)
            # The detection rate is applied here, so skipped frames never reach the slot; only
            # frames the detector was due to see and could not are counted as dropped.
            if captured >= next_due:
                next_due = max(next_due + interval, captured - interval / 2)
                feed.slot.put(_Item(captured, frame))

    # -- detecting -------------------------------------------------------------------------------
    def _detect_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            batch = [(feed, item) for feed in self.feeds if (item := feed.slot.take()) is not None]
            if batch:
                try:
                    self._process(batch)
                except Exception:  # one bad frame must not stop every camera
                    log.exception("vision detector failed on a batch")

    def _process(self, batch: list[tuple[_Feed, _Item]]) -> None:
        grays = [to_small_gray(item.frame, tuple(feed.settings.resolution)) for feed, item in batch]
        extras: list[list[Finding]] = [[] for _ in batch]
        by_scorer: dict[int, list[int]] = {}
        for i, (feed, _) in enumerate(batch):
            if feed.scorer is not None:
                by_scorer.setdefault(id(feed.scorer), []).append(i)
        for indices in by_scorer.values():
            # One model call for every camera using the model (same resolution per model assumed).
            scorer = batch[indices[0]][0].scorer
            stacked = np.stack([grays[i] for i in indices])[:, None].astype(np.float32) / 255.0
            for i, score in zip(indices, scorer(stacked), strict=True):
                extras[i].append(Finding("model", float(score)))

        def run(i: int) -> Verdict:
            feed, item = batch[i]
            return feed.detector.process(grays[i], item.captured, extras[i])

        verdicts = list(self._pool.map(run, range(len(batch)))) if self._pool else [run(i) for i in range(len(batch))]
        done = time.time()
        for (feed, item), verdict in zip(batch, verdicts, strict=True):
            feed.stats.frame_processed(item.captured, done)
            for finding in verdict.fired:
                self._emit(feed, item, finding)

    def _emit(self, feed: _Feed, item: _Item, finding: Finding) -> None:
        image = to_bgr(item.frame)
        if finding.box is not None:
            h, w = image.shape[:2]
            x0, y0, x1, y1 = finding.box
            image = image.copy()
            cv2.rectangle(image, (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h)), (0, 0, 255), 2)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        event = Event(
            camera=feed.settings.name,
            time=item.captured,
            kind=finding.kind,
            score=round(finding.score, 3),
            box=tuple(float(v) for v in finding.box) if finding.box is not None else None,
            jpeg=jpeg.tobytes() if ok else None,
        )
        event = self.events.append(event)
        feed.stats.event(
            finding.kind,
            {
                "time": event.time,
                "kind": event.kind,
                "score": event.score,
                "box": event.box,
                "snapshot": event.snapshot,
            },
        )
        log.info("camera %s: %s (score %.2f)", event.camera, event.kind, event.score)
        deliver(event, self.sinks)

    # -- observing -------------------------------------------------------------------------------
    def status(self) -> dict:
        """A JSON-able snapshot per camera (what the dashboard shows)."""
        now = time.time()
        cameras = []
        for feed in self.feeds:
            snap = feed.stats.snapshot(now)
            snap["warming_up"] = feed.detector.warming_up
            snap["source"] = feed.settings.source
            cameras.append(snap)
        return {
            "running": self.running,
            "uptime_seconds": round(now - self.started_at, 1) if self.started_at else 0.0,
            "events_log": str(self.events.path),
            "cameras": cameras,
        }

    def register_metrics(self, registry=None) -> VisionCollector:
        """Export the per-camera metrics to a Prometheus registry (the default one if None)."""
        from prometheus_client import REGISTRY

        collector = VisionCollector(self.status)
        (registry or REGISTRY).register(collector)
        return collector


def demo_settings(cameras: int = 3, events_dir: str = "vision-events") -> VisionSettings:
    """A few synthetic cameras in the "mixed" scenario: every anomaly kind in turn, forever."""
    from mlscale.vision.evaluate import synthetic_feed

    feeds = [synthetic_feed(f"cam-{i + 1}", scenario="mixed", seed=i) for i in range(cameras)]
    return VisionSettings(feeds=feeds, events_dir=events_dir)


def make_pipeline(settings: VisionSettings, sinks: Iterable[Sink] = (), root: str | Path | None = None):
    """A VisionPipeline, or a ShardedPipeline over processes when ``settings.workers`` > 1."""
    if settings.workers > 1:
        from mlscale.vision.workers import ShardedPipeline

        return ShardedPipeline(settings, sinks, root)
    return VisionPipeline(settings, sinks, root)


def start_vision(
    settings: VisionSettings | None = None,
    sinks: Iterable[Sink] = (),
    root: str | Path | None = None,
):
    """Start the pipeline in the background and return it (``.status()``, ``.stop()``).

    No settings, or settings without feeds, run three synthetic demo cameras.
    """
    if settings is None or not settings.feeds:
        base = settings if settings is not None else VisionSettings()
        settings = msgspec.structs.replace(base, feeds=demo_settings().feeds)
    return make_pipeline(settings, sinks, root).start()
