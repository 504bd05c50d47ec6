"""Redis Streams broker: one stream per partition, consumer groups with XREADGROUP / XACK / XAUTOCLAIM.

Offsets: a stream id ``ms-seq`` maps to the integer ``ms << 20 | seq`` (ids grow, so offsets grow;
one millisecond would need a million appends to one partition to overflow ``seq``). When a member
gains a partition it first claims the partition's pending entries (those a dead or previous owner
read but never acknowledged) with XAUTOCLAIM, then reads new ones with ``>``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

import redis

from mlscale.streams.broker import Broker, Message

_SEQ_BITS = 20
# Committed offsets only move forward, whatever order acknowledgements arrive in. Offsets exceed 2^53,
# so Lua (doubles) compares them as decimal strings: longer is larger, else lexicographic.
_MAX_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2]
if (not cur) or #cur < #new or (#cur == #new and cur < new) then
  redis.call('HSET', KEYS[1], ARGV[1], new)
end
return 0
"""


def id_to_offset(entry_id: bytes | str) -> int:
    ms, seq = entry_id.split(b"-" if isinstance(entry_id, bytes) else "-")  # int() takes bytes digits
    return (int(ms) << _SEQ_BITS) | int(seq)


def offset_to_id(offset: int) -> str:
    return f"{offset >> _SEQ_BITS}-{offset & ((1 << _SEQ_BITS) - 1)}"


