"""NATS JetStream broker: one stream per topic, one subject per partition, records packed into messages.

Why records are packed: nats-py spends tens of microseconds of Python per JetStream message, on both
the publish and the fetch side, while the processor's whole budget is a few microseconds per event.
So one JetStream message carries up to ``MAX_RECORDS`` records of one partition (a msgpack array of
byte strings, marked by the ``Mlscale-Records`` header), and a record's offset is
``stream sequence << 20 | index in its message``: offsets still grow within a partition. A message
without the header (a plain ``nats pub``) is one record.

Appends publish asynchronously with a bounded number of messages in flight. Every message carries a
``Nats-Msg-Id`` derived from the call (a fresh nonce, or the caller's ``call_id``), its content and
its place in the call, so a publish retried after a lost or late acknowledgement inside the call, or
a failed call run again with the same ``call_id`` within the stream's ``duplicate_window``, is stored
once; two calls without a ``call_id`` never deduplicate each other. An append that still fails says how many records
are in the log (``AppendIncomplete``).

No durable consumers and no consumer per heartbeat: membership is ONE key per topic and group in
the ``{prefix}_members`` key-value bucket, a map member -> expiry changed by compare-and-set; the
group's offsets are keys in ``{prefix}_offsets``; reading uses one ephemeral, unacknowledged
(AckNone) pull consumer per partition being read, positioned at the reader's offset and deleted
when the position jumps, when the partition is no longer read, and on ``close()``.

nats-py is asyncio-only; this class runs one event loop in a daemon thread and offers the same
blocking interface as the other brokers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec
import nats
from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.streams.broker import AppendIncomplete, Broker, CommittedOffsetReads
from mlscale.streams.packing import MAX_BYTES, group_records, pack, unpack

SHIFT = 20  # offset = stream sequence << SHIFT | index of the record in its message
# packing.MAX_RECORDS (< 2**SHIFT) records per message; MAX_BYTES is below the server's 1 MiB max_payload.
COUNT_HEADER = "Mlscale-Records"
_pack, _unpack = pack, unpack


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


_TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key")


def nats_tls_options(servers: Sequence[str], options: Mapping[str, str]) -> dict:
    """TLS from the URL: ``tls://host:4222`` verifies the server against the system's CAs;
    ``?tls_ca=ca.pem`` against a private CA; ``&tls_cert=...&tls_key=...`` adds a client
    certificate (NATS ``verify``). Returns nats.connect's keyword arguments."""
    import ssl

    found = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    if not found and not any(server.startswith("tls://") for server in servers):
        return {}
    if bool(found.get("tls_cert")) != bool(found.get("tls_key")):
        raise ConfigError("NATS broker URL: tls_cert and tls_key go together")
    context = ssl.create_default_context(cafile=found.get("tls_ca") or None)
    if found.get("tls_cert"):
        context.load_cert_chain(found["tls_cert"], found["tls_key"])
    return {"tls": context}


@dataclass
class _Reader:
    """An ephemeral pull consumer of one partition and where its delivery stands."""

    sub: object
    name: str
    after: int  # the last offset handed out (the next fetch must ask for exactly this position)
    pending: int = 0  # messages the server still holds for it (so an empty answer can only be a late one)
    per_message: float = 1.0  # records per message seen so far: sizes the next pull request
    # Records unpacked but not yet handed out (a message can hold more than one fetch asks for).
    offsets: list[int] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)


