"""Adaptive batching: concurrent requests for one model version joined on axis 0 and run once.

Under light load a request runs alone and at once (no waiting unless ``max_delay`` asks for it);
under heavy load, requests that arrive while a batch runs form the next batch, so batch size
grows with load by itself. Admission is by queue delay (see admission.py): a request that would
wait longer than the target is refused at once (503), and under sustained overload the newest
requests are served first. A hard bound on the queue stays as a backstop. A request whose batch
fails is retried alone, so one bad request never fails its batch-mates.

Tenants share the queue fairly once two or more have requests waiting (the tenant comes from the
caller's key; without auth there is one tenant and nothing below applies): at the door, a tenant
holding less than an equal share of the queued rows is admitted even when the queue as a whole is
past its delay target (the tenant over its share is the one refused); and each batch takes at most
an equal share of its rows from any one tenant before filling up with whatever waits, so a light
tenant's request rides the next batch instead of queueing behind a heavy tenant's backlog.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlscale.errors import DeadlineExceeded, InvalidInput, MlscaleError, Overloaded
from mlscale.serving.admission import QueueDelayAdmission

Arrays = dict[str, np.ndarray]
# predict(inputs, wanted outputs or None for all) -> outputs
Predict = Callable[[Arrays, tuple[str, ...] | None], Arrays]


class InferenceFailed(InvalidInput):
    """The model raised on this request's input."""


