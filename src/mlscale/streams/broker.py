"""The one broker interface: topics split into key partitions, consumer groups that read, ack and resume.

Why partitions: the stream processor keeps window state per entity, so every event of an entity must
reach the same processor instance in order. Records are routed to a partition by a hash of their key,
and the partitions of a topic are shared among the live members of a consumer group by rendezvous
hashing: when a member stops heartbeating, its partitions move to the others, which resume from the
group's committed offsets (everything not acknowledged is delivered again).

Offsets are integers that grow within a partition; each backend says how it maps its own positions
(row ids, Redis stream ids, JetStream sequences) onto them.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from mlscale.errors import InvalidInput, ServiceUnavailable

_encoder = msgspec.json.Encoder()


@dataclass(slots=True, frozen=True)
class Message:
    """One record read from a partition: where it sits and its payload (JSON bytes)."""

    topic: str
    partition: int
    offset: int
    value: bytes


class AppendIncomplete(ServiceUnavailable):
    """An append stopped part way: ``appended`` of ``total`` records are in the log.

    Raised only after the backend's own retries; the message says whether running the same call
    again is safe (a backend with publish deduplication appends only the rest).
    """

    def __init__(self, message: str, appended: int, total: int) -> None:
        super().__init__(message)
        self.appended, self.total = appended, total


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of a key: CRC32, stable across processes and Python versions (unlike hash())."""
    return zlib.crc32(key) % partitions


def owner_of(partition: int | str, members: Sequence[str]) -> str | None:
    """Rendezvous (highest random weight) owner: a member leaving moves only its own partitions.

    ``partition`` may be any stable name (mlscale.vision shares camera feeds by name with it)."""
    best, best_score = None, b""
    for member in members:
        score = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
        if best is None or score > best_score:
            best, best_score = member, score
    return best


def encode_records(records: Sequence[bytes | dict]) -> list[bytes]:
    """Records as bytes: dicts become JSON; bytes pass through untouched (validated by the consumer)."""
    out: list[bytes] = []
    for i, record in enumerate(records):
        if isinstance(record, bytes | bytearray | memoryview):
            out.append(bytes(record))
        elif isinstance(record, dict):
            out.append(_encoder.encode(record))
        else:
            raise InvalidInput(f"record {i} is a {type(record).__name__}; expected a JSON object or bytes")
    return out


