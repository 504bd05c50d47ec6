"""Monitors: each compares a model's current payload window with its reference, on a schedule.

The service runs every monitor, turns results into metric samples (exported to Prometheus and fed
to the alert rules) and keeps the latest results as JSON-able data; it also writes them to a state
file so a dashboard in another process (the server) can read them with :func:`load_latest`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from mlscale.errors import ConfigError, InvalidInput
from mlscale.monitoring.alerts import (
    AlertManager,
    Sample,
    channel_from_settings,
    rule_from_settings,
)
from mlscale.monitoring.drift import DatasetDrift, DriftDetector, ReferenceProfile, as_columns
from mlscale.monitoring.metrics import DATASET_DRIFT_SHARE, DRIFT_DETECTED, DRIFT_SCORE
from mlscale.monitoring.payload_reader import PayloadReader, to_numpy_columns
from mlscale.monitoring.settings import MonitoringSettings, MonitorSettings
from mlscale.monitoring.tables import read_table

log = logging.getLogger(__name__)


def load_reference(path: Path) -> ReferenceProfile | dict:
    """A saved profile (``.npz``) or the columns of a Parquet/CSV file."""
    if path.suffix == ".npz":
        return ReferenceProfile.load(path)
    return as_columns(read_table(path))


class Monitor:
    """One model's window of payloads against a fitted reference."""

    def __init__(self, settings: MonitorSettings, reader: PayloadReader, reference: Any) -> None:
        if settings.window_rows is None and settings.window_seconds is None:
            raise ConfigError(f"monitor {settings.name!r}: set window_rows or window_seconds")
        self.settings = settings
        self.reader = reader
        try:
            self.detector = DriftDetector(
                columns=settings.columns,
                categorical=settings.categorical,
                kinds=settings.kinds,
                test=settings.test,
                tests=settings.tests,
                threshold=settings.threshold,
                thresholds=settings.thresholds,
                drift_share=settings.drift_share,
            ).fit(reference)
        except InvalidInput as exc:
            raise ConfigError(f"monitor {settings.name!r}: {exc}") from None

    @property
    def name(self) -> str:
        return self.settings.name

    def run(self, now: float | None = None) -> DatasetDrift | None:
        """Score the current window; None when the window has no rows yet."""
        s = self.settings
        table = self.reader.window(
            s.model, rows=s.window_rows, seconds=s.window_seconds, columns=list(self.detector.profile_.columns), now=now
        )
        if table.num_rows == 0:
            return None
        return self.detector.score(to_numpy_columns(table))


def drift_samples(monitor: str, result: DatasetDrift) -> list[Sample]:
    """A drift result as metric samples, named as the exported gauges (without ``mlscale_``)."""
    samples = [Sample("dataset_drift_share", {"monitor": monitor}, result.share)]
    for col in result.columns:
        samples.append(Sample("drift_score", {"monitor": monitor, "feature": col.column, "test": col.test}, col.value))
        samples.append(Sample("drift_detected", {"monitor": monitor, "feature": col.column}, float(col.drifted)))
    return samples


def export(monitor: str, result: DatasetDrift) -> None:
    """Set the Prometheus gauges of one monitor's result."""
    DATASET_DRIFT_SHARE.labels(monitor).set(result.share)
    for col in result.columns:
        DRIFT_SCORE.labels(monitor, col.column, col.test).set(col.value)
        DRIFT_DETECTED.labels(monitor, col.column).set(float(col.drifted))


class MonitorService:
    """All configured monitors, their alert manager, and the latest results."""

    def __init__(
        self, monitors: list[Monitor], alerts: AlertManager, state_file: Path | None = None, archiver=None
    ) -> None:
        self.monitors = monitors
        self.alerts = alerts
        self.state_file = state_file
        # With the payload log on a broker: archived into the payload folder before each run, so
        # the monitors see every replica's rows (payload_stream.PayloadArchiver).
        self.archiver = archiver
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: MonitoringSettings, resolve) -> MonitorService:
        """Build from the ``[monitoring]`` section; ``resolve`` makes paths absolute (Settings.resolve)."""
        if not settings.monitors:
            raise ConfigError("no monitors configured: add [[monitoring.monitors]] to mlscale.toml")
        names = [m.name for m in settings.monitors]
        if len(set(names)) != len(names):
            raise ConfigError("monitor names must be unique")
        reader = PayloadReader(resolve(settings.payload_log.directory))
        monitors = [Monitor(m, reader, load_reference(resolve(m.reference))) for m in settings.monitors]
        rules = [rule_from_settings(msgspec_to_dict(r)) for r in settings.alerts]
        return cls(
            monitors,
            AlertManager(rules, channels_from_settings(settings, resolve)),
            resolve(settings.state_file),
            archiver=payload_archiver(settings.payload_log, resolve),
        )

    def run_once(self, now: float | None = None) -> dict[str, Any]:
        """Run every monitor, export metrics, evaluate alerts, store and return the latest results."""
        now = time.time() if now is None else now
        if self.archiver is not None:
            try:
                self.archiver.archive()
            except Exception:  # the broker down: judge what was archived so far
                log.exception("payload archive failed")
        samples: list[Sample] = []
        results: dict[str, Any] = {}
        for monitor in self.monitors:
            try:
                result = monitor.run(now)
            except Exception as exc:  # one broken monitor must not stop the others
                log.exception("monitor %s failed", monitor.name)
                results[monitor.name] = {"model": monitor.settings.model, "error": str(exc), "time": now}
                continue
            if result is None:
                results[monitor.name] = {"model": monitor.settings.model, "rows": 0, "time": now}
                continue
            export(monitor.name, result)
            samples.extend(drift_samples(monitor.name, result))
            results[monitor.name] = {"model": monitor.settings.model, "time": now, **result.to_dict()}
        self.alerts.evaluate(samples, now)
        state = {"time": now, "monitors": results, "alerts": self.alerts.snapshot()}
        with self._lock:
            self._latest = state
        if self.state_file is not None:
            write_state(self.state_file, state)
        return state

    def latest(self) -> dict[str, Any]:
        """The latest results, JSON-able: per monitor and feature the test, value, threshold,
        verdict and reference/current histogram bins and counts; and the alerts."""
        with self._lock:
            return dict(self._latest)

    def serve(self, interval: float, stop: threading.Event) -> None:
        """Run every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            self.run_once()
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def close(self) -> None:
        self.alerts.close()
        if self.archiver is not None:
            self.archiver.close()


def payload_archiver(settings, resolve):
    """The archiver of ``[monitoring.payload_log]`` when it has a broker, else None."""
    if not settings.broker:
        return None
    from mlscale.monitoring.payload_log import payload_broker
    from mlscale.monitoring.payload_stream import PayloadArchiver

    return PayloadArchiver(payload_broker(settings, resolve), resolve(settings.directory), settings.topic)


def msgspec_to_dict(struct: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(struct)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(state, default=_jsonable, allow_nan=False))
    os.replace(temp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def channels_from_settings(settings: MonitoringSettings, resolve) -> list:
    """The alert channels of ``[[monitoring.channels]]``, file paths made absolute; other parts (the
    video pipeline's anomaly events) send to the same channels through an AlertManager over them."""
    channels = []
    for spec in settings.channels:
        data = msgspec_to_dict(spec)
        if data.get("path"):
            data["path"] = str(resolve(data["path"]))
        channels.append(channel_from_settings(data))
    return channels


def load_latest(path: str | Path) -> dict[str, Any]:
    """The latest results written by ``mlscale monitor run`` (empty when it has not run yet)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
