"""Adaptive batching: concurrent requests for one model version joined on axis 0 and run once.

Under light load a request runs alone and at once (no waiting unless ``max_delay`` asks for it);
under heavy load, requests that arrive while a batch runs form the next batch, so batch size
grows with load by itself. Admission is by queue delay (see admission.py): a request that would
wait longer than the target is refused at once (503), and under sustained overload the newest
requests are served first. A hard bound on the queue stays as a backstop. A request whose batch
fails is retried alone, so one bad request never fails its batch-mates.

Tenants share the model fairly once two or more wait (the tenant comes from the caller's key;
without auth there is one tenant and nothing below applies). At the door, room goes first to the
tenant holding the least of the queue (rows queued plus requests let in but not yet queued), ties
to the tenant let in least recently, so a tenant under its equal share gets room before a heavy
tenant's older backlog. And each batch takes at most an equal share of its rows from any one
tenant before filling up with whatever waits, so a light tenant's request already queued rides
the next batch instead of waiting behind a heavy tenant's rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlscale import tracing
from mlscale.errors import DeadlineExceeded, InvalidInput, MlscaleError, Overloaded, VersionRetired
from mlscale.serving.admission import QueueDelayAdmission

Arrays = dict[str, np.ndarray]
# predict(inputs, wanted outputs or None for all) -> outputs
Predict = Callable[[Arrays, tuple[str, ...] | None], Arrays]


class InferenceFailed(InvalidInput):
    """The model raised on this request's input."""


