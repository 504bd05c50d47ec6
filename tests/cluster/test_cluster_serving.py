"""A serving host dies under load behind the gateway: no request fails 5 s after the kill, at most
1% before, and the host rejoins once it is back.

Three application hosts added to the namespace cluster each run ``mlscale serve`` on their own
address, reading one model repository folder (a scikit-learn model); the gateway runs in the root
namespace with consistent hashing, so one host owns the model and takes most of the traffic: that
host is the one lost. Its link goes down first and then every process in it is SIGKILLed, as when
a machine loses power: nothing, not even a reset, tells the gateway, whose tries in flight there
would wait for an answer that never comes. Steady load meanwhile: a few closed-loop clients, bounded
in count and in time. Then the link comes back, ``mlscale serve`` is started again, and the gateway
must send it the model's traffic again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import msgspec
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlscale.testing.load import ClosedLoop, Outcome, percentile
from mlscale.testing.netcluster import Host, NetCluster
from mlscale.testing.replicas import GatewayProcess, start_replica, wait_ready

MODEL = "iris"
ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
CONCURRENCY = 4
WARM_REQUESTS = 150  # answered before the kill
WATCH_SECONDS = 6.0  # of load after the kill, before the host comes back
GRACE_SECONDS = 5.0  # after the kill, no request may fail
MAX_EARLY_FAILURES = 0.01  # of the requests sent before the grace ends
SLOW_SECONDS = 1.0  # a request slower than this counts as hit by the kill, for the recovery time


@dataclass
class ServingHosts:
    cluster: NetCluster
    hosts: list[Host]
    urls: list[str]
    repository: Path
    config: Path
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def serving(net_cluster: NetCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingHosts]:
    """Three serving hosts (removed afterwards) and a gateway over them, every replica healthy."""
    root = tmp_path_factory.mktemp("serving-hosts")
    repository = root / "models"
    (repository / MODEL / "1").mkdir(parents=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), repository / MODEL / "1" / "model.joblib")
    config = root / "mlscale.toml"
    config.write_text("# the embedded defaults, rooted here\n")
    hosts: list[Host] = []
    gateway = None
    try:
        for _ in range(3):
            hosts.append(net_cluster.add_host())
        urls = [start_replica(net_cluster, host, repository, config) for host in hosts]
        gateway = GatewayProcess(urls, config, root / "gateway.log", strategy="hash")
        for url, host in zip(urls, hosts, strict=True):
            wait_ready(url, 60, host.processes["serve"])
        gateway.wait_ready(30)
        deadline = time.monotonic() + 10
        while not all(b["healthy"] for b in gateway.backends().values()):
            assert time.monotonic() < deadline, f"the gateway did not find every replica healthy: {gateway.backends()}"
            time.sleep(0.05)
        yield ServingHosts(net_cluster, hosts, urls, repository, config, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        for host in reversed(hosts):
            net_cluster.remove_host(host)


def _failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def test_a_serving_host_killed_under_load_fails_no_request_after_5s_and_rejoins(serving: ServingHosts) -> None:
    cluster, gateway = serving.cluster, serving.gateway
    body = msgspec.json.encode(ROW)
    load = ClosedLoop(
        f"{gateway.url}/v2/models/{MODEL}/infer", body, concurrency=CONCURRENCY, max_requests=50_000, max_seconds=60
    )
    with load:
        load.wait_ok(WARM_REQUESTS, timeout=20)
        served = gateway.backends()
        victim_url = max(serving.urls, key=lambda url: served[url]["served"])  # the model's owner on the ring
        victim = serving.hosts[serving.urls.index(victim_url)]

        killed = time.monotonic()
        cluster.link(victim.index, up=False)
        cluster.kill_host(victim.index)
        taken_out = None
        while time.monotonic() < killed + WATCH_SECONDS:  # steady load goes on meanwhile
            if taken_out is None and not gateway.backends()[victim_url]["healthy"]:
                taken_out = time.monotonic()
            time.sleep(0.05)

        cluster.link(victim.index, up=True)
        restarted = time.monotonic()
        start_replica(cluster, victim, serving.repository, serving.config)
        before = gateway.backends()[victim_url]["served"]
        rejoined = None
        while rejoined is None:
            assert time.monotonic() < restarted + 40, "the restarted host got no traffic within 40 s"
            assert victim.processes["serve"].poll() is None, "the restarted server exited"
            if gateway.backends()[victim_url]["served"] >= before + 20:
                rejoined = time.monotonic()
            time.sleep(0.05)
        load.wait_ok(load.ok_count() + 20, timeout=10)  # and the others still answer

    outcomes = load.outcomes
    grace_end = killed + GRACE_SECONDS
    early = [o for o in outcomes if o.started < grace_end]
    late = [o for o in outcomes if o.started >= grace_end]
    during = [o.ended - o.started for o in outcomes if killed <= o.started < grace_end]
    before_kill = [o.ended - o.started for o in outcomes if o.ended < killed]
    hit = [o for o in outcomes if o.ended >= killed and (not o.ok or o.ended - o.started > SLOW_SECONDS)]
    recovery = max((o.ended for o in hit), default=killed) - killed
    failed = [o for o in outcomes if not o.ok and o.status != 0]
    lost = [o for o in outcomes if o.status == 0]
    print(
        f"\nserving host killed: {len(outcomes)} requests sent, {len(failed)} failed, {len(lost)} lost "
        f"({len(_failed(early))} of {len(early)} before kill+{GRACE_SECONDS:.0f}s, {len(_failed(late))} after); "
        f"taken out {(taken_out or float('nan')) - killed:.2f}s after the kill, requests back to normal "
        f"after {recovery:.2f}s ({len(hit)} slower than {SLOW_SECONDS:.0f}s or failed); "
        f"p99 {percentile(before_kill, 99) * 1000:.0f} ms before, {percentile(during, 99) * 1000:.0f} ms "
        f"in the 5 s after the kill; rejoined {rejoined - restarted:.2f}s after serve was restarted"
    )
    assert taken_out is not None, "the gateway never took the dead host out"
    assert _failed(late) == [], f"requests failed more than {GRACE_SECONDS}s after the kill"
    assert len(_failed(early)) <= MAX_EARLY_FAILURES * len(early)
    assert all(b["healthy"] for b in gateway.backends().values())
