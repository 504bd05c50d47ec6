"""Feeds sharded over worker processes, for when one process's GIL becomes the limit.

Each worker runs an ordinary VisionPipeline over its share of the feeds, so frames never cross a
process boundary (no shared-memory copies needed: decoding and detection of a feed stay together).
Only small messages come back: a status snapshot twice a second and each event (with its JPEG).
The events log is written by the workers themselves (one append per event, atomic on a local disk);
the parent delivers the events to the sinks.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from mlscale.errors import ConfigError
from mlscale.vision.events import Event, EventLog, Sink, deliver
from mlscale.vision.settings import VisionSettings
from mlscale.vision.stats import VisionCollector

log = logging.getLogger("mlscale.vision")


def _worker_main(index: int, payload: bytes, root: str, outbox, stop) -> None:
    """Body of one worker process: run a pipeline over a shard, report status and events."""
    from mlscale.vision.pipeline import VisionPipeline

    settings = msgspec.json.decode(payload, type=VisionSettings)
    encoder = msgspec.msgpack.Encoder()

    def forward(event: Event) -> None:
        outbox.put(("event", index, encoder.encode(event)))

    try:
        pipeline = VisionPipeline(settings, sinks=[forward], root=root).start()
    except Exception as exc:  # a corrupt file, a bad model: tell the parent, which raises it
        outbox.put(("error", index, str(exc)))
        return
    outbox.put(("started", index, None))
    try:
        while not stop.wait(0.5):
            outbox.put(("status", index, pipeline.status()["cameras"]))
    finally:
        pipeline.stop()
        outbox.put(("status", index, pipeline.status()["cameras"]))


class ShardedPipeline:
    """Same face as VisionPipeline (start, stop, status, register_metrics, events) over processes."""

    def __init__(self, settings: VisionSettings, sinks: Iterable[Sink] = (), root: str | Path | None = None):
        if not settings.feeds:
            raise ConfigError("[vision] has no feeds: add at least one [[vision.feeds]] table")
        self.settings = settings
        self.root = Path(root) if root is not None else Path.cwd()
        self.sinks = list(sinks)
        events_dir = Path(settings.events_dir)
        self.events = EventLog(events_dir if events_dir.is_absolute() else self.root / events_dir)
        count = max(1, min(settings.workers, len(settings.feeds)))
        shards = [settings.feeds[i::count] for i in range(count)]
        self._payloads = [
            msgspec.json.encode(msgspec.structs.replace(settings, feeds=shard, workers=1)) for shard in shards
        ]
        self._ctx = mp.get_context("spawn")
        self._outbox = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._processes: list = []
        self._cameras: dict[int, list[dict]] = {}
        self._reader: threading.Thread | None = None
        self._running = False
        self.started_at: float | None = None

    def start(self, timeout: float = 60.0) -> ShardedPipeline:
        for i, payload in enumerate(self._payloads):
            proc = self._ctx.Process(
                target=_worker_main, args=(i, payload, str(self.root), self._outbox, self._stop), daemon=True
            )
            proc.start()
            self._processes.append(proc)
        pending, deadline = set(range(len(self._processes))), time.monotonic() + timeout
        while pending:
            try:
                kind, index, body = self._outbox.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise ConfigError("vision workers did not start in time") from None
            if kind == "error":
                self.stop()
                raise ConfigError(body)
            if kind == "started":
                pending.discard(index)
            else:
                self._handle(kind, index, body)
        self._running = True
        self.started_at = time.time()
        self._reader = threading.Thread(target=self._read_loop, name="vision-workers", daemon=True)
        self._reader.start()
        return self

    def _handle(self, kind: str, index: int, body) -> None:
        if kind == "status":
            self._cameras[index] = body
        elif kind == "event":
            deliver(msgspec.msgpack.decode(body, type=Event), self.sinks)

    def _read_loop(self) -> None:
        while self._running or not self._outbox.empty():
            try:
                kind, index, body = self._outbox.get(timeout=0.25)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self._handle(kind, index, body)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for proc in self._processes:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
        self._running = False
        if self._reader is not None:
            self._reader.join(timeout)

    def __enter__(self) -> ShardedPipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def status(self) -> dict:
        order = {f.name: i for i, f in enumerate(self.settings.feeds)}
        cameras = sorted(
            (c for shard in list(self._cameras.values()) for c in shard), key=lambda c: order.get(c["camera"], 0)
        )
        now = time.time()
        return {
            "running": self._running,
            "uptime_seconds": round(now - self.started_at, 1) if self.started_at else 0.0,
            "events_log": str(self.events.path),
            "workers": len(self._processes),
            "cameras": cameras,
        }

    def register_metrics(self, registry=None) -> VisionCollector:
        from prometheus_client import REGISTRY

        collector = VisionCollector(self.status)
        (registry or REGISTRY).register(collector)
        return collector
