"""Feeds shared by vision members on several hosts: the stream processors' membership, reused.

Every ``mlscale vision run`` with the same ``[vision] membership`` and ``group`` is a member. A
member heartbeats through the membership broker (mlscale.streams: a Redis sorted set, a NATS
key-value entry, or an SQLite table; ``Broker.heartbeat``) every lease/3 seconds and gets the
live members back; each feed belongs to its rendezvous owner among them (``owner_of``, hashed by
feed name, so a member leaving moves only its own feeds and one joining takes only its share).
A member whose heartbeat is older than the lease has its feeds taken by the others at their next
heartbeat: a SIGKILLed host's cameras move within lease + lease/3 seconds, then warm up.

Fencing: taking a feed bumps its epoch in a stream checkpoint store (``Checkpoints.acquire``; the
same atomic bump the stream processors use, on Redis, PostgreSQL or SQLite). Every event a member
publishes to the shared sinks (the events topic, alert channels) passes two checks first: its own
lease has not run out (measured from before its last successful heartbeat went out, on its own
monotonic clock, so it stops before the store can expire it) and the feed's epoch is still its
own. Not atomic with the append: an event past its checks when the feed is taken can still land
(a process paused mid-append; a publish a NATS client retries after a cut heals), but never one
raised after the lease ran out, and the topic record carries the epoch, so a reader that keeps
the highest epoch per camera drops it. Each host's own events log (events_dir) is that host's
record and is not fenced.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

import msgspec

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.streams.broker import Broker, owner_of
from mlscale.streams.checkpoint import Checkpoints, open_checkpoints
from mlscale.streams.connect import open_broker
from mlscale.vision.events import Event, EventLog, Sink, deliver
from mlscale.vision.settings import FeedSettings, VisionSettings
from mlscale.vision.stats import VisionCollector

log = logging.getLogger("mlscale.vision")

# The membership "topic": members of a group heartbeat under (TOPIC, group) on the broker.
TOPIC = "vision-feeds"


def feed_part(name: str) -> int:
    """A feed's slot in the epoch store: stable by name (31 bits, the stores' INTEGER column)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def fencing_spec(settings: VisionSettings) -> str:
    """Where the feed epochs live: ``fencing``, else the membership Redis, else an SQLite file
    beside an embedded membership (one host). NATS holds no epochs: it needs ``fencing``."""
    if settings.fencing:
        return settings.fencing
    url = settings.membership
    if url.startswith(("redis://", "rediss://", "unix://")):
        return url
    if url.startswith(("nats://", "tls://")):
        raise ConfigError(
            '[vision] membership on NATS needs fencing = "postgresql://..." or "redis://..." (where feed epochs live)'
        )
    if "://" in url and not url.startswith("embedded:"):
        raise ConfigError(f"[vision] membership {url!r}: expected redis://..., nats://... or embedded:PATH")
    path = url.removeprefix("embedded:").removeprefix("//")
    if not path or path == ":memory:":
        raise ConfigError("[vision] membership: an embedded membership needs a file path (embedded:PATH)")
    return f"sqlite:{path}.epochs"


def _default_member() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Owned:
    """A feed this member runs: its epoch and the pipeline running it."""

    def __init__(self, epoch: int, pipeline) -> None:
        self.epoch = epoch
        self.pipeline = pipeline


