"""Admission by queue delay: refuse early and cheaply, serve fresh requests under overload.

A fixed queue bound refuses too late: with 1,000 requests admitted ahead of it, an accepted request
waits a second, its client times out, and the work done for it is wasted while refusals still cost a
body read and a decode ("Fail at Scale", Maurer 2015; CoDel, Nichols and Jacobson 2012). Instead:

- At the door, a request is refused when the time it would wait (rows queued ahead of it divided by
  the rate at which the queue has been draining) exceeds ``target``. The app asks before it reads
  the body, so a refusal costs only the headers.
- In the queue, CoDel's rule tells a burst from overload: when the oldest waiting request has been
  older than ``target`` for a whole ``interval``, the queue is overloaded. Then the newest requests
  are served first (adaptive LIFO: their clients are still waiting) and requests older than
  ``target`` are answered 503 at once instead of late. A burst shorter than ``interval`` is served
  in order, as usual.

One instance per model version per worker, driven by its batcher on the event loop (no locks).
"""

from __future__ import annotations

import math

# Weight of the newest drain-rate sample: a few batches settle the estimate, one odd batch does not.
_RATE_WEIGHT = 0.2


class QueueDelayAdmission:
    """Decides who waits, who is served first and who is refused, from measured queue delay."""

    def __init__(self, target: float = 0.05, interval: float = 0.1) -> None:
        if target <= 0 or interval <= 0:
            raise ValueError("queue_delay_target and queue_delay_interval must be positive")
        self.target = target
        self.interval = interval
        # Rows per second the queue drains at while it is busy (0 until the first measured batch).
        self.drain_rate = 0.0
        self.overloaded = False
        self._above_since: float | None = None
        self._busy_since: float | None = None

    def expected_wait(self, queued_rows: int) -> float:
        """Seconds a request arriving now would wait behind ``queued_rows`` rows (FIFO order)."""
        if self.drain_rate <= 0:
            return 0.0
        return queued_rows / self.drain_rate

    def refuses(self, queued_rows: int, batch_rows: int) -> bool:
        """True when a new request should be refused before its body is read. A full batch is
        always admitted: refusing below one batch would only idle the model."""
        return queued_rows >= batch_rows and self.expected_wait(queued_rows) > self.target

    def retry_after(self, queued_rows: int) -> int:
        """Whole seconds a refused client should wait: the backlog's drain time, at least 1."""
        return max(1, min(60, math.ceil(self.expected_wait(queued_rows))))

    def on_take(self, oldest_age: float, now: float) -> None:
        """Called when a batch is taken; ``oldest_age`` is how long the oldest queued request has
        waited. Overload starts once that age stayed above target for an interval (CoDel)."""
        if oldest_age <= self.target:
            self._above_since = None
            self.overloaded = False
            return
        if self._above_since is None:
            self._above_since = now
        if now - self._above_since >= self.interval:
            self.overloaded = True

    def on_drained(self, rows: int, now: float) -> None:
        """``rows`` left the queue (served or shed) while it stayed non-empty: a drain-rate sample."""
        if self._busy_since is not None:
            elapsed = now - self._busy_since
            if elapsed > 0:
                sample = rows / elapsed
                self.drain_rate = (
                    sample if self.drain_rate <= 0 else self.drain_rate + _RATE_WEIGHT * (sample - self.drain_rate)
                )
        self._busy_since = now

    def on_idle(self) -> None:
        """The queue emptied: the next drain-rate sample starts with the next busy period, and an
        empty queue is never overloaded."""
        self._busy_since = None
        self._above_since = None
        self.overloaded = False
