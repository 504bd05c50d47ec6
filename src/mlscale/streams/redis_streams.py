"""Redis Streams broker: one stream per partition, many records per stream entry.

Why packed: redis-py and Redis spend several microseconds per stream entry (XADD arguments, reply
parsing, the server's per-entry work), more than the processor's whole budget per event. So, as in
the NATS broker, an entry carries up to ``MAX_RECORDS`` records of one partition (``packing``):
fields ``n`` (record count), ``c`` (records appended to the partition so far, this entry included)
and ``v`` (a msgpack array of byte strings).

Offsets: an entry id ``ms-seq`` maps to the integer ``(ms << 20) + seq``, as before packing, so data
already in Redis keeps its offsets. The records of an entry take the offsets ``start .. start+n-1``
from its id; a Lua script appends the entry and then moves the stream's last id to ``start+n-1``
(XSETID, seq carried into ms past 2^20), so the next entry, ours or anyone's ``XADD * v payload``,
gets a larger id: offsets grow and never overlap, also with several writers (the script is atomic).
An entry without ``n`` (written by another tool, or before packing) is one record: its ``v`` field,
else its first field's value.

Reading after offset X: the entry holding the next record starts at or after X+1-(MAX_RECORDS-1)
(an entry spans at most MAX_RECORDS offsets), so XRANGE starts there and drops records <= X. What a
read unpacks beyond what the caller asked for is kept per (topic, partition) with the id of the last
entry read; a fetch from exactly the last handed-out offset takes it first and reads on after that
entry, so a hot partition is never re-read from the start of its entry.

Group delivery (``read``/``ack``) is built on ``fetch`` and the group's committed offsets, as on NATS
(no XREADGROUP: its pending list tracks entries, not records): a member resumes a gained partition
from the committed offset, and ``ack`` moves the committed offset forward only (a Lua max).

Counting records: ``c`` comes from a per-namespace hash (``{prefix}records``, field ``topic:p``)
incremented by the same script, which also adds the entries other tools appended since its last
append (the stream's length then grew by more than our entries; a stream with data from before
packing has them all counted at its first packed append). So ``lag`` is exact from two entries per
partition: the last one and the one holding the committed offset. Where either lacks ``c`` (the
last entry is someone else's) it counts entry by entry on the server, up to 10,000 entries per
partition. Trimming a stream (XTRIM, MAXLEN) would hide others' entries from that count; mlscale
does not trim.

Appends go in one pipeline (not a transaction: other writers may interleave whole entries, which
the ids keep apart); if an entry fails the call raises ``AppendIncomplete`` with the records that
did get in.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis

from mlscale.streams.broker import AppendIncomplete, Broker, CommittedOffsetReads
from mlscale.streams.packing import MAX_BYTES, MAX_RECORDS, group_records, pack, unpack

_SEQ_BITS = 20
_LAG_SCAN_ENTRIES = 10_000
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
# Append one entry of ARGV[2] records and keep later ids clear of its offsets. KEYS: stream, counts
# hash; ARGV: counts field, n, packed records. c also counts the entries others added since our last
# append (the stream grew by more than our entries), so lag stays exact with them in between.
# ms < 2^53 and seq + n < 2^53: exact in Lua doubles.
_APPEND_SCRIPT = """
local n = tonumber(ARGV[2])
local len = redis.call('XLEN', KEYS[1])
local others = len - tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. ':len') or '0')
if others < 0 then others = 0 end
local c = redis.call('HINCRBY', KEYS[2], ARGV[1], n + others)
local id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[2], 'c', tostring(c), 'v', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1] .. ':len', len + 1)
if n > 1 then
  local dash = string.find(id, '-', 1, true)
  local ms = tonumber(string.sub(id, 1, dash - 1))
  local seq = tonumber(string.sub(id, dash + 1)) + n - 1
  local carry = math.floor(seq / 1048576)
  redis.call('XSETID', KEYS[1], string.format('%.0f-%.0f', ms + carry, seq - carry * 1048576))
