"""NATS JetStream broker: one stream per topic, one subject and one durable pull consumer per partition.

Offsets are JetStream stream sequences (they grow within a subject, so within a partition). The group's
committed offset is the consumer's ack floor (AckAll: acknowledging a record acknowledges all before
it). When a member gains a partition it re-creates the durable consumer from the ack floor, so records
a dead owner had fetched but not acknowledged come back at once instead of after ``ack_wait``.
Membership lives in a JetStream key-value bucket whose entries expire after ``member_ttl``.

nats-py is asyncio-only; this class runs one event loop in a daemon thread and offers the same
blocking interface as the other brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Mapping, Sequence

import msgspec
import nats
from nats.js import api
from nats.js.errors import NotFoundError

from mlscale.errors import ServiceUnavailable
from mlscale.streams.broker import Broker, Message


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


_TLS_ARGS = ("tls_ca", "tls_cert", "tls_key")


def nats_tls_options(url: str) -> tuple[str, dict]:
    """TLS from the URL: ``tls://host:4222`` verifies the server against the system's CAs;
    ``?tls_ca=ca.pem`` against a private CA; ``&tls_cert=...&tls_key=...`` adds a client
    certificate (NATS ``verify``). Returns the URL without those arguments and nats.connect's
    keyword arguments."""
    import ssl
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = {k: v for k, v in query if k in _TLS_ARGS}
    clean = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in _TLS_ARGS])))
    if not found and parts.scheme != "tls":
        return clean, {}
    if bool(found.get("tls_cert")) != bool(found.get("tls_key")):
        from mlscale.errors import ConfigError

        raise ConfigError(f"NATS URL {parts.scheme}://{parts.hostname}: tls_cert and tls_key go together")
    context = ssl.create_default_context(cafile=found.get("tls_ca") or None)
    if found.get("tls_cert"):
        context.load_cert_chain(found["tls_cert"], found["tls_key"])
    return clean, {"tls": context}


class NatsBroker(Broker):
    """Topics as JetStream streams ``{prefix}_{topic}`` with subjects ``{prefix}.{topic}.{partition}``."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        partitions: int = 8,
        key_fields: Mapping[str, str] | None = None,
        member_ttl: float = 3.0,
        prefix: str = "mlscale",
        ack_wait: float = 30.0,
    ) -> None:
        super().__init__(partitions, key_fields, member_ttl)
        self.prefix = _safe(prefix)
        self.ack_wait = ack_wait
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="nats-broker")
        self._thread.start()
        url, tls = nats_tls_options(url)
        try:
            self._nc = self._run(nats.connect(url, connect_timeout=3, max_reconnect_attempts=3, **tls))
        except Exception as exc:
            self._stop_loop()
            # Host and port only: the URL may carry a user and password.
            where = url.rsplit("@", 1)[-1].split("?", 1)[0]
            raise ServiceUnavailable(f"cannot reach NATS at {where}: {exc}") from None
        self._js = self._nc.jetstream()
        self._streams: set[str] = set()
        self._subs: dict[tuple[str, str, int], object] = {}
        # Unacknowledged JetStream messages by (topic, group, partition, offset), to ack by offset.
        self._inflight: dict[tuple[str, str, int], dict[int, object]] = {}
        self._kv = None
        self._offsets = None
        self._readers: dict[tuple[str, int], list] = {}

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
            await self._js.add_stream(name=name, subjects=[f"{self.prefix}.{_safe(topic)}.*"])
        self._streams.add(name)

    # -- writing -------------------------------------------------------------------------------
    def _append(self, topic: str, payloads: list[bytes], partitions: list[int]) -> list[int]:
        async def go() -> list[int]:
            await self._ensure_stream(topic)
            out: list[int] = []
            # Publishes are written to the connection in order, so order within a subject holds
            # while the acknowledgements are awaited together.
            for start in range(0, len(payloads), 2000):
                acks = await asyncio.gather(
                    *[
                        self._js.publish(self._subject(topic, p), payload)
                        for payload, p in zip(
                            payloads[start : start + 2000], partitions[start : start + 2000], strict=True
                        )
                    ]
                )
                out.extend(a.seq for a in acks)
            return out

        return self._run(go(), timeout=120)

    # -- membership ----------------------------------------------------------------------------
    async def _bucket(self):
        if self._kv is None:
            bucket = f"{self.prefix}_members"
            try:
                self._kv = await self._js.key_value(bucket)
            except Exception:
                self._kv = await self._js.create_key_value(bucket=bucket, ttl=self.member_ttl)
        return self._kv

    def _heartbeat(self, topic: str, group: str, consumer: str) -> list[str]:
        prefix = f"{_safe(topic)}.{_safe(group)}."

        async def go() -> list[str]:
            kv = await self._bucket()
            now = time.time()
            await kv.put(prefix + _safe(consumer), msgspec.json.encode([consumer, now + self.member_ttl]))
            members = []
            try:
                # Filtered key listing needs NATS 2.10; filter here so 2.9 servers work too.
                keys = [k for k in await kv.keys() if k.startswith(prefix)]
            except Exception:  # nats raises NoKeysError on an empty bucket
                keys = []
            for key in keys:
                entry = await kv.get(key)
                if entry.value:
                    name, expires = msgspec.json.decode(entry.value)
                    if expires > now:
                        members.append(name)
            return sorted(members)

        return self._run(go())

    def leave(self, topic: str, group: str, consumer: str) -> None:
        async def go() -> None:
            kv = await self._bucket()
            await kv.delete(f"{_safe(topic)}.{_safe(group)}.{_safe(consumer)}")

        self._run(go())
        self._owned.pop((topic, group, consumer), None)

    # -- consuming -----------------------------------------------------------------------------
    def _durable(self, group: str, partition: int) -> str:
        return f"{_safe(group)}_{partition}"

    def _acquire(self, topic: str, group: str, consumer: str, partition: int) -> None:
        async def go() -> None:
            await self._ensure_stream(topic)
            stream, durable = self._stream_name(topic), self._durable(group, partition)
            floor = 0
            try:
                info = await self._js.consumer_info(stream, durable)
                floor = info.ack_floor.stream_seq or 0
                await self._js.delete_consumer(stream, durable)
            except NotFoundError:
                pass
            config = api.ConsumerConfig(
                durable_name=durable,
                ack_policy=api.AckPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=-1,
                filter_subject=self._subject(topic, partition),
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if floor else api.DeliverPolicy.ALL,
                opt_start_seq=floor + 1 if floor else None,
            )
            sub = await self._js.pull_subscribe(
                self._subject(topic, partition), durable=durable, stream=stream, config=config
            )
            old = self._subs.pop((topic, group, partition), None)
            if old is not None:
                await old.unsubscribe()
            self._subs[(topic, group, partition)] = sub
            self._inflight[(topic, group, partition)] = {}

        self._run(go())

    def _read(self, topic: str, group: str, consumer: str, partitions: list[int], max_records: int) -> list[Message]:
        share = max(1, max_records // len(partitions))

        async def one(p: int) -> list[Message]:
            sub = self._subs[(topic, group, p)]
            try:
                msgs = await sub.fetch(batch=share, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                return []
            inflight = self._inflight[(topic, group, p)]
            out = []
            for m in msgs:
                seq = m.metadata.sequence.stream
                inflight[seq] = m
                out.append(Message(topic, p, seq, m.data))
            return out

        async def go() -> list[Message]:
            parts = await asyncio.gather(*[one(p) for p in partitions])
            return [m for part in parts for m in part]

        return self._run(go())

    def _wait(self, topic: str, seconds: float) -> None:
        """The fetches already waited."""

    # -- consumer-managed offsets -----------------------------------------------------------------
    async def _reader(self, topic: str, p: int, after: int):
        """An ephemeral pull consumer positioned after ``after``; re-created when asked elsewhere."""
        key = (topic, p)
        cached = self._readers.get(key)
        if cached is not None and cached[1] == after:
            return cached[0]
        if cached is not None:
            with contextlib.suppress(Exception):
                await cached[0].unsubscribe()
        await self._ensure_stream(topic)
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.ALL,
            ack_wait=86_400,
            max_ack_pending=-1,
            filter_subject=self._subject(topic, p),
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after >= 0 else api.DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after >= 0 else None,
            inactive_threshold=60.0,
            mem_storage=True,
        )
        sub = await self._js.pull_subscribe(self._subject(topic, p), stream=self._stream_name(topic), config=config)
        self._readers[key] = [sub, after]
        return sub

    def fetch(self, topic: str, positions: Mapping[int, int], max_records: int) -> list[Message]:
        if not positions:
            return []
        share = max(1, max_records // len(positions))

        async def one(p: int, after: int) -> list[Message]:
            sub = await self._reader(topic, p, after)
            try:
                msgs = await sub.fetch(batch=share, timeout=0.05)
            except (TimeoutError, nats.errors.TimeoutError):
                return []
            if not msgs:
                return []
            await msgs[-1].ack()  # AckAll: keeps the ephemeral consumer from redelivering
            out = [Message(topic, p, m.metadata.sequence.stream, m.data) for m in msgs]
            self._readers[(topic, p)][1] = out[-1].offset
            return out

        async def go() -> list[Message]:
            parts = await asyncio.gather(*[one(p, a) for p, a in positions.items()])
            return [m for part in parts for m in part]

        return self._run(go())

    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        async def go() -> None:
            kv = await self._offsets_bucket()
            for p, off in offsets.items():
                await kv.put(f"{_safe(topic)}.{_safe(group)}.{p}", str(off).encode())

        self._run(go())

    async def _offsets_bucket(self):
        if self._offsets is None:
            bucket = f"{self.prefix}_offsets"
            try:
                self._offsets = await self._js.key_value(bucket)
            except Exception:
                self._offsets = await self._js.create_key_value(bucket=bucket)
        return self._offsets

    def ack(self, topic: str, group: str, messages: Sequence[Message]) -> None:
        top: dict[int, int] = {}
        for m in messages:
            top[m.partition] = max(top.get(m.partition, -1), m.offset)

        async def go() -> None:
            for p, off in top.items():
                inflight = self._inflight.get((topic, group, p), {})
                msg = inflight.get(off)
                if msg is not None:
                    await msg.ack()
                for seq in [s for s in inflight if s <= off]:
                    del inflight[seq]
            await self._nc.flush()

        self._run(go())

    def committed(self, topic: str, group: str) -> dict[int, int]:
        async def go() -> dict[int, int]:
            out = {}
            kv = await self._offsets_bucket()
            for p in range(self.partitions):
                with contextlib.suppress(Exception):
                    entry = await kv.get(f"{_safe(topic)}.{_safe(group)}.{p}")
                    if entry.value:
                        out[p] = int(entry.value)
            for p in range(self.partitions):
                try:
                    info = await self._js.consumer_info(self._stream_name(topic), self._durable(group, p))
                except NotFoundError:
                    continue
                if info.ack_floor.stream_seq:
                    out[p] = max(out.get(p, 0), info.ack_floor.stream_seq)
            return out

        return self._run(go())

    def end_offsets(self, topic: str) -> dict[int, int]:
        async def go() -> dict[int, int]:
            out = {}
            for p in range(self.partitions):
                try:
                    msg = await self._js.get_last_msg(self._stream_name(topic), self._subject(topic, p))
                except NotFoundError:
                    continue
                out[p] = msg.seq
            return out

        return self._run(go())

    def lag(self, topic: str, group: str) -> int:
        """Records after the group's committed offsets. JetStream counts pending records per consumer,
        so a short-lived consumer positioned at each committed offset does the counting."""
        committed = self.committed(topic, group)

        async def count_after(p: int, after: int) -> int:
            config = api.ConsumerConfig(
                ack_policy=api.AckPolicy.ALL,
                filter_subject=self._subject(topic, p),
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after > 0 else api.DeliverPolicy.ALL,
                opt_start_seq=after + 1 if after > 0 else None,
                inactive_threshold=5.0,
                mem_storage=True,
            )
            info = await self._js.add_consumer(self._stream_name(topic), config)
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream_name(topic), info.name)
            return info.num_pending or 0

        async def go() -> int:
            await self._ensure_stream(topic)
            counts = await asyncio.gather(*[count_after(p, committed.get(p, 0)) for p in range(self.partitions)])
            return sum(counts)

        return self._run(go())

    def delete_topic(self, topic: str) -> None:
        """Remove a topic's stream (tests and demos start clean)."""

        async def go() -> None:
            with contextlib.suppress(NotFoundError):
                await self._js.delete_stream(self._stream_name(topic))
            self._streams.discard(self._stream_name(topic))

        self._run(go())

    def delete_namespace(self) -> None:
        """Remove every stream and bucket under this broker's prefix (tests and demos clean up)."""

        async def go() -> None:
            for info in await self._js.streams_info():
                name = info.config.name
                if name.startswith((f"{self.prefix}_", f"KV_{self.prefix}_")):
                    with contextlib.suppress(Exception):
                        await self._js.delete_stream(name)
            self._streams.clear()
            self._kv = self._offsets = None

        self._run(go())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            self._run(self._nc.close(), timeout=5)
        finally:
            self._stop_loop()
