"""The stream processor: broker records -> windowed aggregations -> online store, exactly-once in effect.

One loop per batch (see checkpoint.py for why the order below gives exactly-once effect):
  1. fetch a batch from the partitions this instance owns in its consumer group, each from the
     offset in its own checkpoint (consumer-managed offsets, as Kafka Streams does: the group's
     delivery state could hand some records to a member that is about to lose the partition);
  2. skip records at or below each partition's offset (defensive; fetch starts after it);
  3. decode per feature into columns; with a ``dedup_key``, events seen before are dropped (dedup.py:
     the seen keys are state, checkpointed with the windows); malformed and late records go to the
     dead-letter topic. Dead letters carry the reason and the source position; they are
     at-least-once: a replay may repeat one, with the same topic/partition/offset so a reader can
     deduplicate;
  4. update window state (vectorised);
  5. flush: write the windows changed since the last flush to the online store, when the processor
     has caught up with its partitions (a fetch came back short), when ``flush_interval`` has
     passed, and always before a checkpoint. Under a backlog a window touched by many batches is
     then written once per flush rather than once per batch (with 100,000 keys this halves the
     writes); once caught up every batch is flushed at once, so freshness does not suffer;
  6. every ``checkpoint_interval`` seconds, flush, commit state + offsets in one transaction, then
     record the offsets in the broker's group (for lag).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from mlscale.storage.base import KeyValue
from mlscale.streams import metrics
from mlscale.streams.broker import Broker, Message
from mlscale.streams.checkpoint import Checkpoints, open_checkpoints
from mlscale.streams.decode import Columns, FeatureDecoder
from mlscale.streams.dedup import Deduplicator, state_name
from mlscale.streams.definitions import CompiledFeature, WindowedFeature
from mlscale.streams.online import value_header
from mlscale.streams.windows import new_state

_encode = msgspec.json.Encoder().encode


def dead_letter_topic(topic: str) -> str:
    return f"{topic}-dead-letters"


@dataclass
class _Partition:
    epoch: int
    offset: int
    states: dict
    dedup: dict[str, Deduplicator]
    changed: bool = False

    def blobs(self) -> dict[str, bytes]:
        """Everything a checkpoint holds for this partition: window state and seen keys per feature."""
        out = {n: s.snapshot() for n, s in self.states.items()}
        out.update({state_name(n): d.snapshot() for n, d in self.dedup.items()})
        return out


@dataclass
class StepResult:
    processed: int = 0
    # Records dropped as already seen: by offset (a replay) or by the features' dedup_key.
    duplicates: int = 0
    dead_letters: int = 0
    # Records that no feature took (each was malformed or late for every feature reading it).
    failed: int = 0
    written: int = 0


class StreamProcessor:
    """Computes windowed features from their source topics into a KeyValue online store.

    Several instances with the same ``group`` (and checkpoint store) share the partitions; each must
    have its own ``consumer`` name (default: host-pid-random).
    """

    def __init__(
        self,
        broker: Broker,
        features: Sequence[WindowedFeature | CompiledFeature],
        sink: KeyValue,
        checkpoints: Checkpoints | str | Path,
        group: str = "mlscale-features",
        consumer: str | None = None,
        batch_size: int = 20_000,
        checkpoint_interval: float = 5.0,
        flush_interval: float = 2.0,
    ) -> None:
        self.broker = broker
        self.features = [f.compile() if isinstance(f, WindowedFeature) else f for f in features]
        self.sink = sink
        self.checkpoints = checkpoints if isinstance(checkpoints, Checkpoints) else open_checkpoints(checkpoints)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch_size = batch_size
        self.checkpoint_interval = checkpoint_interval
        self.flush_interval = flush_interval
        self.by_topic: dict[str, list[CompiledFeature]] = defaultdict(list)
        for f in self.features:
            self.by_topic[f.source].append(f)
        self.decoders = {f.name: FeatureDecoder(f) for f in self.features}
        self.parts: dict[str, dict[int, _Partition]] = {t: {} for t in self.by_topic}
        self._last_checkpoint = self._last_flush = time.monotonic()
        self._unflushed = False

    def _name(self, topic: str) -> str:
        return f"{self.group}/{topic}"

    # -- ownership -------------------------------------------------------------------------------
    def _sync_assignment(self, topic: str) -> None:
        owned = set(self.broker.assignment(topic, self.group, self.consumer))
        parts = self.parts[topic]
        for p in list(parts):
            if p not in owned:
                del parts[p]  # another member owns it now; its checkpoint is the truth
        for p in owned - set(parts):
            epoch, offset, blobs = self.checkpoints.acquire(self._name(topic), p)
            states, dedup = {}, {}
            for f in self.by_topic[topic]:
                state = new_state(f)
                if f.name in blobs:
                    state.restore(blobs[f.name])
                states[f.name] = state
                if f.dedup_key is not None:
                    dedup[f.name] = Deduplicator(f.dedup_horizon_ms)
                    if state_name(f.name) in blobs:
                        dedup[f.name].restore(blobs[state_name(f.name)])
            parts[p] = _Partition(epoch, offset, states, dedup)
            if offset >= 0:
                # A kill between the checkpoint and the group commit leaves the group behind; with no
                # new record the partition would never be committed again and lag would stay > 0.
                self.broker.commit(topic, self.group, {p: offset})

    # -- one batch -------------------------------------------------------------------------------
    def step(self, timeout: float = 0.5) -> StepResult:
        """Read and process one batch of each topic; checkpoint when the interval has passed."""
        result = StepResult()
        deadline = time.monotonic() + timeout
        caught_up = True
        while True:
            for topic in self.by_topic:
                self._sync_assignment(topic)
                positions = {p: part.offset for p, part in self.parts[topic].items()}
                batches = self.broker.fetch_columns(topic, positions, self.batch_size)
                if batches:
                    self._process(topic, batches, result)
                    caught_up = caught_up and sum(len(b[1]) for b in batches) < self.batch_size
            if result.processed or result.dead_letters or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        now = time.monotonic()
        if now - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint(result)
        elif self._unflushed and (caught_up or now - self._last_flush >= self.flush_interval):
            self.flush(result)
        return result

    def _process(self, topic: str, batches: list[tuple[int, list[int], list[bytes]]], result: StepResult) -> None:
        parts = self.parts[topic]
        by_part = {p: (offs, vals) for p, offs, vals in batches}
        # Fencing before computing: a partition another instance has taken over since this one loaded
        # it is dropped, so a slow instance does not overwrite the new owner's values.
        epochs = self.checkpoints.epochs(self._name(topic))
        for p in [p for p in by_part if p in parts and epochs.get(p) != parts[p].epoch]:
            del parts[p]
            del by_part[p]
        dead: list[bytes] = []
        processed = duplicates = failed = 0
        for p, (offsets, values) in by_part.items():
            part = parts.get(p)
            if part is None:
                continue
            if offsets[0] <= part.offset:  # defensive: fetch starts after the checkpoint already
                keep = [i for i, off in enumerate(offsets) if off > part.offset]
                duplicates += len(offsets) - len(keep)
                offsets, values = [offsets[i] for i in keep], [values[i] for i in keep]
            if not offsets:
                continue
            fresh = _Records(topic, p, offsets, values)
            taken = np.zeros(len(values), dtype=bool)  # by at least one feature, or a known duplicate
            repeated = np.zeros(len(values), dtype=bool)
            for f in self.by_topic[topic]:
                state = part.states[f.name]
                cols, bad = self.decoders[f.name].decode(values)
                on_time = state.admit(cols.ts_ms)
                wm = state.watermark
                for i, reason in bad:
                    dead.append(self._dead(fresh[i], f, "malformed", reason))
                seen = part.dedup.get(f.name)
                if seen is not None:
                    dup = seen.duplicates(cols.entities, cols.keys, cols.ts_ms, on_time)
                    repeated[cols.index[dup]] = True
                    late, keep = ~on_time & ~dup, on_time & ~dup
                    seen.expire(wm)
                else:
                    late, keep = ~on_time, on_time
                for j in np.flatnonzero(late).tolist():
                    msg = fresh[int(cols.index[j])]
                    reason = f"late: event time {int(cols.ts_ms[j])} ms is before the watermark {wm} ms"
                    dead.append(self._dead(msg, f, "late", reason))
                if not keep.all():
                    cols = _take(cols, keep)
                state.update(cols)
                taken[cols.index] = True
            part.offset = offsets[-1]
            part.changed = True
            self._unflushed = True
            processed += len(offsets)
            duplicates += int(repeated.sum())
            failed += int((~taken & ~repeated).sum())
        if dead:
            self.broker.append(dead_letter_topic(topic), dead, keys=[b""] * len(dead))
        result.processed += processed
        result.duplicates += duplicates
        result.failed += failed
        result.dead_letters += len(dead)
        metrics.EVENTS.labels(topic, "processed").inc(processed)
        if duplicates:
            metrics.EVENTS.labels(topic, "duplicate").inc(duplicates)

    def _dead(self, msg: Message, f: CompiledFeature, kind: str, reason: str) -> bytes:
        metrics.DEAD_LETTERS.labels(msg.topic, kind).inc()
        metrics.EVENTS.labels(msg.topic, kind).inc()
        try:
            record = msgspec.json.decode(msg.value)
        except msgspec.DecodeError:
            record = msg.value.decode("utf-8", "replace")
        return _encode(
            {
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "feature": f.name,
                "reason": reason,
                "kind": kind,
                "record": record,
            }
        )

    # -- online writes and checkpoints ------------------------------------------------------------
    def flush(self, result: StepResult | None = None) -> None:
        """Write every window changed since the last flush (and evict the ones now final).

        Partitions another instance has taken over since the last batch are dropped unwritten,
        so a slow instance does not overwrite the new owner's values with a flush it had pending.
        That check and the write are two steps, so the write itself is fenced too: each value
        carries its partition's epoch and the store keeps a value with a newer one.
        """
        self._last_flush = time.monotonic()
        self._unflushed = False
        puts_by_ttl: dict[float | None, dict[bytes, bytes]] = defaultdict(dict)
        # Each key's version, updated in step with puts_by_ttl so both keep one order (a key seen
        # twice, such as entities 7 and "7" which render alike, keeps its place and its last value).
        versions_by_ttl: dict[float | None, dict[bytes, int]] = defaultdict(dict)
        deletes: list[bytes] = []
        for topic, parts in self.parts.items():
            epochs = self.checkpoints.epochs(self._name(topic)) if parts else {}
            for p in [p for p in parts if epochs.get(p) != parts[p].epoch]:
                del parts[p]
            for part in parts.values():
                header = value_header(part.epoch)
                for f in self.by_topic[topic]:
                    put, delete = part.states[f.name].drain(header)
                    puts_by_ttl[f.ttl_s].update(put)
                    versions_by_ttl[f.ttl_s].update(dict.fromkeys(put, part.epoch))
                    deletes.extend(delete)
        for ttl, puts in puts_by_ttl.items():
            if puts:
                self.sink.set_many_if_newer(puts, list(versions_by_ttl[ttl].values()), ttl=ttl)
                if result is not None:
                    result.written += len(puts)
        if deletes:
            self.sink.delete(deletes)

    def checkpoint(self, result: StepResult | None = None) -> None:
        """Flush, then commit state + offsets of changed partitions in one transaction, then acknowledge."""
        self.flush(result)
        self._last_checkpoint = time.monotonic()
        for topic, parts in self.parts.items():
            updates = {p: (part.epoch, part.offset, part.blobs()) for p, part in parts.items() if part.changed}
            if not updates:
                continue
            for p in self.checkpoints.commit(self._name(topic), updates):
                parts.pop(p, None)  # fenced: another instance owns it now
            for part in parts.values():
                part.changed = False
            # The group's committed offsets only feed lag and monitoring: the checkpoint is the truth.
            self.broker.commit(topic, self.group, {p: u[1] for p, u in updates.items() if p in parts})

    def lag(self) -> dict[str, int]:
        out = {}
        for topic in self.by_topic:
            out[topic] = self.broker.lag(topic, self.group)
            metrics.LAG.labels(topic, self.group).set(out[topic])
        return out

    def run(
        self,
        stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[StepResult], None] | None = None,
        idle_exit: float | None = None,
        poll_timeout: float = 0.5,
    ) -> None:
        """Process until ``stop()`` is true (or nothing arrived for ``idle_exit`` seconds); then leave.

        A clean stop checkpoints first. An exception (a store down, Ctrl-C mid-batch) does NOT: the
        state may hold half a batch, so the next run replays from the last checkpoint instead. After
        an exception, make a new processor rather than stepping this one again.
        """
        idle_since = time.monotonic()
        if idle_exit is not None:
            poll_timeout = min(poll_timeout, max(idle_exit / 2, 0.01))
        try:
            while not stop():
                res = self.step(timeout=poll_timeout)
                if on_step:
                    on_step(res)
                if res.processed or res.duplicates:
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    break
            self.checkpoint()
        finally:
            for topic in self.by_topic:
                with contextlib.suppress(Exception):
                    self.broker.leave(topic, self.group, self.consumer)

    def close(self) -> None:
        self.checkpoints.close()


class _Records:
    """Records of one partition as two lists; indexing gives a Message (only dead letters need one)."""

    def __init__(self, topic: str, partition: int, offsets: list[int], values: list[bytes]) -> None:
        self.topic, self.partition, self.offsets, self.values = topic, partition, offsets, values

    def __getitem__(self, i: int) -> Message:
        return Message(self.topic, self.partition, self.offsets[i], self.values[i])


def _take(cols: Columns, mask: np.ndarray) -> Columns:
    idx = np.flatnonzero(mask).tolist()
    return Columns(
        index=cols.index[mask],
        entities=[cols.entities[i] for i in idx],
        ts_ms=cols.ts_ms[mask],
        numeric={k: v[mask] for k, v in cols.numeric.items()},
        distinct={k: [v[i] for i in idx] for k, v in cols.distinct.items()},
        keys=None if cols.keys is None else [cols.keys[i] for i in idx],
    )
