"""A NATS server dies under appends to a stream replicated 3 times: nothing acknowledged is lost.

Through mlscale's NATS broker, which creates the topic's stream (and its key-value buckets) with 3
replicas when its URL says ``?replicas=3``; the killed server is the stream's leader, so a new
leader must be elected and the client must move over.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import nats

from mlscale.streams.nats_jetstream import NatsBroker
from mlscale.testing.netcluster import NetCluster

PARTITIONS = 4
BATCH = 50
MAX_BATCHES = 2000
MAX_SECONDS = 30.0


async def _stream(cluster: NetCluster, action: str, name: str) -> str | None:
    nc = await nats.connect(cluster.nats_urls, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream(timeout=5)
        if action == "delete":
            await js.delete_stream(name)
            return None
        deadline = time.monotonic() + 20
        while True:  # the leader, once every replica is current (after a restart, it catches up)
            info = await js.stream_info(name)
            replicas = info.cluster.replicas or []
            if action != "caught-up" or (len(replicas) == 2 and all(r.current for r in replicas)):
                return info.cluster.leader
            assert time.monotonic() < deadline, f"stream replicas not current: {replicas}"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def _read_all(broker: NatsBroker, topic: str, retries: list[str]) -> list[dict]:
    """Every record up to the stream's end offsets (an empty fetch is not the end: it may time out).

    A fetch that fails is retried (bounded), each failure noted.
    """
    ends = broker.end_offsets(topic)
    positions = dict.fromkeys(range(PARTITIONS), 0)
    records: list[dict] = []
    for _ in range(1000):  # bounded: each round reads up to 5000 records
        pending = {p: at for p, at in positions.items() if at < ends.get(p, 0)}
        if not pending:
            return records
        try:
            batch = broker.fetch(topic, pending, 5000)
        except Exception as exc:
            retries.append(f"{type(exc).__name__}: {exc}")
            assert len(retries) < 8, f"reading the stream kept failing: {retries[-3:]}"
            time.sleep(0.5)
            continue
        for m in batch:
            positions[m.partition] = m.offset
            records.append(msgspec.json.decode(m.value))
    raise AssertionError(f"the stream was not read to its end offsets {ends} (at {positions})")


def test_nats_server_killed_under_appends_loses_nothing_acknowledged(net_cluster: NetCluster) -> None:
    prefix, topic = f"nf{uuid.uuid4().hex[:8]}", "events"
    stream = f"{prefix}_{topic}"
    broker = NatsBroker(net_cluster.nats_urls[0] + "?replicas=3", partitions=PARTITIONS, prefix=prefix)
    broker.append(topic, [{"id": -1, "user": "first"}])  # the broker creates the stream
    leader = asyncio.run(_stream(net_cluster, "caught-up", stream))
    victim = int(leader.removeprefix("h"))
    acknowledged: set[int] = set()
    failed = 0
    killed_at = first_failure = recovered_at = None
    started = time.monotonic()
    try:
        for i in range(MAX_BATCHES):  # bounded in count and in time
            now = time.monotonic()
            if now - started > MAX_SECONDS or (recovered_at is not None and now - recovered_at > 1.0):
                break
            if killed_at is None and len(acknowledged) >= 50 * BATCH:
                net_cluster.kill(victim, "nats")
                killed_at = time.monotonic()
            ids = list(range(i * BATCH, (i + 1) * BATCH))
            try:
                records = [{"id": n, "user": f"u{n % 97}"} for n in ids]
                offsets = broker.append(topic, records, keys=[r["user"] for r in records])
            except Exception:  # any failure: the batch is not acknowledged (it may be partly written)
                failed += 1
                first_failure = first_failure or time.monotonic()
                time.sleep(0.05)
                continue
            assert len(offsets) == BATCH
            acknowledged.update(ids)
            if killed_at is not None and recovered_at is None:
                recovered_at = time.monotonic()

        assert killed_at is not None, "the load never reached the kill"
        assert recovered_at is not None, f"appends did not resume within {MAX_SECONDS}s of the kill"
        # A read while the server is still down (one attempt, for the record), then the server is
        # restarted, as an orchestrator would, and everything is read back once it has caught up.
        read_from = time.monotonic()
        try:
            probe = f"{len(broker.fetch(topic, dict.fromkeys(range(PARTITIONS), 0), 100))} records"
        except Exception as exc:
            probe = f"failed after {time.monotonic() - read_from:.1f}s ({type(exc).__name__}: {exc})"
        net_cluster.start_nats_server(net_cluster.hosts[victim])
        asyncio.run(_stream(net_cluster, "caught-up", stream))
        retries: list[str] = []
        read_from = time.monotonic()
        records = _read_all(broker, topic, retries)
        seen = [r["id"] for r in records if r["id"] >= 0]
        lost = acknowledged - set(seen)
        duplicates = len(seen) - len(set(seen))
        print(
            f"\nnats failover (leader {leader} killed): {len(acknowledged) // BATCH} batches acknowledged, "
            f"{failed} failed, {len(lost)} records lost, {duplicates} duplicates; appends back "
            f"{recovered_at - killed_at:.2f}s after the kill; a fetch with the server down: {probe}; "
            f"reading back after its restart took {time.monotonic() - read_from:.1f}s and {len(retries)} failed fetches"
        )
        assert lost == set()
        assert recovered_at - killed_at < 15.0
    finally:
        broker.close()
        if net_cluster.hosts[victim].processes["nats"].poll() is not None:
            net_cluster.start_nats_server(net_cluster.hosts[victim])
        asyncio.run(_stream(net_cluster, "caught-up", stream))
        asyncio.run(_stream(net_cluster, "delete", stream))
