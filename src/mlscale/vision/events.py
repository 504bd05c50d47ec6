"""Anomaly events: what the detector tells the world.

Every event is appended to the events log (one JSON line each, plus a JPEG snapshot file) before
any sink sees it, so a failing sink (a webhook that is down) loses nothing. Sinks are plain
callables taking the event: the alerting channels and the dashboard plug in here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

log = logging.getLogger("mlscale.vision")


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One anomaly on one camera."""

    camera: str
    time: float  # wall-clock capture time (Unix seconds)
    clip_time: float | None = None  # seconds from the start of the file, for events from a file
    kind: str
    score: float
    box: tuple[float, float, float, float] | None = None  # normalized x0, y0, x1, y1
    snapshot: str | None = None  # path of the JPEG snapshot in the events folder
    jpeg: bytes | None = msgspec.field(default=None)  # snapshot bytes, for sinks; not logged


Sink = Callable[[Event], None]


class EventLog:
    """Append-only JSONL log plus snapshot files, safe to call from several threads."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        (self.folder / "snapshots").mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "events.jsonl"
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._count = 0

    def append(self, event: Event) -> Event:
        """Write the snapshot and the log line; returns the event with ``snapshot`` filled in."""
        with self._lock:
            self._count += 1
            if event.jpeg is not None:
                name = f"{event.camera}-{int(event.time * 1000)}-{self._count}-{event.kind}.jpg"
                (self.folder / "snapshots" / name).write_bytes(event.jpeg)
                event = msgspec.structs.replace(event, snapshot=f"snapshots/{name}")
            line = self._encoder.encode(msgspec.structs.replace(event, jpeg=None))
            with self.path.open("ab") as fh:
                fh.write(line + b"\n")
        return event

    def read(self) -> list[Event]:
        """All events logged so far (for tests, the CLI, and a dashboard that starts late)."""
        if not self.path.exists():
            return []
        decoder = msgspec.json.Decoder(Event)
        return [decoder.decode(line) for line in self.path.read_bytes().splitlines() if line.strip()]


def deliver(event: Event, sinks: list[Sink]) -> None:
    """Call every sink; one failing sink is logged and does not stop the others."""
    for sink in sinks:
        try:
            sink(event)
        except Exception:
            log.exception("vision event sink %r failed", sink)


def alert_sink(manager, severity: str = "warning") -> Sink:
    """A sink that hands each event to an alert manager's ``notify_event`` (mlscale.monitoring's
    AlertManager, or anything with that method), so anomalies reach the alerting channels."""

    def send(event: Event) -> None:
        manager.notify_event(
            f"vision.{event.kind}",
            f"{event.kind.replace('_', ' ')} on camera {event.camera} (score {event.score:.2f})",
            labels={"camera": event.camera, "kind": event.kind},
            severity=severity,
            data={"time": event.time, "score": event.score, "box": event.box, "snapshot": event.snapshot},
        )

    return send