class NatsBroker(CommittedOffsetReads, Broker):
    """Topics as JetStream streams ``{prefix}_{topic}`` with subjects ``{prefix}.{topic}.{partition}``."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
        prefix: str = "mlscale",
        max_in_flight: int = 64,
        append_timeout: float = 60.0,
        duplicate_window: float = 120.0,
        replicas: int | None = None,
    ) -> None:
        super().__init__(partitions, key_fields, member_ttl)
        servers, options = _parse_url(url)
        tls = nats_tls_options(servers, options)
        # Copies JetStream keeps of each stream and key-value bucket this broker creates: 3 on a
        # cluster, so a server lost loses nothing acknowledged (``?replicas=3`` in the URL).
        self.replicas = replicas or int(options.get("replicas", 1))
        if not 1 <= self.replicas <= 5:
            raise ConfigError(f"NATS broker URL {url!r}: replicas must be 1 to 5 (JetStream's limit)")
        self.prefix = _safe(prefix)
        self.append_timeout = append_timeout
        # Retries inside a call stay within the window, so they can never store a message twice.
        self.duplicate_window = max(duplicate_window, append_timeout * 2)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="nats-broker")
        self._thread.start()
        # Until the loop runs, _run would take it for closed (a race a busy machine loses).
        started = threading.Event()
        self._loop.call_soon_threadsafe(started.set)
        started.wait(10)
        try:
            self._nc = self._run(nats.connect(servers, connect_timeout=3, max_reconnect_attempts=3, **tls))
        except Exception as exc:
            self._stop_loop()
            # Hosts and ports only: the URL may carry a user and password.
            where = ",".join(server.rsplit("@", 1)[-1] for server in servers)
            raise ServiceUnavailable(f"cannot reach NATS at {where}: {exc}") from None
        self._js = self._nc.jetstream(publish_async_max_pending=max_in_flight)
        self._max_bytes = min(MAX_BYTES, self._nc.max_payload - 1024)
        self._streams: set[str] = set()
        self._members = None
        self._offsets = None
        self._readers: dict[tuple[str, int], _Reader] = {}
        # read/ack (group delivery): this object's position per (topic, group, consumer, partition).
        self._init_positions()

    # -- plumbing ------------------------------------------------------------------------------
    def _run(self, coro, timeout: float = 30.0):
        if not self._loop.is_running():
            coro.close()
            raise ServiceUnavailable("the NATS broker is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _stream_name(self, topic: str) -> str:
        return f"{self.prefix}_{_safe(topic)}"

    def _subject(self, topic: str, partition: int) -> str:
        return f"{self.prefix}.{_safe(topic)}.{partition}"

    async def _ensure_stream(self, topic: str) -> None:
        name = self._stream_name(topic)
        if name in self._streams:
            return
        try:
            await self._js.stream_info(name)
        except NotFoundError:
            await self._js.add_stream(
                name=name,
                subjects=[f"{self.prefix}.{_safe(topic)}.*"],
                duplicate_window=self.duplicate_window,
                num_replicas=self.replicas,
            )
        self._streams.add(name)

    # -- writing -------------------------------------------------------------------------------
    def _messages(self, payloads: list[bytes], partitions: list[int]) -> list[tuple[int, list[int]]]:
        """Records grouped into messages: (partition, indexes into payloads), in order per partition."""
        return group_records(payloads, partitions, self._max_bytes, "a NATS message")

    def _append(
        self, topic: str, payloads: list[bytes], partitions: list[int], call_id: str | None = None
    ) -> list[int]:
        groups = self._messages(payloads, partitions)
        # The call's identity: with the caller's call_id, the same records to the same partitions give
        # the same message ids, so running a failed call again stores only what is missing (within
        # the duplicate window); without one, a nonce keeps identical calls apart (a client may send
        # the same events twice on purpose; event-level dedup is the processor's dedup_key).
        packed = [_pack([payloads[i] for i in idx]) for _, idx in groups]
        h = hashlib.blake2b(_safe(topic).encode(), digest_size=12)
        h.update(call_id.encode() if call_id is not None else os.urandom(16))
        for (p, _), data in zip(groups, packed, strict=True):
            h.update(p.to_bytes(4, "little"))
            h.update(data)  # msgpack: lengths included, so different records never hash alike
        call = h.hexdigest()
        messages = [
            (self._subject(topic, p), data, {"Nats-Msg-Id": f"{call}.{k}", COUNT_HEADER: str(len(idx))})
            for k, ((p, idx), data) in enumerate(zip(groups, packed, strict=True))
        ]
        seqs = self._run(
            self._publish_all(topic, messages, len(payloads), groups, call_id), timeout=self.append_timeout + 30
        )
        offsets = [0] * len(payloads)
        for seq, (_, idx) in zip(seqs, groups, strict=True):
            base = seq << SHIFT
            for j, i in enumerate(idx):
                offsets[i] = base | j
        return offsets

    async def _publish_all(
        self, topic: str, messages: list, total: int, groups: list, call_id: str | None
    ) -> list[int]:
        """Publish every message with acknowledgements awaited together; resend the unacknowledged
        ones (same ids, so never stored twice) until all are in or ``append_timeout`` has passed."""
        await self._ensure_stream(topic)
        seqs: list[int | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        deadline = time.monotonic() + self.append_timeout
        error: BaseException | None = None
        attempt = 0
        while todo:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            futures: dict[asyncio.Future, int] = {}
            try:
                for k in todo:
                    subject, payload, headers = messages[k]
                    # At most max_in_flight unacknowledged messages: this waits for room.
                    fut = await self._js.publish_async(subject, payload, headers=dict(headers), wait_stall=remaining)
                    futures[fut] = k
            except Exception as exc:  # stalled, disconnected: what was sent is still awaited below
                error = exc
            if futures:
                done, pending = await asyncio.wait(futures, timeout=max(0.1, deadline - time.monotonic()))
                for fut in pending:
                    fut.cancel()
                for fut in done:
                    if fut.cancelled():
                        continue
                    if fut.exception() is not None:
                        error = fut.exception()
                    else:
                        seqs[futures[fut]] = fut.result().seq
                if pending and error is None:
                    error = TimeoutError(f"no acknowledgement within {self.append_timeout:.0f} s")
            todo = [k for k in todo if seqs[k] is None]
            if todo:
                attempt += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        if todo:
            appended = sum(len(groups[k][1]) for k in range(len(messages)) if seqs[k] is not None)
            raise AppendIncomplete(
                f"appended {appended} of {total} records to {topic!r} before giving up after "
                f"{self.append_timeout:.0f} s ({type(error).__name__}: {error})"
                + (
                    f"; running the same call (same call_id) again within {self.duplicate_window:.0f} s "
                    f"appends only the other {total - appended}"
                    if call_id is not None
                    else ""
                ),
                appended,
                total,
            )
        return seqs  # type: ignore[return-value]

    # -- membership: one compare-and-set key per topic and group, no consumers ---------------------
    async def _bucket(self, attr: str, suffix: str):
        kv = getattr(self, attr)
        if kv is None:
            bucket = f"{self.prefix}_{suffix}"
            try:
                kv = await self._js.key_value(bucket)
            except NotFoundError:
                kv = await self._js.create_key_value(bucket=bucket, history=1, replicas=self.replicas)
            setattr(self, attr, kv)
        return kv

    async def _update_members(self, topic: str, group: str, change) -> list[str]:
        """Apply ``change(members: dict name -> expiry)`` to the group's key with compare-and-set."""
        kv = await self._bucket("_members", "members")
        key = f"{_safe(topic)}.{_safe(group)}"
        deadline = time.monotonic() + 10
        for attempt in range(1_000):
            try:
                entry = await kv.get(key)
                members, revision = msgspec.json.decode(entry.value or b"{}"), entry.revision
            except KeyNotFoundError as err:  # a deleted key: the update must name the marker's revision
                entry = getattr(err, "entry", None)
                members, revision = {}, entry.revision if entry is not None else 0
            now = time.time()
            members = {m: exp for m, exp in members.items() if exp > now}
            change(members, now)
            try:
                await kv.update(key, msgspec.json.encode(members), last=revision)
                return sorted(members)
            except KeyWrongLastSequenceError:  # another member wrote first: read again
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(random.random() * min(0.2, 0.005 * (attempt + 1)))
        raise ServiceUnavailable(f"membership of group {group!r} on {topic!r} is contended; try again")

    def _heartbeat(self, topic: str, group: str, consumer: str) -> list[str]:
        def beat(members: dict, now: float) -> None:
            members[consumer] = now + self.member_ttl

        return self._run(self._update_members(topic, group, beat))

    def leave(self, topic: str, group: str, consumer: str) -> None:
        self._run(self._update_members(topic, group, lambda members, now: members.pop(consumer, None)))
        self._owned.pop((topic, group, consumer), None)
        self._forget_positions(topic, group, consumer)

    # -- reading by offset -------------------------------------------------------------------------
    async def _drop_reader(self, key: tuple[str, int]) -> None:
        reader = self._readers.pop(key, None)
        if reader is None:
            return
        with contextlib.suppress(Exception):
            await reader.sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self._js.delete_consumer(self._stream_name(key[0]), reader.name)

    async def _reader(self, topic: str, p: int, after: int) -> _Reader:
        """The partition's consumer positioned right after ``after`` (re-created when it is not)."""
        key = (topic, p)
        reader = self._readers.get(key)
        if reader is not None and reader.after == after:
            return reader
        await self._drop_reader(key)
        await self._ensure_stream(topic)
        start = max(1, after >> SHIFT) if after >= 0 else 0  # the message holding ``after``: skip up to it
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self._subject(topic, p),
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start else api.DeliverPolicy.ALL,
            opt_start_seq=start or None,
            # A reader whose process died goes away by itself; a live one fetches far more often.
            inactive_threshold=max(30.0, 10 * self.member_ttl),
            mem_storage=True,
            # Who made it: a consumer left by a killed process can be told from a live one's.
            description=f"mlscale reader: host {socket.gethostname()} pid {os.getpid()}",
        )
        sub = await self._js.pull_subscribe(self._subject(topic, p), stream=self._stream_name(topic), config=config)
        info = await sub.consumer_info()
        reader = _Reader(sub, info.name, after, pending=info.num_pending or 0)
        self._readers[key] = reader
        return reader

    async def _fetch_one(self, topic: str, p: int, after: int, budget: int) -> tuple[int, list[int], list[bytes]]:
        reader = await self._reader(topic, p, after)
        if len(reader.offsets) < budget:
            want = max(1, min(1000, int((budget - len(reader.offsets)) / reader.per_message) + 1))
            try:
                # A caught-up partition is polled briefly (it delays the others' records by this much;
                # what arrives later is queued on the subscription and taken first by the next fetch).
                # One with messages pending answers as soon as the server does: wait for that answer,
                # so a busy server never makes a partition with a backlog look caught up.
                msgs = await reader.sub.fetch(batch=want, timeout=2.0 if reader.pending else 0.02)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
                reader.pending = 0  # gone meanwhile (limits, a purge): poll briefly from now on
            except Exception:
                await self._drop_reader((topic, p))  # gone (inactive, server restart): re-create next time
                raise
            before = len(reader.offsets)
            for m in msgs:
                base = m.metadata.sequence.stream << SHIFT
                headers = m.headers
                if headers and COUNT_HEADER in headers:
                    values = _unpack(m.data)
                    reader.offsets.extend(range(base, base + len(values)))
                    reader.values.extend(values)
                else:
                    reader.offsets.append(base)
                    reader.values.append(m.data)
            if msgs:
                reader.per_message = max(1.0, (len(reader.offsets) - before) / len(msgs))
                reader.pending = msgs[-1].metadata.num_pending or 0
        offsets, values = reader.offsets[:budget], reader.values[:budget]
        del reader.offsets[:budget], reader.values[:budget]
        if offsets and offsets[0] <= after:  # the start of the message that holds ``after``
            keep = bisect.bisect_right(offsets, after)
            offsets, values = offsets[keep:], values[keep:]
        if not offsets:
            return p, [], []
        reader.after = offsets[-1]
        return p, offsets, values

    def fetch_columns(
        self, topic: str, positions: Mapping[int, int], max_records: int
    ) -> list[tuple[int, list[int], list[bytes]]]:
        async def go():
            # Readers of partitions no longer asked for (lost to another member) are deleted now.
            for key in [k for k in self._readers if k[0] == topic and k[1] not in positions]:
                await self._drop_reader(key)
            out: dict[int, tuple[list[int], list[bytes]]] = {}
            at, budget, active = dict(positions), max_records, list(positions)
            # The budget is shared evenly, then what idle partitions left goes to the busy ones, so a
            # topic whose rows mostly sit in one partition (one hot entity) still fills a batch.
            for _ in range(4):
                if not active or budget <= 0:
                    break
                base, extra = divmod(budget, len(active))
                shares = {p: base + (i < extra) for i, p in enumerate(active)}
                parts = await asyncio.gather(*[self._fetch_one(topic, p, at[p], n) for p, n in shares.items() if n])
                active = []
                for p, offs, vals in parts:
                    if not offs:
                        continue
                    got = out.setdefault(p, ([], []))
                    got[0].extend(offs)
                    got[1].extend(vals)
                    at[p] = offs[-1]
                    budget -= len(offs)
                    if len(offs) == shares[p]:
                        active.append(p)
            return [(p, offs, vals) for p, (offs, vals) in out.items()]

        return self._run(go())

    # -- the group's committed offsets, in the offsets bucket (read/ack: CommittedOffsetReads) -----
    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        async def go() -> None:
            kv = await self._bucket("_offsets", "offsets")
            await asyncio.gather(
                *[kv.put(f"{_safe(topic)}.{_safe(group)}.{p}", str(off).encode()) for p, off in offsets.items()]
            )

        self._run(go())

    def committed(self, topic: str, group: str) -> dict[int, int]:
        async def one(kv, p: int) -> int | None:
            try:
                entry = await kv.get(f"{_safe(topic)}.{_safe(group)}.{p}")
            except NotFoundError:  # never committed, or deleted
                return None
            return int(entry.value) if entry.value else None

        async def go() -> dict[int, int]:
            kv = await self._bucket("_offsets", "offsets")
            values = await asyncio.gather(*[one(kv, p) for p in range(self.partitions)])
            return {p: v for p, v in enumerate(values) if v is not None}

        return self._run(go())

    def end_offsets(self, topic: str) -> dict[int, int]:
        async def one(p: int) -> int | None:
            try:
                msg = await self._js.get_last_msg(self._stream_name(topic), self._subject(topic, p))
            except NotFoundError:
                return None
            count = int((msg.headers or {}).get(COUNT_HEADER, 1))
            return (msg.seq << SHIFT) | (count - 1)

        async def go() -> dict[int, int]:
            ends = await asyncio.gather(*[one(p) for p in range(self.partitions)])
            return {p: e for p, e in enumerate(ends) if e is not None}

        return self._run(go())

    def lag(self, topic: str, group: str) -> int:
        """Records after the group's committed offsets: exact within a message, else an estimate
        (messages of the stream in between, shared evenly by the partitions, times the records in the
        partition's last message); 0 exactly when the group has everything. Creates no consumer."""
        committed = self.committed(topic, group)
        total = 0
        for p, end in self.end_offsets(topic).items():
            c = committed.get(p, -1)
            if c >= end:
                continue
            end_seq, c_seq = end >> SHIFT, max(0, c >> SHIFT)
            per_message = (end & ((1 << SHIFT) - 1)) + 1
            if end_seq == c_seq:
                total += end - c
            else:
                between = max(1, (end_seq - c_seq) // self.partitions)
                total += between * per_message
        return total

    # -- housekeeping --------------------------------------------------------------------------
    def delete_topic(self, topic: str) -> None:
        """Remove a topic's stream (tests and demos start clean)."""

        async def go() -> None:
            for key in [k for k in self._readers if k[0] == topic]:
                await self._drop_reader(key)
            with contextlib.suppress(NotFoundError):
                await self._js.delete_stream(self._stream_name(topic))
            self._streams.discard(self._stream_name(topic))

        self._run(go())

    def delete_namespace(self) -> None:
        """Remove every stream and bucket under this broker's prefix (tests and demos clean up)."""

        async def go() -> None:
            for key in list(self._readers):
                await self._drop_reader(key)
            for info in await self._js.streams_info():
                name = info.config.name
                if name.startswith((f"{self.prefix}_", f"KV_{self.prefix}_")):
                    with contextlib.suppress(Exception):
                        await self._js.delete_stream(name)
            self._streams.clear()
            self._members = self._offsets = None

        self._run(go())

    def close(self) -> None:
        """Delete this broker's consumers (a clean exit leaves none on the server), then disconnect."""
        if not self._loop.is_running():
            return

        async def go() -> None:
            for key in list(self._readers):
                await self._drop_reader(key)
            await self._nc.close()

        try:
            self._run(go(), timeout=10)
        finally:
            self._stop_loop()


def _parse_url(url: str) -> tuple[list[str], dict[str, str]]:
    """``nats://a:4222,nats://b:4222?replicas=3``: the servers (any one is enough to find the rest
    of a cluster, several survive one being down at start) and the broker's options."""
    base, _, query = url.partition("?")
    options = dict(urllib.parse.parse_qsl(query))
    unknown = set(options) - {"replicas", *_TLS_OPTIONS}
    if unknown:
        raise ConfigError(
            f"NATS broker URL {url!r}: unknown option(s) {', '.join(sorted(unknown))} "
            f"(replicas, {', '.join(_TLS_OPTIONS)})"
        )
    return [server for server in base.split(",") if server], options
