"""Keys, scopes and quotas on a real server (two worker processes): 401/403/429 at the edge before
anything else, open health probes, tritonclient with headers, the dashboard behind the key, no
secret in logs or metrics, and one Redis-shared quota across workers and replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serving_support import RunningServer
from tritonclient.utils import InferenceServerException

from mlscale.auth.keys import add_key

ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
RATE, BURST = 20.0, 1000.0  # a bucket that never fills up in the test: every token is accounted


@pytest.fixture(scope="module")
def project(tmp_path_factory, redis_url) -> dict:
    root = tmp_path_factory.mktemp("auth-project")
    keys = root / "keys.json"
    prefix = f"test-quota-{uuid.uuid4().hex}:"
    (root / "mlscale.toml").write_text(
        f'[auth]\nenabled = true\nkeys_file = "keys.json"\n'
        f'[quotas]\nenabled = true\nrate = 1000.0\nburst = 1000.0\nredis = "{redis_url}"\nkey_prefix = "{prefix}"\n'
    )
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    return {
        "root": root,
        "bucket": prefix + tenant,
        "admin": add_key(keys, "ops", ["admin", "read"]),
        "reader": add_key(keys, "viewer", ["read"]),
        "infer": add_key(keys, "app", ["infer"]),
        "quota": add_key(keys, "metered", ["infer"], tenant=tenant, rate=RATE, burst=BURST),
        # One request, then nothing for ~1,000 s: the gRPC quota refusal.
        "single": add_key(keys, "single", ["infer"], tenant=f"single-{uuid.uuid4().hex[:8]}", rate=0.001, burst=1),
    }


@pytest.fixture(scope="module")
def secured(model_repository: Path, project) -> RunningServer:
    running = RunningServer(model_repository, workers=2, config=project["root"] / "mlscale.toml")
    yield running
    running.stop()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


PROTECTED = [
    ("GET", "/v2", "read"),
    ("GET", "/v2/models/iris", "read"),
    ("GET", "/metrics", "read"),
    ("POST", "/v2/repository/index", "read"),
    ("GET", "/dashboard/api/summary", "read"),
    ("POST", "/v2/models/iris/infer", "infer"),
    ("POST", "/v2/repository/models/echo/unload", "admin"),
    ("POST", "/v1/features", "infer"),
]


def test_no_key_or_a_wrong_key_is_401_with_a_challenge(secured, project):
    wrong = project["admin"][:-3] + ("abc" if not project["admin"].endswith("abc") else "xyz")
    for method, path, _ in PROTECTED:
        for headers in ({}, _bearer(wrong), _bearer("not-a-key"), {"Authorization": "Basic " + project["admin"]}):
            response = httpx.request(method, secured.url + path, headers=headers, json=ROW)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].startswith('Bearer realm="mlscale"')
            assert project["admin"] not in response.text and wrong not in response.text


def test_a_key_lacking_the_scope_is_403_and_the_right_key_passes(secured, project):
    by_scope = {"read": project["reader"], "infer": project["infer"], "admin": project["admin"]}
    for method, path, scope in PROTECTED:
        for other, key in by_scope.items():
            if other == scope or (scope == "read" and other == "admin"):  # the ops key holds admin and read
                continue
            response = httpx.request(method, secured.url + path, headers=_bearer(key), json=ROW)
            assert response.status_code == 403, (method, path, other, response.text)
            assert scope in response.json()["error"]
    assert httpx.get(secured.url + "/v2/models/iris", headers=_bearer(project["reader"])).status_code == 200
    assert httpx.get(secured.url + "/metrics", headers=_bearer(project["reader"])).status_code == 200
    infer = httpx.post(secured.url + "/v2/models/iris/infer", json=ROW, headers=_bearer(project["infer"]))
    assert infer.status_code == 200 and infer.json()["outputs"]
    admin = _bearer(project["admin"])
    assert httpx.post(secured.url + "/v2/repository/models/echo/unload", headers=admin).status_code == 200
    assert httpx.post(secured.url + "/v2/repository/models/echo/load", headers=admin).status_code == 200


def test_health_probes_and_the_page_shell_stay_open(secured):
    assert httpx.get(secured.url + "/v2/health/live").status_code == 200
    assert httpx.get(secured.url + "/v2/health/ready").status_code == 200
    page = httpx.get(secured.url + "/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/dashboard/")
    assert 'data-auth="1"' in page.text and 'id="auth-form"' in page.text
    assert httpx.get(secured.url + "/dashboard/static/dashboard.js").status_code == 200


def test_the_dashboard_data_needs_a_read_key(secured, project):
    assert httpx.get(secured.url + "/dashboard/api/summary").status_code == 401
    summary = httpx.get(secured.url + "/dashboard/api/summary", headers=_bearer(project["reader"]))
    assert summary.status_code == 200
    assert {m["name"] for m in summary.json()["models"]["data"]} >= {"iris", "echo"}


def test_the_check_comes_before_the_model_lookup_and_the_body(secured, project):
    """Unknown model and malformed body: 401/403 still, so nothing was read or resolved first
    (the model lookup, and queue-delay admission after it, never ran)."""
    for headers, status in (({}, 401), (_bearer(project["reader"]), 403), (_bearer(project["infer"]), 404)):
        response = httpx.post(secured.url + "/v2/models/nope/infer", content=b"{not json", headers=headers)
        assert response.status_code == status, response.text


def test_tritonclient_sends_the_key_in_headers(secured, project):
    from sklearn.datasets import load_iris

    rows = load_iris().data[:5]
    with triton.InferenceServerClient(url=secured.url.removeprefix("http://")) as client:
        assert client.is_server_live()  # open
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=True)
        result = client.infer("iris", [tensor], model_version="1", headers=_bearer(project["infer"]))
        assert result.as_numpy("label").shape == (5,)
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("iris", [tensor], model_version="1")
        with pytest.raises(InferenceServerException, match="lacks the scope"):
            client.get_model_metadata("iris", headers=_bearer(project["infer"]))
        assert client.get_model_metadata("iris", headers=_bearer(project["reader"]))["name"] == "iris"


def test_grpc_checks_the_key_in_metadata_with_the_scopes_and_quota_of_rest(secured, project):
    import tritonclient.grpc as grpc_triton

    rows = np.array([[5.1, 3.5, 1.4, 0.2]])

    def status(call) -> str:
        with pytest.raises(InferenceServerException) as refused:
            call()
        return refused.value.status()

    with grpc_triton.InferenceServerClient(secured.grpc_url) as client:

        def infer(key: str | None):
            tensor = grpc_triton.InferInput("input", [1, 4], "FP64")
            tensor.set_data_from_numpy(rows)
            headers = {"authorization": f"Bearer {key}"} if key else None
            return client.infer("iris", [tensor], headers=headers, client_timeout=30)

        assert client.is_server_live() and client.is_server_ready()  # health stays open
        assert status(lambda: infer(None)) == "StatusCode.UNAUTHENTICATED"
        assert status(lambda: infer("mls_not-a-real-key")) == "StatusCode.UNAUTHENTICATED"
        assert status(lambda: infer(project["reader"])) == "StatusCode.PERMISSION_DENIED"
        assert status(lambda: client.get_model_metadata("iris")) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="lacks the scope 'read'"):
            client.get_model_metadata("iris", headers={"authorization": f"Bearer {project['infer']}"})
        assert (
            client.get_model_metadata("iris", headers={"authorization": f"Bearer {project['reader']}"}).name == "iris"
        )
        assert infer(project["infer"]).as_numpy("label").shape == (1,)
        assert infer(project["single"]).as_numpy("label").shape == (1,)
        assert status(lambda: infer(project["single"])) == "StatusCode.RESOURCE_EXHAUSTED"


async def _hammer(urls: list[str], key: str, seconds: float, concurrency: int = 12) -> list[tuple[float, float, int]]:
    """Requests from ``concurrency`` loops over ``urls`` for ``seconds``: (sent, answered, status) each."""
    calls: list[tuple[float, float, int]] = []
    retry_afters: set[str] = set()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=_bearer(key), limits=limits, timeout=10) as client:

        async def loop(i: int) -> None:
            n = 0
            while time.monotonic() < deadline and n < 5000:
                n += 1
                started = time.monotonic()
                response = await client.post(urls[(i + n) % len(urls)] + "/v2/models/iris/infer", json=ROW)
                calls.append((started, time.monotonic(), response.status_code))
                if response.status_code != 200:
                    assert response.status_code == 429, response.text
                    retry_afters.add(response.headers["retry-after"])
                await asyncio.sleep(0.002)  # hundreds of requests/s offered: several times the quota

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
    assert retry_afters == {"1"}
    return calls


def test_quota_is_accurate_across_workers_and_replicas(model_repository, secured, project, redis_url):
    """One tenant's bucket (20/s) shared through Redis by two worker processes of one replica and
    a second replica, offered more than that. Two oracles: the client's clock (from an empty bucket,
    never more than rate x time), and Redis's clock, on which the bucket runs: started empty at a
    known instant and never full, the answers admitted must equal rate x (time of the last refill)
    - tokens left, to within one token, so no worker or replica granted a token twice or lost one,
    however the machine's load spread the requests."""
    import redis

    other = RunningServer(model_repository, workers=1, config=project["root"] / "mlscale.toml")
    store = redis.Redis.from_url(redis_url)
    seconds, micros = store.time()
    started_us = seconds * 1_000_000 + micros
    store.hset(project["bucket"], mapping={"t": "0", "ts": str(started_us)})
    emptied = time.monotonic()
    try:
        calls = asyncio.run(_hammer([secured.url, other.url], project["quota"], 4.0))
    finally:
        other.stop()
    tokens, last_us = store.hmget(project["bucket"], "t", "ts")
    store.delete(project["bucket"])
    store.close()
    allowed = sum(status == 200 for _, _, status in calls)
    span = max(c[1] for c in calls) - emptied
    assert allowed <= RATE * span + 1  # the bucket was emptied just before
    assert len(calls) > allowed  # some were refused: the limit bit
    expected = RATE * (int(last_us) - started_us) / 1e6 - float(tokens)
    assert abs(allowed - expected) <= 1.0, (allowed, expected, len(calls))
    assert allowed >= 0.95 * RATE * (span - 1.0) - float(tokens)  # the rate was not undershot
    metrics = httpx.get(secured.url + "/metrics", headers=_bearer(project["reader"])).text
    assert 'mlscale_edge_refusals_total{reason="rate_limited"}' in metrics


def test_no_secret_in_logs_or_metrics(secured, project):
    """Last in this module: stops the server to read everything it logged."""
    keys = [project[k] for k in ("admin", "reader", "infer", "quota")]
    wrong = keys[0][:-2] + "zz"
    httpx.get(secured.url + "/metrics", headers=_bearer(wrong))
    httpx.post(secured.url + "/v2/models/iris/infer", content=b"{bad", headers=_bearer(keys[2]))
    metrics = httpx.get(secured.url + "/metrics", headers=_bearer(project["reader"])).text
    summary = httpx.get(secured.url + "/dashboard/api/summary", headers=_bearer(project["reader"])).text
    assert 'mlscale_edge_refusals_total{reason="unauthorized"}' in metrics
    assert secured.stop() == 0
    logs = secured.process.stdout.read().decode()
    for secret in [*keys, wrong]:
        for text in (metrics, summary, logs):
            assert secret not in text and secret.split(".", 1)[1] not in text
    assert np.all([s not in (project["root"] / "keys.json").read_text() for s in keys])