class _Item:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "outputs", "rows", "signature", "tenant", "trace")

    def __init__(
        self,
        inputs: Arrays,
        outputs: tuple[str, ...] | None,
        rows: int,
        signature: tuple,
        deadline: float | None,
        future: asyncio.Future,
        enqueued: float,
        tenant: str | None = None,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.rows = rows
        self.signature = signature
        self.deadline = deadline
        self.future = future
        self.enqueued = enqueued
        self.tenant = tenant
        # The request's span and enqueue time (mlscale.tracing.spans.capture) when it is traced.
        self.trace = None


# Requests that may wait for room at the door, per model version and worker. A waiter holds a
# connection, a future and a timer, not its body (unread). Why so many: a request refused at once
# is sent again at once by a client in a closed loop (each user's next request follows the answer),
# so a door bound below the number of connections turned the overflow into a storm of instant
# refusals (4,000 closed-loop connections, 2 workers: 50,701 refusals in 3 x 4 s). A refusal after
# max_queue_wait costs each client one refusal per wait instead (6,577; docs/benchmarks.md).
DEFAULT_MAX_WAITING = 65536


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _add(counts: dict[str | None, int], tenant: str | None, change: int) -> None:
    """Change a per-tenant count, dropping tenants that reach zero (so len() counts the present)."""
    left = counts.get(tenant, 0) + change
    if left > 0:
        counts[tenant] = left
    else:
        counts.pop(tenant, None)


def _signature(inputs: Arrays, outputs: tuple[str, ...] | None) -> tuple | None:
    """What must agree for requests to share a batch: names, dtypes, non-batch dimensions and
    the outputs asked for (so a model computes only what its batch needs)."""
    parts: list = [outputs]
    for name in sorted(inputs):
        array = inputs[name]
        if array.ndim == 0:
            return None
        parts.append((name, array.dtype.str, array.shape[1:]))
    return tuple(parts)


class AdaptiveBatcher:
    """One queue and one runner task per model version."""

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int = 64,
        max_delay: float = 0.0,
        max_queue_size: int = 1024,
        max_waiting: int = DEFAULT_MAX_WAITING,
        inline: bool = False,
        on_batch: Callable[[int, list[float]], None] | None = None,
        admission: QueueDelayAdmission | None = None,
        on_shed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        trace_attributes: dict[str, str] | None = None,
    ) -> None:
        self._predict = predict
        # Attributes of this batcher's batch spans when tracing is on (the model and version).
        self.trace_attributes = trace_attributes or {}
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue_size = max_queue_size
        # Requests that may wait at the door. Far above the queue's bound on purpose: see
        # DEFAULT_MAX_WAITING.
        self.max_waiting = max_waiting
        self.inline = inline
        self._on_batch = on_batch
        # Measures queue delay; tests pass their own to step time without sleeping.
        self._clock = clock
        self.admission = admission or QueueDelayAdmission()
        # Called with the reason ("admission", "queue_timeout", "queue_full") of every refusal.
        self._on_shed = on_shed
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        # Requests waiting for room in the queue, before their bodies are read (see admission.py),
        # and how many were let in since the last take but have not reached submit() yet.
        self._door: deque[tuple[asyncio.Future, float, str | None]] = deque()
        self._let_in = 0
        # Fair sharing between tenants (entries with nothing are removed, so these stay small):
        # rows queued, requests let in but not yet queued, and door entries, per tenant; and the
        # order in which tenants were last let in through the door (the tie-break between equals).
        self._tenant_rows: dict[str | None, int] = {}
        self._tenant_let_in: dict[str | None, int] = {}
        self._door_tenants: dict[str | None, int] = {}
        self._last_in: dict[str | None, int] = {}
        self._door_turn = 0
        self._wakeup = asyncio.Event()
        # Fast models run a lone request inline (no thread hand-off: lowest latency when idle);
        # batches always run on the model's thread, which keeps the event loop answering while a
        # batch computes and keeps the latency tail short under load (measured: p99 5x lower).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlscale-model")
        self._closing = False
        self._runner = asyncio.get_running_loop().create_task(self._run())

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _has_room(self) -> bool:
        """Room for one more request: within what drains in the target, and within the queue's
        hard bound (so the door, not a refusal, takes what the estimate would let past it)."""
        if len(self._pending) + self._let_in >= self.max_queue_size:
            return False
        return self._queued_rows + self._let_in < self.admission.room(self.max_batch_size)

    async def admit(self, deadline: float | None = None, tenant: str | None = None) -> None:
        """Return when the request may join the queue; wait at the door while the queue holds
        what drains within the target. The app calls it before reading the body, so a request
        refused here (Overloaded after ``max_wait``, DeadlineExceeded) cost no body read or decode.
        ``tenant``: whose share of the queue the request counts in (None: the one shared tenant).
        A request let in must then call ``submit(..., admitted=True, tenant=tenant)``."""
        if self._closing:
            raise VersionRetired()
        if not self._door and self._has_room():
            self._enter(tenant)
            return
        if len(self._door) >= self.max_waiting:
            self._shed("queue_full")
            raise Overloaded(
                f"the model is overloaded: {len(self._door)} requests already wait for room in its queue",
                retry_after=self.admission.retry_after(self._queued_rows + len(self._door)),
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        arrived = self._clock()
        self._door.append((future, arrived, tenant))
        _add(self._door_tenants, tenant, 1)
        if self._has_room():  # room freed while others waited, and no take since to open the door
            self._open_door()
        wait = self.admission.max_wait
        expired = False
        if deadline is not None and deadline - time.monotonic() < wait:
            wait, expired = max(0.0, deadline - time.monotonic()), True
        timer = loop.call_later(wait, _expire, future)
        try:
            try:
                await future
            except asyncio.CancelledError:
                # Cancelled (the client left) after being let in: give the room back, or it stays
                # taken for as long as the version is loaded.
                if future.done() and not future.cancelled() and future.exception() is None:
                    self.release(tenant)
                raise
            if tracing.enabled:
                waited = (self._clock() - arrived) * 1000
                tracing.event("waited for room in the queue", {"mlscale.admission.wait_ms": waited})
        except TimeoutError:
            if expired:
                raise DeadlineExceeded("the deadline passed while waiting for room in the model's queue") from None
            self._shed("admission")
            raise Overloaded(
                f"the model is overloaded: no room in its queue within {self.admission.max_wait:g} s",
                retry_after=self.admission.retry_after(self._queued_rows + len(self._door)),
            ) from None
        finally:
            timer.cancel()

    def release(self, tenant: str | None = None) -> None:
        """Give back the room of a request ``admit`` let in that will not ``submit`` (its body was
        malformed, too large or too slow). Without it that room stayed taken until the next batch,
        and with no batch coming, enough such requests kept every later one at the door for good."""
        self._let_in = max(0, self._let_in - 1)
        if tenant in self._tenant_let_in:
            _add(self._tenant_let_in, tenant, -1)
        self._open_door()

    def _enter(self, tenant: str | None) -> None:
        self._let_in += 1
        _add(self._tenant_let_in, tenant, 1)

    def _open_door(self) -> None:
        """Let door waiters in while the queue has room: the oldest first, the newest once the
        oldest has waited past the target (adaptive LIFO); with several tenants at the door, the
        tenant holding the least of the queue first, and the same order within its own waiters."""
        door = self._door
        if not door:
            self._last_in.clear()
            return
        stale_before = self._clock() - self.admission.target
        while door and self._has_room():
            if len(self._door_tenants) > 1:
                future, tenant = self._pop_fair(stale_before)
            elif door[0][1] < stale_before:
                future, _, tenant = door.pop()  # overloaded: the newest client is the one still waiting
            else:
                future, _, tenant = door.popleft()
            _add(self._door_tenants, tenant, -1)
            if not future.done():  # not timed out or disconnected
                future.set_result(None)
                self._enter(tenant)
                self._door_turn += 1
                self._last_in[tenant] = self._door_turn
        if not door:
            self._last_in.clear()

    def _pop_fair(self, stale_before: float) -> tuple[asyncio.Future, str | None]:
        """The next door waiter of the tenant holding the least (rows queued plus let in; ties:
        the tenant let in least recently, then the one waiting longest)."""

        def held(tenant: str | None) -> tuple[int, int]:
            share = self._tenant_rows.get(tenant, 0) + self._tenant_let_in.get(tenant, 0)
            return share, self._last_in.get(tenant, 0)

        tenant = min(self._door_tenants, key=held)  # dicts keep insertion order: longest waiting first
        positions = [i for i, entry in enumerate(self._door) if entry[2] == tenant]
        oldest = positions[0]
        index = positions[-1] if self._door[oldest][1] < stale_before else oldest
        future = self._door[index][0]
        del self._door[index]
        return future, tenant

    def _shed(self, reason: str) -> None:
        if self._on_shed is not None:
            self._on_shed(reason)

    async def submit(
        self,
        inputs: Arrays,
        deadline: float | None = None,
        outputs: tuple[str, ...] | None = None,
        admitted: bool = False,
        tenant: str | None = None,
    ) -> Arrays:
        """Outputs for one request's inputs; ``deadline`` is a time.monotonic() instant; ``outputs``
        names the outputs wanted (None: all); ``admitted``: the caller already passed ``admit``;
        ``tenant``: whose share of the queue it counts in."""
        if not admitted:
            await self.admit(deadline, tenant)
        # The request's room passes from "let in" to the queue (or is given back on a refusal).
        self._let_in = max(0, self._let_in - 1)
        if tenant in self._tenant_let_in:
            _add(self._tenant_let_in, tenant, -1)
        if self._closing and self._runner.done():
            raise VersionRetired()
        if len(self._pending) >= self.max_queue_size:  # the hard bound, whatever the estimate says
            self._shed("queue_full")
            self._open_door()
            raise Overloaded(
                f"the model's queue is full ({self.max_queue_size} requests waiting)",
                retry_after=self.admission.retry_after(self._queued_rows),
            )
        signature = _signature(inputs, outputs)
        rows = next(iter(inputs.values())).shape[0] if signature is not None else 0
        if signature is not None and any(a.shape[0] != rows for a in inputs.values()):
            self._open_door()  # its room is free again: a waiter may have it
            raise InvalidInput("all inputs must have the same size on axis 0 (the batch axis)")
        future = asyncio.get_running_loop().create_future()
        item = _Item(inputs, outputs, rows, signature or (id(inputs),), deadline, future, self._clock(), tenant)
        if tracing.enabled:
            from mlscale.tracing import spans

            item.trace = spans.capture()
        self._pending.append(item)
        self._queued_rows += max(rows, 1)
        _add(self._tenant_rows, tenant, max(rows, 1))
        self._wakeup.set()
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before its answer was ready") from None

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones and those waiting at the door (they are
        in flight too), then stop the runner."""
        self._closing = True
        while self._door:
            future, _, tenant = self._door.popleft()
            if not future.done():
                future.set_result(None)
                self._enter(tenant)
        self._door_tenants.clear()
        self._wakeup.set()
        await self._runner
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self.admission.on_idle()
                if self._closing:
                    if self._let_in <= 0:
                        return
                    # Requests let in are reading their bodies; one that failed to decode never
                    # comes, so wait a bounded time for the rest.
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), 1.0)
                    except TimeoutError:
                        return
                    continue
                # Requests let in but still reading their bodies keep their room: each one either
                # submits or releases (inference.py), so the count is exact. (Zeroing it here once
                # lost a request that finished reading its body while the version was unloading.)
                self._open_door()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_delay > 0:
                await self._wait_to_fill()
            else:
                # One turn of the loop lets requests already on the sockets join this batch.
                await asyncio.sleep(0)
            batch = self._take_batch()
            if batch:
                if tracing.enabled:
                    await self._execute_traced(batch)
                else:
                    await self._execute(batch)

    async def _wait_to_fill(self) -> None:
        until = self._pending[0].enqueued + self.max_delay
        while sum(i.rows for i in self._pending) < self.max_batch_size:
            remaining = until - self._clock()
            if remaining <= 0 or self._closing:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        """The oldest request plus queued ones of the same signature, up to max_batch_size rows."""
        if not self._pending:
            return []
        now = time.monotonic()
        clock = self._clock()
        batch: list[_Item] = []
        rows = 0
        drained = 0
        kept: deque[_Item] = deque()
        signature = None
        # With several tenants queued, no tenant gets more than an equal share of this batch in a
        # first pass; requests held back by that cap may still fill the batch afterwards.
        tenants = len(self._tenant_rows)
        cap = -(-self.max_batch_size // tenants) if tenants > 1 else self.max_batch_size
        taken: dict[str | None, int] = {}
        capped: list[_Item] = []
        while self._pending:
            item = self._pending.popleft()
            drained += max(item.rows, 1)
            _add(self._tenant_rows, item.tenant, -max(item.rows, 1))
            if item.future.done():  # its caller gave up (deadline or disconnect)
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed while queued"))
                continue
            if signature is None:
                signature = item.signature
            fits = item.signature == signature and (not batch or rows + item.rows <= self.max_batch_size)
            if fits and batch and taken.get(item.tenant, 0) + item.rows > cap:
                capped.append(item)
                fits = False
            if fits:
                batch.append(item)
                rows += item.rows
                taken[item.tenant] = taken.get(item.tenant, 0) + item.rows
            else:
                kept.append(item)
                drained -= max(item.rows, 1)
                _add(self._tenant_rows, item.tenant, max(item.rows, 1))
            if rows >= self.max_batch_size:
                break
        chosen: set[int] = set()
        for item in capped:  # room left after every tenant had its share: fill it in arrival order
            if rows + item.rows > self.max_batch_size:
                break
            chosen.add(id(item))
            _add(self._tenant_rows, item.tenant, -max(item.rows, 1))
            batch.append(item)
            rows += item.rows
            drained += max(item.rows, 1)
        if chosen:
            kept = deque(item for item in kept if id(item) not in chosen)
        kept.extend(self._pending)
        self._pending = kept
        self._queued_rows -= drained
        self.admission.on_drained(drained, clock)
        # Requests let in before this take have had a loop turn to reach submit(); any still on
        # their way are few, and forgetting them keeps a request that never came from holding room.
        self._let_in = 0
        self._tenant_let_in.clear()
        self._open_door()
        return batch

    async def _call(self, inputs: Arrays, outputs: tuple[str, ...] | None, alone: bool = False) -> Arrays:
        if tracing.enabled:  # a child of the batch span, when the batch is traced
            return await self._call_traced(inputs, outputs, alone)
        if self.inline and alone and not self._pending:
            return self._predict(inputs, outputs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, inputs, outputs)

    async def _call_traced(self, inputs: Arrays, outputs: tuple[str, ...] | None, alone: bool) -> Arrays:
        first = next(iter(inputs.values()), None)
        rows = first.shape[0] if getattr(first, "ndim", 0) > 0 else 0  # 0: a request without a batch axis
        with tracing.span("model", {"mlscale.batch.size": rows}):
            if self.inline and alone and not self._pending:
                return self._predict(inputs, outputs)
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, inputs, outputs)

    async def _execute(self, batch: list[_Item]) -> None:
        started = self._clock()
        if self._on_batch is not None:
            self._on_batch(sum(i.rows for i in batch) or 1, [started - i.enqueued for i in batch])
        if len(batch) == 1:
            await self._execute_alone(batch[0])
            return
        names = list(batch[0].inputs)
        joined = {n: np.concatenate([i.inputs[n] for i in batch]) for n in names}
        try:
            outputs = await self._call(joined, batch[0].outputs)
            total = sum(i.rows for i in batch)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or len(value) != total:
                    raise InferenceFailed(f"output {name!r} does not keep the batch axis")
        except Exception:
            # Find the culprit: every request runs alone, so only a bad one fails.
            for item in batch:
                await self._execute_alone(item)
            return
        start = 0
        for item in batch:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result({n: v[start:end] for n, v in outputs.items()})
            start = end

    async def _execute_traced(self, batch: list[_Item]) -> None:
        """``_execute`` inside a batch span when any of its requests is traced (see tracing.spans)."""
        captured = [i.trace for i in batch if i.trace is not None]
        if not captured:
            await self._execute(batch)
            return
        from mlscale.tracing import spans

        with spans.batch(captured, sum(i.rows for i in batch), len(batch), self.trace_attributes):
            await self._execute(batch)

    async def _execute_alone(self, item: _Item) -> None:
        try:
            result = await self._call(item.inputs, item.outputs, alone=True)
        except MlscaleError as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(InferenceFailed(f"the model failed on this input: {exc}"))
            return
        if not item.future.done():
            item.future.set_result(result)
