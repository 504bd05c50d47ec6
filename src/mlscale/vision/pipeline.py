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
from collections import deque
from collections.abc import Callable, Iterable
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
from mlscale.vision.sources import Source, open_source, to_bgr, to_small_chroma, to_small_gray
from mlscale.vision.stats import FeedStats, VisionCollector

log = logging.getLogger("mlscale.vision")


@dataclass(frozen=True)
class _Item:
    captured: float  # wall clock when the frame was read
    frame: Any
    position: float  # the frame's own time (seconds): what the detector judges on
    clip_time: float | None  # time within the file, for events from files


class FrameQueue:
    """A feed's frames waiting for the detector, oldest first, bounded by age.

    Why not a single latest-frame slot: under a passing burst of load the slot threw frames away
    whenever the detector was a little late, so a camera's events depended on how many other
    cameras shared the machine. Here every frame due for detection waits its turn while the backlog
    is younger than ``max_backlog`` seconds (wall clock), so results are the same at 1 feed and at
    many as long as the detector keeps up on average; only when it does not are the oldest frames
    dropped (counted), which keeps the lag bounded. ``lossless`` makes the reader wait instead of
    dropping (scoring a file: every due frame is judged).
    """

    def __init__(self, stats: FeedStats, wake: threading.Event, max_backlog: float = 0.6, lossless: bool = False):
        self._cond = threading.Condition()
        self._items: deque[_Item] = deque()
        self._stats = stats
        self._wake = wake
        self.max_backlog = max_backlog
        self.lossless = lossless
        self.closed = False

    def put(self, item: _Item) -> None:
        with self._cond:
            if self.lossless:
                while len(self._items) >= 8 and not self.closed:
                    self._cond.wait(0.5)
            self._items.append(item)
            if not self.lossless:
                while len(self._items) > 1 and item.captured - self._items[0].captured > self.max_backlog:
                    self._items.popleft()
                    self._stats.dropped += 1
        self._wake.set()

    def take(self) -> _Item | None:
        with self._cond:
            item = self._items.popleft() if self._items else None
            self._cond.notify_all()
        return item

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class _Feed:
    def __init__(self, settings: FeedSettings, source: Source, vision: VisionSettings, wake: threading.Event):
        self.settings = settings
        self.source = source
        self.stats = FeedStats(settings.name)
        self.slot = FrameQueue(self.stats, wake, lossless=not source.paced and not source.live)
        self.detector = CameraDetector(settings, vision.warmup_seconds, vision.cooldown_seconds)
        self.scorer = OnnxScorer(settings.onnx_model) if settings.onnx_model else None
        self.thread: threading.Thread | None = None
        self.ended = False  # the source reached its end (files with loop = false)
        self.queued = 0  # frames handed to the detector / judged by it
        self.judged = 0


class VisionPipeline:
    """Runs every configured camera until ``stop()``; ``status()`` is safe to call any time."""

    def __init__(
        self,
        settings: VisionSettings,
        sinks: Iterable[Sink] = (),
        root: str | Path | None = None,
        sources: dict[str, Source] | None = None,
        detector_threads: int = 1,
        paced: bool = True,
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
                sources.get(f.name) or open_source(f, settings.warmup_seconds, self.root, paced=paced),
                settings,
                self._wake,
            )
            for f in settings.feeds
        ]
        self._pool = ThreadPoolExecutor(detector_threads) if detector_threads > 1 else None
        # Called with (camera, clip time or position, verdict) for every judged frame (``vision eval``).
        self.on_verdict: Callable[[str, float, Verdict], None] | None = None
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
            feed.slot.close()
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
                feed.ended = True
                self._wake.set()
                return
            captured, frame, *rest = item
            position = rest[0] if rest else captured
            clip_time = rest[1] if len(rest) > 1 else None
            stats.frame_read(captured)
            # The detection rate is applied to the frame's own time, so which frames are judged
            # depends on the footage alone, not on how fast it was read; skipped frames never
            # reach the queue.
            if position < next_due - 2 * interval:  # the clock went back (a live stream reconnected)
                next_due = position
            if position >= next_due - 1e-6:
                next_due = max(next_due + interval, position - interval / 2)
                feed.source.due_from = next_due
                feed.queued += 1
                feed.slot.put(_Item(captured, frame, position, clip_time))

    # -- detecting -------------------------------------------------------------------------------
    def _detect_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            while not self._stop.is_set():
                # One frame per feed per batch, oldest first: every camera advances in step.
                batch = [(feed, item) for feed in self.feeds if (item := feed.slot.take()) is not None]
                if not batch:
                    break
                try:
                    self._process(batch)
                except Exception:  # one bad frame must not stop every camera
                    log.exception("vision detector failed on a batch")
                finally:
                    for feed, _ in batch:
                        feed.judged += 1

    def finished(self) -> bool:
        """True when every file or synthetic feed has reached its end and all its frames are judged."""
        return all(f.ended and f.judged >= f.queued for f in self.feeds)

    def _process(self, batch: list[tuple[_Feed, _Item]]) -> None:
        grays = [to_small_gray(item.frame, tuple(feed.settings.resolution)) for feed, item in batch]
        chromas = [to_small_chroma(item.frame, feed.detector.analyzer.chroma_resolution) for feed, item in batch]
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
            return feed.detector.process(grays[i], item.position, extras[i], chromas[i])

        verdicts = list(self._pool.map(run, range(len(batch)))) if self._pool else [run(i) for i in range(len(batch))]
        done = time.time()
        for (feed, item), verdict in zip(batch, verdicts, strict=True):
            feed.stats.frame_processed(item.captured, done)
            if self.on_verdict is not None:
                clip = item.clip_time if item.clip_time is not None else item.position
                self.on_verdict(feed.settings.name, clip, verdict)
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
            clip_time=None if item.clip_time is None else round(item.clip_time, 3),
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
    """A VisionPipeline; a MemberPipeline sharing the feeds with other hosts when ``membership``
    is set; a ShardedPipeline over processes when ``settings.workers`` > 1."""
    if settings.membership:
        from mlscale.vision.hosts import MemberPipeline

        return MemberPipeline(settings, sinks, root)
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
