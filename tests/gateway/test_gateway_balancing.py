"""The gateway over real server replicas: spread, stickiness, and a replica dying mid-traffic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_support import RunningServer, build_test_repository, free_port

from mlscale.gateway.balancing import Backend, ConsistentHash, PowerOfTwo

ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_power_of_two_prefers_the_less_busy_and_skips_the_unhealthy():
    a, b, c = Backend("http://a"), Backend("http://b"), Backend("http://c")
    a.inflight, b.inflight, c.inflight = 5, 0, 0
    c.healthy = False
    strategy = PowerOfTwo(seed=1)
    picks = Counter(strategy.order([a, b, c], "m")[0].url for _ in range(200))
    assert picks == {"http://b": 200}


def test_consistent_hash_is_sticky_and_orders_the_rest_for_retries():
    backends = [Backend(f"http://h{i}") for i in range(4)]
    strategy = ConsistentHash(backends)
    first = strategy.order(backends, "iris")
    assert [b.url for b in strategy.order(backends, "iris")] == [b.url for b in first]
    assert len({b.url for b in first}) == 4
    first[0].healthy = False
    assert strategy.order(backends, "iris")[0] is first[1]


def test_consistent_hash_spills_a_hot_model_to_the_next_replica_beyond_the_load_bound():
    backends = [Backend(f"http://h{i}") for i in range(3)]
    strategy = ConsistentHash(backends, load_factor=1.25)
    owner, second, third = strategy.order(backends, "hot")
    assert strategy.order(backends, "hot")[0] is owner  # idle: sticky
    owner.inflight = 3  # bound: ceil(1.25 * 4 / 3) = 2
    assert strategy.order(backends, "hot")[:2] == [second, owner]
    second.inflight = 3  # bound: ceil(1.25 * 7 / 3) = 3
    assert strategy.order(backends, "hot")[0] is third
    for b in backends:
        b.inflight = 4  # all equally busy: back to the owner
    assert strategy.order(backends, "hot")[0] is owner


def test_only_requests_that_cannot_repeat_a_change_are_retried_after_a_mid_way_failure():
    from mlscale.gateway.proxy import safe_to_retry

    assert safe_to_retry("POST", "/v2/models/iris/infer")
    assert safe_to_retry("GET", "/v2/models/iris")
    assert safe_to_retry("POST", "/v1/features")
    assert not safe_to_retry("POST", "/v1/events/trips")


def test_a_replica_shedding_one_model_is_skipped_for_that_model_only():
    a, b = Backend("http://a"), Backend("http://b")
    a.shedding_until["iris"] = time.monotonic() + 60
    for strategy in (PowerOfTwo(seed=3), ConsistentHash([a, b])):
        assert all(strategy.order([a, b], "iris")[0] is b for _ in range(50))
        assert {strategy.order([a, b], "other")[0].url for _ in range(200)} <= {"http://a", "http://b"}
    assert a.usable("other")
    a.shedding_until["iris"] = time.monotonic() - 1
    assert a.usable("iris")


def test_gateway_answers_503_itself_while_every_replica_sheds_that_model():
    from mlscale.gateway.proxy import Gateway
    from mlscale.gateway.settings import GatewaySettings

    gateway = Gateway(GatewaySettings(backends=["http://a", "http://b"]))
    assert gateway._all_shedding("iris") is None
    gateway.backends[0].shedding_until["iris"] = time.monotonic() + 2.5
    assert gateway._all_shedding("iris") is None  # b can still take it
    gateway.backends[1].shedding_until["iris"] = time.monotonic() + 0.5
    status, headers, body = gateway._all_shedding("iris")
    assert status == 503 and (b"retry-after", b"1") in headers and b"shedding" in body
    assert gateway._all_shedding("other") is None


class RunningGateway:
    def __init__(self, backends: list[str], strategy: str = "p2c") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            str(Path(sys.executable).parent / "mlscale"),
            "gateway",
            "--port",
            str(self.port),
            "--strategy",
            strategy,
        ]
        for backend in backends:
            command += ["--backend", backend]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 30
        while time.monotonic() < until:
            try:
                httpx.get(self.url + "/gateway/backends", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    repository = build_test_repository(tmp_path_factory.mktemp("models"))
    servers = [RunningServer(repository, workers=1) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_requests_spread_over_replicas_and_survive_one_dying(replicas):
    gateway = RunningGateway([s.url for s in replicas])
    try:
        with httpx.Client(base_url=gateway.url) as client:
            for _ in range(40):
                assert client.post("/v2/models/iris/infer", json=ROW).status_code == 200
            served = [b["served"] for b in client.get("/gateway/backends").json()]
            assert min(served) >= 5, served
            replicas[1].stop()
            statuses = [client.post("/v2/models/iris/infer", json=ROW).status_code for _ in range(30)]
            assert statuses == [200] * 30
            states = {b["url"]: b["healthy"] for b in client.get("/gateway/backends").json()}
            assert states[replicas[1].url] is False
    finally:
        gateway.stop()


def test_unknown_routes_and_errors_pass_through_unchanged(replicas):
    gateway = RunningGateway([replicas[0].url], strategy="hash")
    try:
        response = httpx.post(gateway.url + "/v2/models/nope/infer", json=ROW)
        assert response.status_code == 404
        assert "unknown model" in response.json()["error"]
    finally:
        gateway.stop()


def test_gateway_without_backends_exits_with_one_line():
    result = subprocess.run([sys.executable, "-m", "mlscale", "gateway"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs at least one backend" in result.stderr


def test_two_gateways_side_by_side_send_each_model_to_the_same_replica():
    """Gateways keep no shared state: two of them (another process, another hash seed, backends
    listed in another order) must still agree on each model's owner and retry order, or the
    models' caches would be warm on two replicas instead of one."""
    urls = [f"http://10.0.0.{i}:8000" for i in range(1, 6)]
    models = [f"model-{i}" for i in range(200)]
    here = ConsistentHash([Backend(u) for u in urls])
    mine = {m: [b.url for b in here.order([], m)] for m in models}
    script = (
        "import json, sys\n"
        "from mlscale.gateway.balancing import Backend, ConsistentHash\n"
        "urls, models = json.loads(sys.argv[1])\n"
        "ring = ConsistentHash([Backend(u) for u in urls])\n"
        "print(json.dumps({m: [b.url for b in ring.order([], m)] for m in models}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script, json.dumps([urls[::-1], models])],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(other.stdout) == mine
    assert len({owners[0] for owners in mine.values()}) == len(urls), "every replica owns some models"
