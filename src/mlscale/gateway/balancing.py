"""Choosing a replica: power of two choices on in-flight requests, or consistent hashing by key.

Power of two choices (pick two healthy replicas at random, send to the one with fewer requests in
flight) spreads load almost as well as "least loaded" without herding every gateway onto the same
replica. Consistent hashing keeps each model on the same replica while the set of replicas is
stable, so its caches stay warm, and moves only ~1/N of the models when a replica leaves.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence

from mlscale.storage.hashring import HashRing


class Backend:
    """One replica as the gateway sees it: health, load, and the tries in flight to it."""

    __slots__ = (
        "aborted",
        "back_at",
        "ejections",
        "failures",
        "healthy",
        "healthy_since",
        "inflight",
        "served",
        "shedding_until",
        "tries",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.inflight = 0
        self.healthy = True
        # Failures since the last successful probe, probes and requests alike.
        self.failures = 0
        self.served = 0
        # Route key (model) -> time.monotonic() until which this replica, having answered 503 for
        # that model, gets no new requests for it unless every replica is shedding. Per model:
        # one model's overload must not take the replica away from the others.
        self.shedding_until: dict[str, float] = {}
        # The tasks with a try waiting on this replica now, and those of them cancelled by abort().
        self.tries: set[asyncio.Task] = set()
        self.aborted: set[asyncio.Task] = set()
        # Flapping: ejections in a row (each within ``stable`` seconds of coming back), the time
        # (monotonic) before which a good probe does not bring it back, and when it last came back.
        self.ejections = 0
        self.back_at = 0.0
        self.healthy_since = time.monotonic()

    def usable(self, key: str) -> bool:
        """Healthy and not shedding load for ``key`` right now."""
        return self.healthy and self.shedding_until.get(key, 0.0) <= time.monotonic()

    def failed(self, threshold: int, *, unreachable: bool) -> bool:
        """Count one failure; True when it takes the replica out (the ``threshold``-th since the
        last successful probe).

        ``unreachable``: no connection could be made (refused, or no answer to connecting), so
        the tries in flight here will never be answered either (a host that died or was cut off
        sends nothing); past the threshold they are aborted, to be retried elsewhere, instead of
        waiting out the whole timeout. A replica that answers slowly is only taken out: its
        tries in flight may still complete."""
        self.failures += 1
        if self.failures < threshold:
            return False
        if unreachable:
            self.abort()
        if self.healthy:
            self.healthy = False
            return True
        return False

    def eject(self, now: float, interval: float, longest: float) -> float:
        """Record that the replica was just taken out; returns how long it must stay out.

        Why a growing wait: one good probe brings a replica back, which is right for a host that
        restarted, but a replica that fails again soon after every return (a bad disk, a model
        that crashes under load) would take a share of requests, fail them and be ejected over
        and over. As Envoy's outlier ejection does, each ejection in a row keeps it out longer:
        0, 1, 3, 7 ... times ``interval``, at most ``longest``; a replica that stayed in for
        ``longest`` seconds starts again at 0.
        """
        if now - self.healthy_since >= longest:
            self.ejections = 0
        self.ejections += 1
        wait = min(longest, interval * (2 ** (self.ejections - 1) - 1))
        self.back_at = now + wait
        return wait

    def recovered(self, now: float) -> bool:
        """A good probe: count the failures from zero; True when it brings the replica back now."""
        self.failures = 0
        if self.healthy or now < self.back_at:
            return False
        self.healthy, self.healthy_since = True, now
        return True

    def abort(self) -> None:
        """Cancel every try in flight to this replica; each sees it as this replica's failure."""
        for task in self.tries - self.aborted:
            self.aborted.add(task)
            task.cancel()

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, healthy={self.healthy}, inflight={self.inflight})"


class PowerOfTwo:
    """Two random healthy candidates; the one with fewer requests in flight wins."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def order(self, backends: Sequence[Backend], key: str) -> list[Backend]:
        healthy = [b for b in backends if b.usable(key)]
        if len(healthy) >= 2:
            first, second = self._random.sample(healthy, 2)
            best = first if first.inflight <= second.inflight else second
        elif healthy:
            best = healthy[0]
        else:
            best = None
        rest = sorted((b for b in backends if b is not best), key=lambda b: (not b.usable(key), b.inflight))
        return ([best] if best is not None else []) + rest


class ConsistentHash:
    """The key's owner first, then the next replicas on the ring (the retry order), with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam, 2018): a replica already holding more than
    ``load_factor`` times the average requests in flight is passed over for the next one on the
    ring, so one hot model spills onto a neighbour instead of queueing on its owner, while every
    other model stays where its caches are warm."""

    def __init__(self, backends: Sequence[Backend], load_factor: float = 1.25) -> None:
        if load_factor < 1:
            raise ValueError("load_factor must be at least 1")
        self._by_url = {b.url: b for b in backends}
        self._ring = HashRing(self._by_url, replicas=len(backends))
        self.load_factor = load_factor

    def order(self, backends: Sequence[Backend], key: str) -> list[Backend]:
        owners = [self._by_url[name] for name in self._ring.owners(key.encode())]
        usable = [b for b in owners if b.usable(key)]
        if len(usable) > 1:
            # +1: the request being placed; a replica may always take one beyond the bound's floor.
            bound = math.ceil(self.load_factor * (sum(b.inflight for b in usable) + 1) / len(usable))
            first = next((b for b in usable if b.inflight < bound), usable[0])
            usable.remove(first)
            usable.insert(0, first)
        return usable + [b for b in owners if b not in usable]
