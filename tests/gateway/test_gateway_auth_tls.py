"""Auth at the gateway (forwarded to replicas, or terminated there) and TLS end to end: replicas and
the gateway serve HTTPS from certificates of our own CA, and the gateway verifies replicas with it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))

from serving_support import RunningServer, build_test_repository, free_port
from tls_support import make_certs

from mlscale.auth.guard import Guard
from mlscale.auth.keys import add_key
from mlscale.auth.settings import AuthSettings, QuotaSettings
from mlscale.gateway.proxy import Gateway
from mlscale.gateway.settings import GatewaySettings

ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


class HttpsServer(RunningServer):
    """A replica serving HTTPS; readiness is checked through TLS with the test CA."""

    def __init__(self, repository: Path, config: Path, ca: Path) -> None:
        self.ca = ssl.create_default_context(cafile=str(ca))
        super().__init__(repository, workers=1, config=config)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.url = self.url.replace("http://", "https://")
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1, verify=self.ca).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")


class ConfiguredGateway:
    """`mlscale gateway --config` as a process."""

    def __init__(self, config: Path, backend: str, verify: ssl.SSLContext | bool = True, https: bool = False) -> None:
        self.port = free_port()
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        command = [str(Path(sys.executable).parent / "mlscale"), "gateway", "--config", str(config)]
        command += ["--port", str(self.port), "--backend", backend]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        until = time.monotonic() + 30
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.process.stdout.read().decode()}")
            try:
                httpx.get(self.url + "/v2/health/live", timeout=1, verify=verify)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-auth")
    repository = build_test_repository(root / "models")
    certs = make_certs(root / "ca")
    stranger = make_certs(root / "other", "other")
    keys = root / "keys.json"
    found = {
        "reader": add_key(keys, "viewer", ["read"]),
        "infer": add_key(keys, "app", ["infer"]),
        "metered": add_key(keys, "metered", ["infer"], rate=0.1, burst=3),
    }
    tls = f'[tls]\ncertfile = "{certs.cert}"\nkeyfile = "{certs.key}"\nca_file = "{certs.ca}"\n'
    auth = '[auth]\nenabled = true\nkeys_file = "keys.json"\n'
    (root / "replica.toml").write_text(auth + tls)
    (root / "forward.toml").write_text('[gateway]\nauth = "forward"\n' + tls)
    (root / "terminate.toml").write_text('[gateway]\nauth = "terminate"\n' + auth + "[quotas]\nenabled = true\n")
    (root / "wrongca.toml").write_text(f'[tls]\nca_file = "{stranger.ca}"\n')
    verify = ssl.create_default_context(cafile=str(certs.ca))
    secure = HttpsServer(repository, root / "replica.toml", certs.ca)
    plain = RunningServer(repository, workers=1)
    started = [secure, plain]
    try:
        forward = ConfiguredGateway(root / "forward.toml", secure.url, verify=verify, https=True)
        started.append(forward)
        terminate = ConfiguredGateway(root / "terminate.toml", plain.url)
        started.append(terminate)
        wrongca = ConfiguredGateway(root / "wrongca.toml", secure.url)
        started.append(wrongca)
        yield {
            **found,
            "secure": secure,
            "forward": forward,
            "terminate": terminate,
            "wrongca": wrongca,
            "verify": verify,
            "ca": certs.ca,
            "stranger": ssl.create_default_context(cafile=str(stranger.ca)),
        }
    finally:
        for process in started:
            process.stop()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_the_server_and_its_dashboard_serve_https_with_the_configured_certificate(setup):
    url, verify = setup["secure"].url, setup["verify"]
    assert url.startswith("https://")
    assert httpx.get(url + "/v2/health/live", verify=verify).status_code == 200
    page = httpx.get(url + "/dashboard/", verify=verify)
    assert page.status_code == 200 and 'data-auth="1"' in page.text
    summary = httpx.get(url + "/dashboard/api/summary", verify=verify, headers=_bearer(setup["reader"]))
    assert summary.status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/v2/health/live", verify=setup["stranger"])
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
        httpx.get(url.replace("https://", "http://") + "/v2/health/live", timeout=3)


def test_the_grpc_port_serves_tls_with_the_same_certificate_and_checks_the_key(setup):
    import tritonclient.grpc as grpc_triton
    from tritonclient.utils import InferenceServerException

    secure, reader = setup["secure"], {"authorization": f"Bearer {setup['reader']}"}
    with grpc_triton.InferenceServerClient(secure.grpc_url, ssl=True, root_certificates=str(setup["ca"])) as client:
        assert client.is_server_live()
        assert client.get_model_metadata("iris", headers=reader).name == "iris"
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("iris")
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with grpc_triton.InferenceServerClient(secure.grpc_url) as plaintext, pytest.raises(InferenceServerException):
        plaintext.get_model_metadata("iris", headers=reader, client_timeout=5)


def test_a_forwarding_gateway_passes_the_key_over_verified_tls(setup):
    gateway, verify = setup["forward"].url, setup["verify"]
    missing = httpx.post(gateway + "/v2/models/iris/infer", json=ROW, verify=verify)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong_scope = httpx.post(
        gateway + "/v2/models/iris/infer", json=ROW, verify=verify, headers=_bearer(setup["reader"])
    )
    assert wrong_scope.status_code == 403
    ok = httpx.post(gateway + "/v2/models/iris/infer", json=ROW, verify=verify, headers=_bearer(setup["infer"]))
    assert ok.status_code == 200 and ok.json()["model_name"] == "iris"


def test_a_gateway_refuses_replicas_its_ca_did_not_sign(setup):
    gateway = setup["wrongca"].url
    response = httpx.post(gateway + "/v2/models/iris/infer", json=ROW, headers=_bearer(setup["infer"]))
    assert response.status_code == 502
    assert "CERTIFICATE_VERIFY_FAILED" in response.text
    assert [b["healthy"] for b in httpx.get(gateway + "/gateway/backends").json()] == [False]


def test_a_terminating_gateway_checks_keys_scopes_and_quotas_itself(setup):
    gateway = setup["terminate"].url
    assert httpx.get(gateway + "/v2/health/ready").status_code == 200  # open, forwarded
    missing = httpx.post(gateway + "/v2/models/iris/infer", json=ROW)
    assert missing.status_code == 401 and "www-authenticate" in missing.headers
    assert httpx.get(gateway + "/gateway/backends").status_code == 401
    assert httpx.get(gateway + "/gateway/backends", headers=_bearer(setup["reader"])).status_code == 200
    reader = httpx.post(gateway + "/v2/models/iris/infer", json=ROW, headers=_bearer(setup["reader"]))
    assert reader.status_code == 403
    # The replica behind runs without auth: the gateway's check is the one that counts.
    assert httpx.post(gateway + "/v2/models/iris/infer", json=ROW, headers=_bearer(setup["infer"])).status_code == 200
    metered = [
        httpx.post(gateway + "/v2/models/iris/infer", json=ROW, headers=_bearer(setup["metered"])) for _ in range(5)
    ]
    assert [r.status_code for r in metered] == [200, 200, 200, 429, 429]
    assert int(metered[-1].headers["retry-after"]) >= 9  # one token per 10 s


def test_a_terminating_gateway_does_not_pass_the_key_on(tmp_path):
    """In-process gateway over an ASGI replica that records the headers it got."""
    key = add_key(tmp_path / "keys.json", "app", ["infer"])
    seen: list[dict] = []

    async def replica(scope, receive, send):
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = Guard(AuthSettings(enabled=True, keys_file=str(tmp_path / "keys.json")), QuotaSettings())
    gateway = Gateway(GatewaySettings(backends=["http://replica"]), guard=guard)

    async def run() -> list[int]:
        gateway._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=replica))
        statuses = []
        for headers in ([(b"authorization", f"Bearer {key}".encode()), (b"x-trace", b"t1")], []):
            sent: list[dict] = []

            async def receive():
                return {"type": "http.request", "body": b"{}", "more_body": False}

            async def send(message, sent=sent):
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": headers}
            await gateway(scope, receive, send)
            statuses.append(sent[0]["status"])
        await gateway._client.aclose()
        return statuses

    assert asyncio.run(run()) == [200, 401]
    assert len(seen) == 1 and "authorization" not in seen[0] and seen[0]["x-trace"] == "t1"


def test_an_https_server_stops_at_once_while_a_client_holds_an_idle_connection(tmp_path):
    """A gateway keeps pooled keep-alive connections to its replicas; closing one over TLS waits
    (30 s) for a close_notify the idle client never sends. The server must not wait on them."""
    certs = make_certs(tmp_path / "ca")
    config = tmp_path / "replica.toml"
    config.write_text(f'[tls]\ncertfile = "{certs.cert}"\nkeyfile = "{certs.key}"\n')
    server = HttpsServer(build_test_repository(tmp_path / "models"), config, certs.ca)
    try:
        with httpx.Client(verify=server.ca, timeout=10) as client:
            assert client.post(server.url + "/v2/models/iris/infer", json=ROW).status_code == 200
            started = time.monotonic()
            server.stop()  # SIGTERM while the pooled connection is still open
            stopped = time.monotonic() - started
            assert server.process.poll() is not None
        assert stopped < 10, f"the server took {stopped:.1f} s to stop (graceful timeout 30 s)"
    finally:
        server.stop()


def test_an_https_gateway_stops_at_once_while_a_client_holds_an_idle_connection(tmp_path):
    certs = make_certs(tmp_path / "ca")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[tls]\ncertfile = "{certs.cert}"\nkeyfile = "{certs.key}"\n')
    replica = RunningServer(build_test_repository(tmp_path / "models"), workers=1)
    verify = ssl.create_default_context(cafile=str(certs.ca))
    gateway = None
    try:
        gateway = ConfiguredGateway(config, replica.url, verify=verify, https=True)
        with httpx.Client(verify=verify, timeout=10) as client:
            assert client.post(gateway.url + "/v2/models/iris/infer", json=ROW).status_code == 200
            started = time.monotonic()
            gateway.process.terminate()  # while the pooled connection is still open
            gateway.process.wait(30)
            stopped = time.monotonic() - started
        assert stopped < 10, f"the gateway took {stopped:.1f} s to stop"
    finally:
        if gateway is not None and gateway.process.poll() is None:
            gateway.process.kill()
        replica.stop()