class _Item:
    __slots__ = ("deadline", "enqueued", "future", "inputs", "outputs", "rows", "signature", "tenant")

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
        inline: bool = False,
        on_batch: Callable[[int, list[float]], None] | None = None,
        admission: QueueDelayAdmission | None = None,
        on_shed: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_queue_size = max_queue_size
        self.inline = inline
        self._on_batch = on_batch
        # Measures queue delay; tests pass their own to step time without sleeping.
        self._clock = clock
        self.admission = admission or QueueDelayAdmission()
        # Called with the reason ("admission", "queue_timeout", "queue_full") of every refusal.
        self._on_shed = on_shed
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        # Queued rows per tenant (tenants with none are removed): the fair share's bookkeeping.
        self._tenant_rows: dict[str | None, int] = {}
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

    def admit(self, tenant: str | None = None) -> None:
        """Raise Overloaded when a new request should not even be read: the queue is being closed,
        is full, or its expected wait exceeds the queue-delay target (unless ``tenant`` holds less
        than an equal share of the queue). Cheap (no body needed), so the app calls it before
        reading the request."""
        if self._closing:
            raise Overloaded("the model version is being unloaded")
        if len(self._pending) >= self.max_queue_size:
            self._shed("queue_full")
            raise Overloaded(
                f"the model's queue is full ({self.max_queue_size} requests waiting)",
                retry_after=self.admission.retry_after(self._queued_rows),
            )
        if self.admission.refuses(self._queued_rows, self.max_batch_size) and not self._under_share(tenant):
            self._shed("admission")
            wait = self.admission.expected_wait(self._queued_rows)
            raise Overloaded(
                f"the model is overloaded: a new request would wait {wait * 1000:.0f} ms in its queue "
                f"(target {self.admission.target * 1000:.0f} ms)",
                retry_after=self.admission.retry_after(self._queued_rows),
            )

    def _under_share(self, tenant: str | None) -> bool:
        """True when other tenants have rows queued and ``tenant`` holds less than an equal share
        (a request without a tenant is judged on the whole queue, as without auth)."""
        if tenant is None:
            return False
        held = self._tenant_rows.get(tenant, 0)
        others = len(self._tenant_rows) - (1 if held else 0)
        if others == 0:
            return False
        return held < self._queued_rows / (others + 1)

    def _shed(self, reason: str) -> None:
        if self._on_shed is not None:
            self._on_shed(reason)

    async def submit(
        self,
        inputs: Arrays,
        deadline: float | None = None,
        outputs: tuple[str, ...] | None = None,
        tenant: str | None = None,
    ) -> Arrays:
        """Outputs for one request's inputs; ``deadline`` is a time.monotonic() instant; ``outputs``
        names the outputs wanted (None: all); ``tenant`` whose share of the queue it counts in."""
        self.admit(tenant)
        signature = _signature(inputs, outputs)
        rows = next(iter(inputs.values())).shape[0] if signature is not None else 0
        if signature is not None and any(a.shape[0] != rows for a in inputs.values()):
            raise InvalidInput("all inputs must have the same size on axis 0 (the batch axis)")
        future = asyncio.get_running_loop().create_future()
        item = _Item(inputs, outputs, rows, signature or (id(inputs),), deadline, future, self._clock(), tenant)
        self._pending.append(item)
        self._queued_rows += max(rows, 1)
        self._tenant_rows[tenant] = self._tenant_rows.get(tenant, 0) + max(rows, 1)
        self._wakeup.set()
        if deadline is None:
            return await future
        try:
            return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before its answer was ready") from None

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones, then stop the runner."""
        self._closing = True
        self._wakeup.set()
        await self._runner
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self.admission.on_idle()
                if self._closing:
                    return
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
        """The oldest request plus queued ones of the same signature, up to max_batch_size rows;
        under overload the newest instead, and requests older than the target are refused."""
        if not self._pending:
            return []
        now = time.monotonic()
        clock = self._clock()
        admission = self.admission
        admission.on_take(clock - self._pending[0].enqueued, clock)
        overloaded = admission.overloaded
        if overloaded:
            self._pending.reverse()  # adaptive LIFO: the newest requests' clients still wait
        stale_before = clock - admission.target
        batch: list[_Item] = []
        rows = 0
        drained = 0
        kept: deque[_Item] = deque()
        signature = None
        # With several tenants waiting, no tenant gets more than an equal share of this batch in a
        # first pass; requests held back by that cap may still fill the batch afterwards.
        tenants = len(self._tenant_rows)
        cap = -(-self.max_batch_size // tenants) if tenants > 1 else self.max_batch_size
        taken: dict[str | None, int] = {}
        capped: list[_Item] = []
        while self._pending:
            item = self._pending.popleft()
            drained += max(item.rows, 1)
            self._forget(item)
            if item.future.done():  # its caller gave up (deadline or disconnect)
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("the deadline passed while queued"))
                continue
            if overloaded and item.enqueued < stale_before:
                self._shed("queue_timeout")
                item.future.set_exception(
                    Overloaded(
                        f"the model is overloaded: the request waited over "
                        f"{admission.target * 1000:.0f} ms in its queue",
                        retry_after=admission.retry_after(self._queued_rows),
                    )
                )
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
                self._remember(item)
            if rows >= self.max_batch_size:
                break
        chosen: set[int] = set()
        for item in capped:  # room left after every tenant had its share: fill it in arrival order
            if rows + item.rows > self.max_batch_size:
                break
            chosen.add(id(item))
            self._forget(item)
            batch.append(item)
            rows += item.rows
            drained += max(item.rows, 1)
        if chosen:
            kept = deque(item for item in kept if id(item) not in chosen)
        kept.extend(self._pending)
        if overloaded:
            kept.reverse()  # back to arrival order
        self._pending = kept
        self._queued_rows -= drained
        admission.on_drained(drained, clock)
        return batch

    def _forget(self, item: _Item) -> None:
        left = self._tenant_rows.get(item.tenant, 0) - max(item.rows, 1)
        if left > 0:
            self._tenant_rows[item.tenant] = left
        else:
            self._tenant_rows.pop(item.tenant, None)

    def _remember(self, item: _Item) -> None:
        self._tenant_rows[item.tenant] = self._tenant_rows.get(item.tenant, 0) + max(item.rows, 1)

    async def _call(self, inputs: Arrays, outputs: tuple[str, ...] | None, alone: bool = False) -> Arrays:
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
