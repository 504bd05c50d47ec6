"""Two `mlscale serve` replicas on two hosts follow one MLflow registry: a new version registered
and the alias moved reach both hosts within seconds, while requests to both never fail.

Hosts: the MLflow server on an application host of its own (backend store: a fresh database on the
cluster's PostgreSQL; artifacts served by it), one replica on each of two more hosts, each with its
own artifact cache (as separate machines would have). The test process talks to all of them over
the bridge.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mlscale.testing.netcluster import Host, NetCluster

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "serving"))
from mlflow_support import MLFLOW_COMMAND, MLFLOW_SERVER, SERVER_ENVIRONMENT, register_constant_model  # noqa: E402

MLSCALE = str(Path(sys.executable).parent / "mlscale")
MLFLOW_PORT = 5000
SERVE_PORT = 8000
ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}

# The MLflow server's start and two replicas' starts dominate the time.
pytestmark = pytest.mark.timeout(400)


@dataclass
class RegistryHosts:
    cluster: NetCluster
    mlflow: Host
    replicas: list[Host]
    url: str


def _wait_http(url: str, seconds: float, what: str, process) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"{what} exited (see its log in the cluster's workdir)"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} not ready in {seconds} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def registry_hosts(net_cluster: NetCluster) -> Iterator[RegistryHosts]:
    import psycopg

    if not MLFLOW_SERVER.exists():
        pytest.skip("no MLflow server venv in .cache: run scripts/ensure-mlflow-server.sh (make test does)")
    cluster = net_cluster
    database = f"mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(cluster.postgres_dsn, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    added: list[Host] = []
    try:
        mlflow_host = cluster.add_host()
        added.append(mlflow_host)
        added += [cluster.add_host(), cluster.add_host()]
        backend = f"postgresql+psycopg2://postgres@{cluster.postgres_host.address}:5432/{database}"
        artifacts = cluster.workdir / f"{database}-artifacts"
        environment = [f"{k}={v}" for k, v in SERVER_ENVIRONMENT.items()]
        server = cluster.spawn(mlflow_host, "mlflow", [
            "env", *environment, *MLFLOW_COMMAND, "server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", str(artifacts), "--host", mlflow_host.address,
            "--port", str(MLFLOW_PORT), "--workers", "1",
        ])  # fmt: skip
        url = f"http://{mlflow_host.address}:{MLFLOW_PORT}"
        _wait_http(url + "/health", 240, "the MLflow server", server)
        yield RegistryHosts(cluster, mlflow_host, added[1:], url)
    finally:
        for host in reversed(added):  # newest first, as remove_host wants
            cluster.remove_host(host)
        with psycopg.connect(cluster.postgres_dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _answer(client: httpx.Client, url: str) -> tuple[str, float]:
    response = client.post(url, json=ROW)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], body["outputs"][0]["data"][0]


def test_moved_alias_reaches_replicas_on_two_hosts_with_no_failed_request(registry_hosts: RegistryHosts):
    from mlflow.tracking import MlflowClient

    setup = registry_hosts
    cluster = setup.cluster
    client = MlflowClient(tracking_uri=setup.url, registry_uri=setup.url)
    name = f"iris-{uuid.uuid4().hex[:6]}"
    assert register_constant_model(client, name, 1.0, alias="champion") == "1"
    urls = []
    for host in setup.replicas:
        home = cluster.workdir / f"{host.namespace}-serve"
        (home / "models").mkdir(parents=True)
        (home / "mlscale.toml").write_text(f'[server.mlflow]\npoll_interval = 0.5\ncache_dir = "{home / "cache"}"\n')
        process = cluster.spawn(host, "serve", [
            MLSCALE, "serve", "--config", str(home / "mlscale.toml"), "--model-repository", str(home / "models"),
            "--host", host.address, "--port", str(SERVE_PORT), "--grpc-port", "0", "--workers", "1",
            "--mlflow-tracking-uri", setup.url, "--model", f"iris=models:/{name}@champion",
        ])  # fmt: skip
        url = f"http://{host.address}:{SERVE_PORT}"
        _wait_http(url + "/v2/health/ready", 120, f"mlscale serve on {host.namespace}", process)
        urls.append(url + "/v2/models/iris/infer")

    failures: list[str] = []
    seen: dict[str, set[str]] = {url: set() for url in urls}
    stop = threading.Event()

    def traffic() -> None:
        until = time.monotonic() + 60  # bounded in time and count whatever the test does
        with httpx.Client(timeout=10) as http:
            for _ in range(20000):
                if stop.is_set() or time.monotonic() > until:
                    return
                for url in urls:
                    response = http.post(url, json=ROW)
                    if response.status_code != 200:
                        failures.append(f"{url}: {response.status_code} {response.text}")
                    else:
                        seen[url].add(response.json()["model_version"])

    with httpx.Client(timeout=10) as http:
        for url in urls:
            assert _answer(http, url) == ("1", 1.0)
        loop = threading.Thread(target=traffic, daemon=True)
        loop.start()
        try:
            assert register_constant_model(client, name, 2.0) == "2"
            client.set_registered_model_alias(name, "champion", "2")
            moved = time.monotonic()
            switched: dict[str, float] = {}
            deadline = moved + 20
            while len(switched) < len(urls):
                assert time.monotonic() < deadline, f"the moved alias reached only {sorted(switched)} in 20 s"
                for url in urls:
                    if url not in switched and _answer(http, url) == ("2", 2.0):
                        switched[url] = time.monotonic() - moved
            # Once switched, a host stays switched.
            for _ in range(10):
                for url in urls:
                    assert _answer(http, url) == ("2", 2.0)
        finally:
            stop.set()
            loop.join(timeout=30)
    assert failures == []
    assert all(versions == {"1", "2"} for versions in seen.values()), seen
    print(f"\nalias moved: replicas switched after {', '.join(f'{s:.2f}' for s in switched.values())} s")
    assert max(switched.values()) < 10