def _key_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class Broker(ABC):
    """Append-only partitioned topics with consumer groups.

    ``key_fields`` maps a topic to the record field whose value routes a dict record to its partition
    (the entity key of the features computed from that topic); records of other topics, or given
    explicit ``keys``, are routed by those keys, and without any key they go to partition 0.
    """

    def __init__(
        self,
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
    ) -> None:
        if partitions < 1:
            raise InvalidInput("a topic needs at least one partition")
        self.partitions = partitions
        self.key_fields = dict(key_fields or {})
        self.member_ttl = member_ttl
        # (topic, group, consumer) -> partitions this consumer object owns after its last heartbeat.
        self._owned: dict[tuple[str, str, str], list[int]] = {}
        self._last_beat: dict[tuple[str, str, str], float] = {}

    # -- writing -------------------------------------------------------------------------------
    def route(
        self, topic: str, records: Sequence[bytes | dict], keys: Sequence[bytes | str] | None
    ) -> tuple[list[bytes], list[int]]:
        """Encode records and pick each one's partition."""
        payloads = encode_records(records)
        if keys is not None:
            if len(keys) != len(payloads):
                raise InvalidInput(f"{len(keys)} keys for {len(payloads)} records")
            return payloads, [partition_for(_key_bytes(k), self.partitions) for k in keys]
        field = self.key_fields.get(topic)
        if field is None or self.partitions == 1:
            return payloads, [0] * len(payloads)
        parts: list[int] = []
        for record, payload in zip(records, payloads, strict=True):
            if not isinstance(record, dict):
                try:
                    record = msgspec.json.decode(payload)
                except msgspec.DecodeError:
                    record = None
            value = record.get(field) if isinstance(record, dict) else None
            parts.append(partition_for(_key_bytes(value) if value is not None else b"", self.partitions))
        return payloads, parts

    def append(
        self,
        topic: str,
        records: Sequence[bytes | dict],
        keys: Sequence[bytes | str] | None = None,
        call_id: str | None = None,
    ) -> list[int]:
        """Append records (JSON objects or bytes); returns each record's offset in its partition.

        ``call_id`` names the call for brokers that deduplicate publishes (NATS JetStream): the same
        id with the same records within the broker's duplicate window is stored once, so a caller
        that retries a failed call with the same id appends only what is missing. Without it, every
        call is new: identical records sent twice are stored twice, on every broker."""
        if not records:
            return []
        payloads, parts = self.route(topic, records, keys)
        return self._append(topic, payloads, parts, call_id)

    @abstractmethod
    def _append(
        self, topic: str, payloads: list[bytes], partitions: list[int], call_id: str | None = None
    ) -> list[int]:
        """Write encoded payloads to their partitions, keeping their order within each partition.
        ``call_id``: see ``append``."""

    # -- consumer groups -----------------------------------------------------------------------
    def assignment(self, topic: str, group: str, consumer: str) -> list[int]:
        """Partitions this consumer owns now; heartbeats at most every ttl/3 and notices new owners."""
        ident = (topic, group, consumer)
        now = time.monotonic()
        if ident not in self._owned or now - self._last_beat.get(ident, 0.0) >= self.member_ttl / 3:
            members = self._heartbeat(topic, group, consumer)
            self._last_beat[ident] = now
            owned = [p for p in range(self.partitions) if owner_of(p, members) == consumer]
            previous = self._owned.get(ident)
            for p in owned:
                if previous is None or p not in previous:
                    self._acquire(topic, group, consumer, p)
            self._owned[ident] = owned
        return self._owned[ident]

    def read(
        self, topic: str, group: str, consumer: str, max_records: int = 1000, timeout: float = 1.0
    ) -> list[Message]:
        """Up to ``max_records`` unacknowledged records of this consumer's partitions, in partition order.

        Waits up to ``timeout`` seconds for the first record. Records read but not acknowledged are
        delivered again after a restart or to the member that takes the partition over.
        """
        deadline = time.monotonic() + timeout
        while True:
            owned = self.assignment(topic, group, consumer)
            out = self._read(topic, group, consumer, owned, max_records) if owned else []
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            self._wait(topic, min(remaining, self.member_ttl / 3))

    @abstractmethod
    def _read(self, topic: str, group: str, consumer: str, partitions: list[int], max_records: int) -> list[Message]:
        """Next records of these partitions without waiting."""

    def _wait(self, topic: str, seconds: float) -> None:
        """Block until new records may be there (backends with push notification override this)."""
        time.sleep(min(seconds, 0.02))

    # -- consumer-managed offsets (what the exactly-once processor uses) -------------------------
    @abstractmethod
    def fetch(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[Message]:
        """Records of the partitions in ``positions`` with offsets above each one's position, in order
        within a partition, up to ``max_records`` in all, without waiting (more than a poll).

        Unlike ``read``, this ignores the group's delivery state: a processor that keeps its offsets
        in its own checkpoint reads exactly from there, so two members that briefly both believe they
        own a partition each see all of it, and neither skips records the other was handed.
        """

    def fetch_columns(
        self, topic: str, positions: Mapping[int, int], max_records: int
    ) -> list[tuple[int, list[int], list[bytes]]]:
        """``fetch`` as (partition, offsets, values) per partition: no object per record on the hot path."""
        grouped: dict[int, tuple[list[int], list[bytes]]] = {}
        for m in self.fetch(topic, positions, max_records):
            offs, vals = grouped.setdefault(m.partition, ([], []))
            offs.append(m.offset)
            vals.append(m.value)
        return [(p, offs, vals) for p, (offs, vals) in grouped.items()]

    def commit(self, topic: str, group: str, offsets: Mapping[int, int]) -> None:
        """Record the group's progress per partition (for lag, and for ``read`` users that resume)."""
        self._commit(topic, group, {p: o for p, o in offsets.items() if o >= 0})

    @abstractmethod
    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None: ...

    @abstractmethod
    def ack(self, topic: str, group: str, messages: Sequence[Message]) -> None:
        """Acknowledge records: the group's committed offset moves past them."""

    @abstractmethod
    def committed(self, topic: str, group: str) -> dict[int, int]:
        """Committed offset per partition (the highest acknowledged offset; -1 or absent if none)."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Offset of the newest record per partition (-1 where empty)."""

    def lag(self, topic: str, group: str) -> int:
        """Records appended but not yet acknowledged by the group (an estimate on some backends)."""
        committed = self.committed(topic, group)
        return sum(self._count_after(topic, p, committed.get(p, -1)) for p in self.end_offsets(topic))

    def _count_after(self, topic: str, partition: int, offset: int) -> int:
        end = self.end_offsets(topic).get(partition, -1)
        return max(0, end - offset) if end >= 0 else 0

    def heartbeat(self, topic: str, group: str, member: str) -> list[str]:
        """Membership alone, for work that is not a partition of a topic (camera feeds in
        mlscale.vision): mark ``member`` alive in (topic, group) for ``member_ttl`` seconds and
        return the live members, sorted; ``owner_of(item, members)`` then shares the items out."""
        return self._heartbeat(topic, group, member)

    @abstractmethod
    def _heartbeat(self, topic: str, group: str, consumer: str) -> list[str]:
        """Record that ``consumer`` is alive for ``member_ttl`` seconds; return the live members."""

    def resume(self, topic: str, group: str, consumer: str, partition: int) -> None:
        """Deliver a partition again from the group's committed offset (after a processor lost it)."""
        self._acquire(topic, group, consumer, partition)

    def _acquire(self, topic: str, group: str, consumer: str, partition: int) -> None:  # noqa: B027
        """Called when this consumer gains a partition: resume from the committed offset."""

    def leave(self, topic: str, group: str, consumer: str) -> None:  # noqa: B027
        """Leave the group at once (a clean shutdown); a dead member leaves after ``member_ttl``."""

    def close(self) -> None:  # noqa: B027
        """Release connections and files."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CommittedOffsetReads:
    """``fetch``, ``read`` and ``ack`` for a log read by offset (records packed into entries, NATS
    and Redis Streams): a mixin for a Broker that implements ``fetch_columns`` and ``_commit``.

    Why not the backend's own consumer groups: they track entries, not the records packed in them.
    A member keeps its position per partition in memory, starts a gained partition from the group's
    committed offset, and ``ack`` moves that offset forward (never back); so what a dead member read
    but did not acknowledge is read again by the partition's next owner, as the interface promises.
    """

    def _init_positions(self) -> None:
        # This object's position per (topic, group, consumer) and partition.
        self._positions: dict[tuple[str, str, str], dict[int, int]] = {}

    def fetch(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[Message]:
        return [
            Message(topic, p, offset, value)
            for p, offsets, values in self.fetch_columns(topic, positions, max_records)  # type: ignore[attr-defined]
            for offset, value in zip(offsets, values, strict=True)
        ]

    def _forget_positions(self, topic: str, group: str, consumer: str) -> None:
        self._positions.pop((topic, group, consumer), None)

    def _acquire(self, topic: str, group: str, consumer: str, partition: int) -> None:
        # Resume from the group's committed offset: looked up at the next read.
        self._positions.get((topic, group, consumer), {}).pop(partition, None)

    def _read(self, topic: str, group: str, consumer: str, partitions: list[int], max_records: int) -> list[Message]:
        positions = self._positions.setdefault((topic, group, consumer), {})
        missing = [p for p in partitions if p not in positions]
        if missing:
            committed = self.committed(topic, group)  # type: ignore[attr-defined]
            for p in missing:
                positions[p] = committed.get(p, -1)
        for p in [p for p in positions if p not in partitions]:
            del positions[p]
        out = self.fetch(topic, {p: positions[p] for p in partitions}, max_records)
        for m in out:
            positions[m.partition] = m.offset
        return out

    def ack(self, topic: str, group: str, messages: Sequence[Message]) -> None:
        top: dict[int, int] = {}
        for m in messages:
            top[m.partition] = max(top.get(m.partition, -1), m.offset)
        if top:
            self._commit(topic, group, top)  # type: ignore[attr-defined]