class RedisStreamsBroker(Broker):
    """Topics as Redis streams ``{prefix}{topic}:{partition}``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
        prefix: str = "mlscale:stream:",
    ) -> None:
        super().__init__(partitions, key_fields, member_ttl)
        self._r = redis.Redis.from_url(url)
        # The processor's reads (fetch_columns) take XRANGE answers as the server sends them: redis-py's
        # parser builds a dict per entry, which was a third of the processor's time (cProfile, 2026-12-01).
        self._raw = redis.Redis.from_url(url)
        self._raw.response_callbacks.pop("XRANGE", None)
        self.prefix = prefix
        self._max = self._r.register_script(_MAX_SCRIPT)
        # Partitions whose pending entries this consumer must still claim: key -> XAUTOCLAIM cursor.
        self._claim: dict[tuple[str, str, str, int], str] = {}

    def _stream(self, topic: str, partition: int) -> str:
        return f"{self.prefix}{topic}:{partition}"

    def _append(
        self, topic: str, payloads: list[bytes], partitions: list[int], call_id: str | None = None
    ) -> list[int]:
        pipe = self._r.pipeline(transaction=False)
        for payload, p in zip(payloads, partitions, strict=True):
            pipe.xadd(self._stream(topic, p), {b"v": payload})
        return [id_to_offset(i) for i in pipe.execute()]

    def _heartbeat(self, topic: str, group: str, consumer: str) -> list[str]:
        key = f"{self.prefix}members:{topic}:{group}"
        now = time.time()
        pipe = self._r.pipeline()
        pipe.zadd(key, {consumer: now + self.member_ttl})
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zrange(key, 0, -1)
        return sorted(m.decode() for m in pipe.execute()[2])

    def leave(self, topic: str, group: str, consumer: str) -> None:
        self._r.zrem(f"{self.prefix}members:{topic}:{group}", consumer)
        self._owned.pop((topic, group, consumer), None)

    def _ensure_group(self, topic: str, group: str, partition: int) -> None:
        try:
            self._r.xgroup_create(self._stream(topic, partition), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _acquire(self, topic: str, group: str, consumer: str, partition: int) -> None:
        self._ensure_group(topic, group, partition)
        self._claim[(topic, group, consumer, partition)] = "0-0"

    def _read(self, topic: str, group: str, consumer: str, partitions: list[int], max_records: int) -> list[Message]:
        out: list[Message] = []
        for p in partitions:
            key = (topic, group, consumer, p)
            cursor = self._claim.get(key)
            while cursor is not None and len(out) < max_records:
                nxt, entries, *_ = self._r.xautoclaim(
                    self._stream(topic, p), group, consumer, 0, start_id=cursor, count=max_records - len(out)
                )
                out.extend(Message(topic, p, id_to_offset(i), f[b"v"]) for i, f in entries if f)
                cursor = None if nxt in (b"0-0", "0-0") else nxt
                self._claim[key] = cursor
                if cursor is None:
                    del self._claim[key]
        if len(out) >= max_records:
            return out
        streams = {self._stream(topic, p): ">" for p in partitions if (topic, group, consumer, p) not in self._claim}
        if not streams:
            return out
        reply = self._r.xreadgroup(group, consumer, streams, count=max(1, (max_records - len(out)) // len(streams)))
        for name, entries in reply or []:
            p = int((name.decode() if isinstance(name, bytes) else name).rsplit(":", 1)[1])
            out.extend(Message(topic, p, id_to_offset(i), f[b"v"]) for i, f in entries if f)
        return out

    def fetch(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[Message]:
        return [
            Message(topic, p, offset, value)
            for p, offsets, values in self.fetch_columns(topic, positions, max_records)
            for offset, value in zip(offsets, values, strict=True)
        ]

    def fetch_columns(
        self, topic: str, positions: Mapping[int, int], max_records: int
    ) -> list[tuple[int, list[int], list[bytes]]]:
        """``fetch`` without a Message (or a dict) per record: offsets and values straight from the reply."""
        if not positions:
            return []
        share = max(1, max_records // len(positions))
        pipe = self._raw.pipeline(transaction=False)
        for p, after in positions.items():
            start = "-" if after < 0 else "(" + offset_to_id(after)
            pipe.xrange(self._stream(topic, p), min=start, max="+", count=share)
        out: list[tuple[int, list[int], list[bytes]]] = []
        for p, entries in zip(positions, pipe.execute(), strict=True):
            offsets: list[int] = []
            values: list[bytes] = []
            for entry_id, fields in entries or ():
                if fields:  # [b"v", payload]
                    ms, seq = entry_id.split(b"-")
                    offsets.append((int(ms) << _SEQ_BITS) | int(seq))
                    values.append(fields[1])
            if offsets:
                out.append((p, offsets, values))
        return out

    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        key = f"{self.prefix}committed:{topic}:{group}"
        pipe = self._r.pipeline(transaction=False)
        for p, off in offsets.items():
            self._max(keys=[key], args=[p, off], client=pipe)
        pipe.execute()

    def ack(self, topic: str, group: str, messages: Sequence[Message]) -> None:
        ids: dict[int, list[str]] = defaultdict(list)
        for m in messages:
            ids[m.partition].append(offset_to_id(m.offset))
        committed_key = f"{self.prefix}committed:{topic}:{group}"
        pipe = self._r.pipeline(transaction=False)
        for p, entry_ids in ids.items():
            pipe.xack(self._stream(topic, p), group, *entry_ids)
            self._max(keys=[committed_key], args=[p, max(id_to_offset(i) for i in entry_ids)], client=pipe)
        pipe.execute()

    def committed(self, topic: str, group: str) -> dict[int, int]:
        raw = self._r.hgetall(f"{self.prefix}committed:{topic}:{group}")
        return {int(k): int(v) for k, v in raw.items()}

    def end_offsets(self, topic: str) -> dict[int, int]:
        pipe = self._r.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xrevrange(self._stream(topic, p), count=1)
        return {p: id_to_offset(r[0][0]) for p, r in enumerate(pipe.execute()) if r}

    def lag(self, topic: str, group: str) -> int:
        """Entries after the committed offsets (counted up to 10,000 per partition), or, for a group
        that consumes with XREADGROUP, entries not yet delivered plus those not yet acknowledged."""
        committed = self.committed(topic, group)
        if committed:
            pipe = self._r.pipeline(transaction=False)
            for p in range(self.partitions):
                after = committed.get(p, -1)
                start = "-" if after < 0 else "(" + offset_to_id(after)
                pipe.xrange(self._stream(topic, p), min=start, max="+", count=10_000)
            return sum(len(r) for r in pipe.execute())
        total = 0
        for p in range(self.partitions):
            try:
                groups = self._r.xinfo_groups(self._stream(topic, p))
            except redis.ResponseError:
                continue
            for g in groups:
                if g["name"] in (group, group.encode()):
                    total += int(g.get("lag") or 0) + int(g.get("pending") or 0)
        return total

    def delete_topic(self, topic: str) -> None:
        """Remove a topic's streams (tests and demos start clean)."""
        self._r.delete(*[self._stream(topic, p) for p in range(self.partitions)])

    def delete_namespace(self) -> None:
        """Remove every key under this broker's prefix (tests and demos clean up)."""
        keys = list(self._r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self._r.delete(*keys[i : i + 500])

    def close(self) -> None:
        self._r.close()
        self._raw.close()
