"""Where notifications go: a webhook (JSON POST, retried with exponential backoff), the log, a file.

A channel has one method, ``send(notification)``, with a JSON-able dict; a channel that cannot
deliver raises, and the manager counts the failure without stopping the others.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from mlscale.errors import ConfigError

log = logging.getLogger("mlscale.alerts")


class Channel:
    """A destination for notifications."""

    name = "channel"

    def send(self, notification: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the default has none."""


class WebhookChannel(Channel):
    """POSTs each notification as JSON; retries connection errors, 429 and 5xx with backoff.

    Waits ``backoff * 2**attempt`` seconds between attempts (capped at ``max_backoff``); a 4xx
    other than 429 means the receiver rejects the payload, so it is not retried.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook url must start with http:// or https://, got {url!r}")
        self.url, self.retries, self.backoff, self.max_backoff = url, retries, backoff, max_backoff
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def send(self, notification: dict[str, Any]) -> None:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                response = self._client.post(self.url, json=notification)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if response.status_code < 300:
                return
            last = RuntimeError(f"webhook {self.url} answered {response.status_code}")
            if response.status_code < 500 and response.status_code != 429:
                break
        raise RuntimeError(f"webhook {self.url} failed after {attempt + 1} attempts: {last}")

    def close(self) -> None:
        self._client.close()


class LogChannel(Channel):
    """Writes one log line per notification (warning while firing, info otherwise)."""

    name = "log"

    def __init__(self, logger: str = "mlscale.alerts") -> None:
        self._log = logging.getLogger(logger)

    def send(self, notification: dict[str, Any]) -> None:
        level = logging.WARNING if notification.get("status") in ("firing", "event") else logging.INFO
        self._log.log(
            level, "alert %s %s: %s", notification.get("status"), notification.get("rule"), notification.get("summary")
        )


class FileChannel(Channel):
    """Appends one JSON line per notification (a local audit trail a tool can tail)."""

    name = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def send(self, notification: dict[str, Any]) -> None:
        line = json.dumps(notification, default=str) + "\n"
        with self._lock, self.path.open("a") as handle:
            handle.write(line)


def channel_from_settings(spec: dict[str, Any], root: Path | None = None) -> Channel:
    """Build a channel from a settings entry such as {"type": "webhook", "url": "..."}."""
    kind = spec.get("type")
    if kind == "webhook":
        return WebhookChannel(
            spec["url"],
            retries=int(spec.get("retries", 3)),
            backoff=float(spec.get("backoff", 0.5)),
            timeout=float(spec.get("timeout", 5.0)),
        )
    if kind == "log":
        return LogChannel()
    if kind == "file":
        path = Path(spec["path"])
        return FileChannel(path if path.is_absolute() or root is None else root / path)
    raise ConfigError(f"unknown alert channel type {kind!r} (webhook, log, file)")
