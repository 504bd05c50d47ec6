"""The alert manager: evaluates rules over samples, keeps alert state, sends to channels.

``evaluate`` is called after each monitor run (or with samples of any metric); ``notify_event``
sends a one-off event (a video anomaly, say) to the same channels. Sending happens on one
background thread when ``background`` is set, so a slow webhook never delays the caller; in order,
one notification at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlscale.monitoring.alerts.channels import Channel
from mlscale.monitoring.alerts.rules import Alert, AlertRule, Sample
from mlscale.monitoring.metrics import ALERT_NOTIFICATIONS, ALERTS_FIRING

log = logging.getLogger("mlscale.alerts")


class AlertManager:
    """Rules, their alerts' states, the channels, and the recent notifications."""

    def __init__(
        self,
        rules: Iterable[AlertRule] = (),
        channels: Iterable[Channel] = (),
        *,
        background: bool = False,
        history: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = list(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            from mlscale.errors import ConfigError

            raise ConfigError("alert rule names must be unique")
        self.channels = list(channels)
        self.clock = clock
        self._alerts: dict[tuple, Alert] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alerts") if background else None
        for rule in self.rules:
            ALERTS_FIRING.labels(rule.name).set(0)

    def evaluate(self, samples: Iterable[Sample], now: float | None = None) -> list[dict[str, Any]]:
        """Advance every alert's state with these samples; returns the notifications sent."""
        now = self.clock() if now is None else now
        samples = list(samples)
        notes: list[dict[str, Any]] = []
        with self._lock:
            seen: set[tuple] = set()
            for rule in self.rules:
                for sample in samples:
                    if not rule.matches(sample):
                        continue
                    key = (rule.name, sample.key())
                    seen.add(key)
                    alert = self._alerts.get(key)
                    if rule.holds(sample.value):
                        if alert is None:
                            alert = self._alerts[key] = Alert(rule, dict(sample.labels), "pending", now, sample.value)
                        alert.value = sample.value
                        if alert.state == "pending" and now - alert.since >= rule.for_seconds:
                            alert.state, alert.fired_at = "firing", now
                            notes.append(self._note(alert, "firing", now))
                    elif alert is not None:
                        alert.value = sample.value
                        self._clear(key, alert, now, notes)
            for key, alert in list(self._alerts.items()):
                if key not in seen:  # the series is gone: the condition no longer holds
                    self._clear(key, alert, now, notes)
            for rule in self.rules:
                firing = sum(a.state == "firing" for a in self._alerts.values() if a.rule is rule)
                ALERTS_FIRING.labels(rule.name).set(firing)
        for note in notes:
            self._dispatch(note)
        return notes

    def _clear(self, key: tuple, alert: Alert, now: float, notes: list) -> None:
        del self._alerts[key]
        if alert.state == "firing":
            notes.append(self._note(alert, "resolved", now))

    def _note(self, alert: Alert, status: str, now: float) -> dict[str, Any]:
        rule = alert.rule
        summary = rule.summary or f"{rule.metric} {rule.op} {rule.threshold}"
        return {
            "status": status,
            "rule": rule.name,
            "labels": alert.labels,
            "value": alert.value,
            "threshold": rule.threshold,
            "op": rule.op,
            "metric": rule.metric,
            "severity": rule.severity,
            "summary": summary,
            "starts_at": alert.fired_at,
            "ends_at": now if status == "resolved" else None,
        }

    def notify_event(
        self,
        kind: str,
        summary: str,
        *,
        labels: dict[str, str] | None = None,
        severity: str = "warning",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a one-off event (no state, no dedup) to every channel, e.g. a video anomaly."""
        note = {
            "status": "event",
            "rule": kind,
            "labels": labels or {},
            "severity": severity,
            "summary": summary,
            "starts_at": self.clock(),
            "ends_at": None,
            "data": data or {},
        }
        self._dispatch(note)
        return note

    def _dispatch(self, note: dict[str, Any]) -> None:
        with self._lock:
            self._recent.append(note)
        if self._executor is not None:
            self._executor.submit(self._send, note)
        else:
            self._send(note)

    def _send(self, note: dict[str, Any]) -> None:
        for channel in self.channels:
            try:
                channel.send(note)
                ALERT_NOTIFICATIONS.labels(channel.name, "sent").inc()
            except Exception as exc:
                ALERT_NOTIFICATIONS.labels(channel.name, "failed").inc()
                log.error("alert channel %s failed: %s", channel.name, exc)

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, JSON-able, for the dashboard."""
        with self._lock:
            return [a.to_dict() for a in self._alerts.values()]

    def recent(self) -> list[dict[str, Any]]:
        """The latest notifications, newest last."""
        with self._lock:
            return list(self._recent)

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows about alerts."""
        return {"active": self.active(), "recent": self.recent()}

    def close(self) -> None:
        """Finish sending queued notifications and release the channels."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for channel in self.channels:
            channel.close()