class MemberPipeline:
    """Same face as VisionPipeline (start, stop, status, register_metrics, events) for one member
    of a group: it runs the feeds the membership gives it, one VisionPipeline per feed so a feed
    gained or lost never restarts the others' detectors."""

    def __init__(
        self,
        settings: VisionSettings,
        sinks: Iterable[Sink] = (),
        root: str | Path | None = None,
        *,
        broker: Broker | None = None,
        epochs: Checkpoints | None = None,
    ) -> None:
        if not settings.membership:
            raise ConfigError("[vision] membership is not set: MemberPipeline shares feeds through it")
        if not settings.feeds:
            raise ConfigError("[vision] has no feeds: add at least one [[vision.feeds]] table")
        names = [f.name for f in settings.feeds]
        if len(set(names)) != len(names):
            raise ConfigError(f"[vision] feed names must be unique, got {names}")
        parts: dict[int, str] = {}
        for name in names:
            other = parts.setdefault(feed_part(name), name)
            if other != name:
                raise ConfigError(f"[vision] feeds {other!r} and {name!r} hash alike; rename one")
        self.settings = settings
        self.root = Path(root) if root is not None else Path.cwd()
        self.sinks = list(sinks)
        self.member = settings.member or _default_member()
        self.lease = settings.lease_seconds
        self.name = f"vision/{settings.group}"
        events_dir = Path(settings.events_dir)
        self.events = EventLog(events_dir if events_dir.is_absolute() else self.root / events_dir)
        self._feeds: dict[str, FeedSettings] = {f.name: f for f in settings.feeds}
        self._epochs = epochs or open_checkpoints(fencing_spec(settings), self.root)
        self._own_broker = broker is None
        try:
            self._broker = broker or self._open_broker()
        except BaseException:
            self._epochs.close()
            raise
        self._owned: dict[str, _Owned] = {}
        self._members: list[str] = []
        self._lock = threading.RLock()  # guards _owned: the beat thread, the watchdog and stop
        self._stop = threading.Event()
        # Monotonic time the last successful heartbeat was SENT: the lease runs from there.
        self._lease_from = -float("inf")
        self._threads: list[threading.Thread] = []
        self._published = 0
        self.handovers = 0  # feeds this member gained after the first assignment (for status)
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> MemberPipeline:
        """Join, take this member's feeds, then heartbeat in the background. A bad setting fails at
        once; a store that does not answer is retried for ``timeout`` seconds (a JetStream cluster
        that has just started may have no leader yet), then fails."""
        self.started_at = time.time()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    self._beat(first=True)
                    break
                except ConfigError:
                    raise
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(f"vision membership {self._where()}: {why}") from exc
                    log.warning("vision member %s: joining failed (%s); retrying", self.member, why)
                    time.sleep(self.lease / 3)
        except BaseException:
            self.stop()
            raise
        for target, name in ((self._beat_loop, "vision-membership"), (self._watchdog, "vision-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every feed and leave the group at once, so the others take the feeds without waiting."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        with self._lock:
            for name in list(self._owned):
                self._release(name, "stopping", wait=True)
        try:
            self._broker.leave(TOPIC, self.settings.group, self.member)
        except Exception as exc:  # the store is gone: the lease runs out instead
            log.warning("vision member %s could not leave the group: %s", self.member, exc)
        self._broker.close()
        self._epochs.close()

    def __enter__(self) -> MemberPipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- membership ------------------------------------------------------------------------------
    def lease_valid(self) -> bool:
        return time.monotonic() - self._lease_from < self.lease

    def _where(self) -> str:
        """The membership URL without credentials."""
        scheme, _, rest = self.settings.membership.partition("://")
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else scheme

    def _open_broker(self) -> Broker:
        return open_broker(self.settings.membership, partitions=1, member_ttl=self.lease, root=self.root)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self._beat()
            except Exception as exc:  # the store unreachable: keep trying; the watchdog fences
                log.warning("vision member %s: heartbeat failed: %s", self.member, exc)
                if self._own_broker and not self.lease_valid():
                    self._reconnect()

    def _reconnect(self) -> None:
        """A fresh membership client once the lease is lost: a client may have given up for good
        (nats-py stops reconnecting after a few attempts), and a member cut off must rejoin when healed."""
        try:
            fresh = self._open_broker()
        except Exception as exc:
            log.warning("vision member %s: membership store still unreachable: %s", self.member, exc)
            return
        old, self._broker = self._broker, fresh
        # Closing a client stuck on a dead link may block: not on the heartbeat's thread.
        threading.Thread(target=old.close, name="vision-membership-close", daemon=True).start()

    def _watchdog(self) -> None:
        """Stop every feed once the lease has run out (a heartbeat may block on a dead link)."""
        while not self._stop.wait(min(0.25, self.lease / 6)):
            if not self.lease_valid() and self._owned:
                with self._lock:
                    for name in list(self._owned):
                        self._release(name, "lease ran out (no heartbeat reached the membership store)")

    def _beat(self, first: bool = False) -> None:
        sent = time.monotonic()
        members = self._broker.heartbeat(TOPIC, self.settings.group, self.member)
        if self.member not in members:  # expired between write and read: a clock far off
            raise ConfigError(f"vision member {self.member} is not among the live members after its heartbeat")
        self._lease_from = sent
        self._members = members
        wanted = {name for name in self._feeds if owner_of(name, members) == self.member}
        # Read outside the lock: a store that hangs must not block the watchdog's release.
        current = self._epochs.epochs(self.name) if self._owned else {}
        with self._lock:
            if self._stop.is_set():
                return
            for name, owned in list(self._owned.items()):
                if current.get(feed_part(name)) != owned.epoch:
                    self._release(name, "taken over by another member")
            for name in list(self._owned):
                if name not in wanted:
                    self._release(name, "now owned by another member")
            for name in sorted(wanted - set(self._owned)):
                self._take(name, first)

    def _take(self, name: str, first: bool) -> None:
        from mlscale.vision.pipeline import VisionPipeline

        epoch, _, _ = self._epochs.acquire(self.name, feed_part(name))
        one = msgspec.structs.replace(self.settings, feeds=[self._feeds[name]], membership="", events_topic="")
        pipeline = VisionPipeline(one, sinks=[self._fenced_sink(name, epoch)], root=self.root)
        try:
            pipeline.start()
        except ConfigError:
            if first:
                raise  # a missing or corrupt file: fail at start, as a single-host run does
            log.exception("vision member %s could not start camera %s", self.member, name)
            return
        self._owned[name] = _Owned(epoch, pipeline)
        self.handovers += 0 if first else 1
        log.info("vision member %s took camera %s (epoch %d)", self.member, name, epoch)

    def _release(self, name: str, why: str, wait: bool = False) -> None:
        """Drop a feed. Its pipeline is stopped in the background unless ``wait``: its detector may
        be blocked in a sink on a dead link, and the lock held here must not wait for that."""
        owned = self._owned.pop(name, None)
        if owned is not None:
            if wait:
                owned.pipeline.stop()
            else:
                threading.Thread(target=owned.pipeline.stop, name=f"vision-stop-{name}", daemon=True).start()
            log.info("vision member %s dropped camera %s: %s", self.member, name, why)

    # -- events ----------------------------------------------------------------------------------
    def _fenced_sink(self, name: str, epoch: int) -> Sink:
        encoder = msgspec.json.Encoder()
        topic = self.settings.events_topic

        def publish(event: Event) -> None:
            if not self.lease_valid():
                log.warning("camera %s: event %s not published (lease ran out)", name, event.kind)
                return
            if self._epochs.epochs(self.name).get(feed_part(name)) != epoch:
                log.warning("camera %s: event %s not published (taken over)", name, event.kind)
                return
            if topic:
                record = msgspec.to_builtins(msgspec.structs.replace(event, jpeg=None))
                record.update(member=self.member, epoch=epoch)
                self._broker.append(topic, [encoder.encode(record)], keys=[name])
                self._published += 1
            deliver(event, self.sinks)

        return publish

    # -- observing -------------------------------------------------------------------------------
    @property
    def live_members(self) -> list[str]:
        """The live members as of this member's last successful heartbeat."""
        return list(self._members)

    def owned(self) -> dict[str, int]:
        """Feed -> epoch, for the feeds this member runs now."""
        with self._lock:
            return {name: owned.epoch for name, owned in self._owned.items()}

    def status(self) -> dict:
        with self._lock:
            owned = dict(self._owned)
        order = {f.name: i for i, f in enumerate(self.settings.feeds)}
        cameras = [
            camera
            for name in sorted(owned, key=order.__getitem__)
            for camera in owned[name].pipeline.status()["cameras"]
        ]
        now = time.time()
        return {
            "running": self.started_at is not None and not self._stop.is_set(),
            "uptime_seconds": round(now - self.started_at, 1) if self.started_at else 0.0,
            "events_log": str(self.events.path),
            "member": self.member,
            "members": self.live_members,
            "lease_valid": self.lease_valid(),
            "epochs": {name: o.epoch for name, o in owned.items()},
            "handovers": self.handovers,
            "published": self._published,
            "cameras": cameras,
        }

    def register_metrics(self, registry=None) -> VisionCollector:
        """The per-camera metrics of the feeds this member runs, and the member's own (feeds owned,
        live members, lease, handovers), each labelled with the member's name."""
        from prometheus_client import REGISTRY

        collector = VisionCollector(self.status)
        (registry or REGISTRY).register(collector)
        (registry or REGISTRY).register(_MemberCollector(self))
        return collector


class _MemberCollector:
    """Prometheus view of one member: what to alert on when cameras are not where they should be."""

    def __init__(self, member: MemberPipeline) -> None:
        self._member = member

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self._member
        label = [m.member]
        owned = GaugeMetricFamily("mlscale_vision_member_feeds", "Feeds this member runs", labels=["member"])
        owned.add_metric(label, len(m.owned()))
        members = GaugeMetricFamily("mlscale_vision_members", "Live members this member sees", labels=["member"])
        members.add_metric(label, len(m.live_members))
        lease = GaugeMetricFamily("mlscale_vision_member_lease_valid", "1 while the lease holds", labels=["member"])
        lease.add_metric(label, 1.0 if m.lease_valid() else 0.0)
        handovers = CounterMetricFamily(
            "mlscale_vision_member_handovers", "Feeds taken after the first assignment", labels=["member"]
        )
        handovers.add_metric(label, m.handovers)
        yield from (owned, members, lease, handovers)