end
return id
"""
# Id, n and c of the last entry and, when ARGV[1] is an id, of the entry at or below it (else of the
# first entry, flagged 'first'), without sending the records themselves.
_META_SCRIPT = """
local out = {}
local function meta(r)
  local e = r[1]
  if not e then
    out[#out + 1] = ''; out[#out + 1] = ''; out[#out + 1] = ''
    return false
  end
  local n, c, f = '1', '', e[2]
  for i = 1, #f, 2 do
    if f[i] == 'n' then n = f[i + 1] elseif f[i] == 'c' then c = f[i + 1] end
  end
  out[#out + 1] = e[1]; out[#out + 1] = n; out[#out + 1] = c
  return true
end
meta(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1))
if ARGV[1] ~= '' then
  local at = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', 1)
  if #at > 0 then
    meta(at)
    out[#out + 1] = 'at'
  else
    meta(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1))
    out[#out + 1] = 'first'
  end
end
return out
"""
# Records in the entries from ARGV[1] (inclusive) on, reading at most ARGV[2] entries.
_COUNT_SCRIPT = """
local total, seen, start, cap = 0, 0, ARGV[1], tonumber(ARGV[2])
while seen < cap do
  local r = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)
  for _, e in ipairs(r) do
    local n, f = 1, e[2]
    for i = 1, #f, 2 do
      if f[i] == 'n' then n = tonumber(f[i + 1]) end
    end
    total = total + n
  end
  seen = seen + #r
  if #r < 100 then break end
  start = '(' .. r[#r][1]
end
return total
"""


def id_to_offset(entry_id: bytes | str) -> int:
    ms, seq = entry_id.split(b"-" if isinstance(entry_id, bytes) else "-")  # int() takes bytes digits
    return (int(ms) << _SEQ_BITS) + int(seq)


def offset_to_id(offset: int) -> str:
    return f"{offset >> _SEQ_BITS}-{offset & ((1 << _SEQ_BITS) - 1)}"


def _entry_values(fields: list) -> list[bytes]:
    """The records of one raw XRANGE entry (fields as a flat list)."""
    if len(fields) == 6 and fields[0] == b"n" and fields[4] == b"v":  # ours: n, c, v
        return unpack(fields[5])
    if len(fields) == 2:  # a plain entry: one field, one record
        return [fields[1]]
    named = dict(zip(fields[::2], fields[1::2], strict=True))
    if b"n" in named and b"v" in named:
        return unpack(named[b"v"])
    return [named.get(b"v", fields[1])] if fields else []


@dataclass
class _Cursor:
    """Where reading one partition stands: what the next fetch from ``after`` continues with."""

    after: int  # the last offset handed out (a fetch must ask for exactly this position to continue)
    next_id: str  # XRANGE start for the next read: "(id" after the last entry read, or an inclusive id
    per_entry: float = 64.0  # records per entry seen so far: sizes the next XRANGE's COUNT
    # Records unpacked but not yet handed out (an entry can hold more than a fetch asks for).
    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)


class RedisStreamsBroker(CommittedOffsetReads, Broker):
    """Topics as Redis streams ``{prefix}{topic}:{partition}``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
        prefix: str = "mlscale:stream:",
        max_bytes: int = MAX_BYTES,
    ) -> None:
        super().__init__(partitions, key_fields, member_ttl)
        self._r = redis.Redis.from_url(url)
        # Reads take XRANGE answers as the server sends them: redis-py's parser builds a dict per
        # entry, which was a third of the processor's time (cProfile, 2026-12-01).
        self._raw = redis.Redis.from_url(url)
        self._raw.response_callbacks.pop("XRANGE", None)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._counts = f"{prefix}records"  # field topic:partition -> records appended (the entries' c)
        self._max = self._r.register_script(_MAX_SCRIPT)
        self._add = self._r.register_script(_APPEND_SCRIPT)
        self._meta = self._r.register_script(_META_SCRIPT)
        self._count = self._r.register_script(_COUNT_SCRIPT)
        self._cursors: dict[tuple[str, int], _Cursor] = {}
        # read/ack (group delivery): this object's position per (topic, group, consumer) and partition.
        self._init_positions()

    def _stream(self, topic: str, partition: int) -> str:
        return f"{self.prefix}{topic}:{partition}"

    # -- writing -------------------------------------------------------------------------------
    def _append(
        self, topic: str, payloads: list[bytes], partitions: list[int], call_id: str | None = None
    ) -> list[int]:
        groups = group_records(payloads, partitions, self.max_bytes, "a Redis stream entry")
        pipe = self._r.pipeline(transaction=False)
        for p, idx in groups:
            data = pack([payloads[i] for i in idx])
            self._add(keys=[self._stream(topic, p), self._counts], args=[f"{topic}:{p}", len(idx), data], client=pipe)
        replies = pipe.execute(raise_on_error=False)
        offsets = [0] * len(payloads)
        failed: Exception | None = None
        appended = 0
        for reply, (_, idx) in zip(replies, groups, strict=True):
            if isinstance(reply, Exception):
                failed = failed or reply
                continue
            base = id_to_offset(reply)
            for j, i in enumerate(idx):
                offsets[i] = base + j
            appended += len(idx)
        if failed is not None:
            raise AppendIncomplete(
                f"appended {appended} of {len(payloads)} records to {topic!r} ({type(failed).__name__}: {failed}); "
                "running the call again appends those again",
                appended,
                len(payloads),
            )
        return offsets

    # -- membership ------------------------------------------------------------------------------
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
        self._forget_positions(topic, group, consumer)

    # -- reading by offset -------------------------------------------------------------------------
    def _cursor(self, topic: str, p: int, after: int) -> _Cursor:
        """The partition's cursor if it continues from ``after``, else a fresh one positioned there."""
        cursor = self._cursors.get((topic, p))
        if cursor is None or cursor.after != after:
            start = "-" if after < 0 else offset_to_id(max(0, after + 1 - (MAX_RECORDS - 1)))
            cursor = self._cursors[(topic, p)] = _Cursor(after, start)
        return cursor

    @staticmethod
    def _take(cursor: _Cursor, entries: list) -> None:
        """Unpack raw XRANGE entries into the cursor's buffer, dropping records at or below ``after``."""
        offsets, values = cursor.offsets, cursor.values
        before = len(offsets)
        for entry_id, fields in entries:
            ms, seq = entry_id.split(b"-")
            start = (int(ms) << _SEQ_BITS) + int(seq)
            records = _entry_values(fields)
            offsets.extend(range(start, start + len(records)))
            values.extend(records)
        cursor.next_id = "(" + entries[-1][0].decode()
        cursor.per_entry = max(1.0, (len(offsets) - before) / len(entries))
        if len(offsets) > before and offsets[before] <= cursor.after:  # the start of the entry holding after
            keep = bisect.bisect_right(offsets, cursor.after, lo=before)
            del offsets[before:keep], values[before:keep]

    def fetch_columns(
        self, topic: str, positions: Mapping[int, int], max_records: int
    ) -> list[tuple[int, list[int], list[bytes]]]:
        """``fetch`` without a Message per record: offsets and values per partition."""
        for key in [k for k in self._cursors if k[0] == topic and k[1] not in positions]:
            del self._cursors[key]  # partitions no longer read (lost to another member)
        out: dict[int, tuple[list[int], list[bytes]]] = {}
        at, budget, active = dict(positions), max_records, list(positions)
        # The budget is shared evenly, then what idle partitions left goes to the busy ones, so a
        # topic whose rows mostly sit in one partition (one hot entity) still fills a batch. A
        # partition stays in play while it fills its share or its last read was cut by COUNT.
        for _ in range(8):
            if not active or budget <= 0:
                break
            base, extra = divmod(budget, len(active))
            shares = {p: base + (i < extra) for i, p in enumerate(active) if base + (i < extra)}
            cursors = {p: self._cursor(topic, p, at[p]) for p in shares}
            reads = {p: n for p, n in shares.items() if len(cursors[p].offsets) < n}
            more: set[int] = set()
            if reads:
                pipe = self._raw.pipeline(transaction=False)
                counts = []
                for p, n in reads.items():
                    c = cursors[p]
                    count = max(1, min(1000, int((n - len(c.offsets)) / c.per_entry) + 1))
                    counts.append(count)
                    pipe.xrange(self._stream(topic, p), min=c.next_id, max="+", count=count)
                for p, count, entries in zip(reads, counts, pipe.execute(), strict=True):
                    if entries:
                        self._take(cursors[p], entries)
                        if len(entries) == count:
                            more.add(p)
            active = []
            for p, n in shares.items():
                c = cursors[p]
                offsets, values = c.offsets[:n], c.values[:n]
                del c.offsets[:n], c.values[:n]
                if offsets:
                    got = out.setdefault(p, ([], []))
                    got[0].extend(offsets)
                    got[1].extend(values)
                    c.after = at[p] = offsets[-1]
                    budget -= len(offsets)
                if len(offsets) == n or p in more:
                    active.append(p)
        return [(p, offsets, values) for p, (offsets, values) in out.items()]

    # -- the group's committed offsets (read/ack: CommittedOffsetReads) ---------------------------
    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        key = f"{self.prefix}committed:{topic}:{group}"
        pipe = self._r.pipeline(transaction=False)
        for p, off in offsets.items():
            self._max(keys=[key], args=[p, off], client=pipe)
        pipe.execute()

    def committed(self, topic: str, group: str) -> dict[int, int]:
        raw = self._r.hgetall(f"{self.prefix}committed:{topic}:{group}")
        return {int(k): int(v) for k, v in raw.items()}

    # -- counting ------------------------------------------------------------------------------
    def _metas(self, topic: str, after: Mapping[int, int] | None) -> list[list[bytes]]:
        """Per partition: last entry (id, n, c) and, with ``after``, the entry at or below it."""
        pipe = self._r.pipeline(transaction=False)
        for p in range(self.partitions):
            at = "" if after is None else offset_to_id(after[p]) if after[p] >= 0 else "0-0"
            self._meta(keys=[self._stream(topic, p)], args=[at], client=pipe)
        return pipe.execute()

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Offset of the last record per partition: the last entry's id plus its records less one."""
        return {p: id_to_offset(m[0]) + int(m[1]) - 1 for p, m in enumerate(self._metas(topic, None)) if m[0]}

    def lag(self, topic: str, group: str) -> int:
        """Records after the group's committed offsets (see the module's note on counting)."""
        committed = self.committed(topic, group)
        after = {p: committed.get(p, -1) for p in range(self.partitions)}
        total = 0
        for p, (last_id, last_n, last_c, at_id, at_n, at_c, where) in enumerate(self._metas(topic, after)):
            if not last_id or id_to_offset(last_id) + int(last_n) - 1 <= after[p]:
                continue
            # Records of the entry at or below the committed offset that are <= it (none for "first").
            done = 0 if where == b"first" else min(int(at_n), after[p] - id_to_offset(at_id) + 1)
            if last_c and at_c:
                before = int(at_c) - int(at_n) + done
                if int(last_c) >= before:
                    total += int(last_c) - before
                    continue
            start = at_id.decode() if at_id else "-"
            total += max(0, self._count(keys=[self._stream(topic, p)], args=[start, _LAG_SCAN_ENTRIES]) - done)
        return total

    # -- housekeeping --------------------------------------------------------------------------
    def delete_topic(self, topic: str) -> None:
        """Remove a topic's streams (tests and demos start clean)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(*[self._stream(topic, p) for p in range(self.partitions)])
        pipe.hdel(self._counts, *[f"{topic}:{p}{suffix}" for p in range(self.partitions) for suffix in ("", ":len")])
        pipe.execute()
        for key in [k for k in self._cursors if k[0] == topic]:
            del self._cursors[key]

    def delete_namespace(self) -> None:
        """Remove every key under this broker's prefix (tests and demos clean up)."""
        keys = list(self._r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self._r.delete(*keys[i : i + 500])
        self._cursors.clear()

    def close(self) -> None:
        self._r.close()
        self._raw.close()
