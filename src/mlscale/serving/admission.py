"""Admission by queue delay: refuse early and cheaply, serve fresh requests under overload.

A fixed queue bound refuses too late: with 1,000 requests admitted ahead of it, an accepted request
waits a second, its client times out, and the work done for it is wasted while refusals still cost a
body read and a decode ("Fail at Scale", Maurer 2015; CoDel, Nichols and Jacobson 2012). Instead:

- The model's queue holds at most what drains within ``target`` (rows queued divided by the rate at
  which the queue has been draining), so a request in it waits about ``target`` at most.
- A request that finds the queue full waits at the door, before its body is read or decoded: it
  costs only its headers. Room in the queue goes to the oldest door waiter while the door is short,
  to the newest once the oldest has waited over ``target`` (adaptive LIFO: under overload the
  newest clients are the ones still waiting for an answer), and a request that found no room within
  ``max_wait`` (or its deadline) is answered 503. Refusing at once instead would only make a client
  that retries come back at once: with a fast model, a refusal costs nearly as much as an answer.
- Nothing already in the queue is dropped: it was decoded, and dropping it would waste that work
  (an earlier version dropped queued requests CoDel-style and failed requests of 4 clients on a
  busy machine). A request's own deadline still applies everywhere.

One instance per model version per worker, driven by its batcher on the event loop (no locks).
"""

from __future__ import annotations

import math

# Weight of the newest drain-rate sample: a few batches settle the estimate, one odd batch does not.
_RATE_WEIGHT = 0.2


class QueueDelayAdmission:
    """Decides who waits, who is served first and who is refused, from measured queue delay."""

    def __init__(self, target: float = 0.05, max_wait: float = 1.0) -> None:
        if target <= 0 or max_wait <= 0:
            raise ValueError("queue_delay_target and max_queue_wait must be positive")
        self.target = target
        self.max_wait = max_wait
        # Rows per second the queue drains at while it is busy (0 until the first measured batch).
        self.drain_rate = 0.0
        self._busy_since: float | None = None

    def expected_wait(self, queued_rows: int) -> float:
        """Seconds a request arriving now would wait behind ``queued_rows`` rows (FIFO order)."""
        if self.drain_rate <= 0:
            return 0.0
        return queued_rows / self.drain_rate

    def room(self, batch_rows: int) -> float:
        """Rows the queue may hold: what drains within the target, and never less than one full
        batch (less would only idle the model)."""
        return max(batch_rows, self.drain_rate * self.target)

    def retry_after(self, queued_rows: int) -> int:
        """Whole seconds a refused client should wait: the backlog's drain time, at least 1."""
        return max(1, min(60, math.ceil(self.expected_wait(queued_rows))))

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
        """The queue emptied: the next drain-rate sample starts with the next busy period."""
        self._busy_since = None
