"""The gateway -> replica path: one trace across the two, the replica's request a child of the
gateway's forward (whose ``traceparent`` replaced the client's), in one process (in-memory exporter)
and across processes (real ``mlscale gateway`` and ``mlscale serve`` exporting over OTLP/HTTP to a
receiver in the test)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.trace import SpanKind
from tracing_support import GatewayProcess, OtlpReceiver, body, free_port, new_parent, one, running_app

from mlscale.gateway.proxy import Gateway
from mlscale.gateway.settings import GatewaySettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_support import RunningServer

REST = "POST /v2/models/{model}/infer"


@contextlib.asynccontextmanager
async def gateway_to(url: str):
    gateway = Gateway(GatewaySettings(backends=[url], health_interval=60))
    await gateway.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway") as client:
            yield client
    finally:
        await gateway.stop()


def test_gateway_and_replica_share_the_trace(exporter, repository):
    trace_id, parent_id, header = new_parent()
    port = free_port()

    async def scenario():
        async with running_app(repository) as (app, _):
            server = uvicorn.Server(uvicorn.Config(app, port=port, lifespan="off", log_level="warning"))
            serving = asyncio.create_task(server.serve())
            try:
                for _ in range(500):  # bounded: 5 s
                    if server.started:
                        break
                    await asyncio.sleep(0.01)
                async with gateway_to(f"http://127.0.0.1:{port}") as client:
                    response = await client.post(
                        "/v2/models/double/infer", json=body([[1, 2]]), headers={"traceparent": header}
                    )
                    assert response.status_code == 200, response.text
            finally:
                server.should_exit = True
                await serving

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {trace_id}
    entry = one(spans, "gateway POST")
    forward = one(spans, "gateway forward")
    replica = one(spans, REST)
    assert entry.kind == SpanKind.SERVER and entry.parent.span_id == parent_id
    assert forward.kind == SpanKind.CLIENT and forward.parent.span_id == entry.context.span_id
    assert forward.attributes["http.response.status_code"] == 200
    assert forward.attributes["url.full"] == f"http://127.0.0.1:{port}/v2/models/double/infer"
    # The replica continues the gateway's forward, not the client's span: the header was replaced.
    assert replica.parent.span_id == forward.context.span_id and replica.parent.is_remote
    assert one(spans, "batch").parent.span_id == replica.context.span_id


@pytest.fixture
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.close()


def test_gateway_and_replica_processes_share_the_trace_over_otlp(repository, receiver, tmp_path, monkeypatch):
    """Both in their own processes, exporting over OTLP/HTTP: the replica where the standard
    OTEL_EXPORTER_OTLP_ENDPOINT variable says; the gateway where its project file says, which wins
    over the variable (pointed at a dead port for it). The gateway's spans arrive only through the
    flush at its shutdown (its exporter keeps the default 5 s delay)."""
    (tmp_path / "replica.toml").write_text('[tracing]\nenabled = true\nservice_name = "replica-a"\n')
    (tmp_path / "gateway.toml").write_text(f'[tracing]\nenabled = true\notlp_endpoint = "{receiver.url}"\n')
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # the replica exports within 50 ms
    replica = RunningServer(repository, workers=1, config=tmp_path / "replica.toml")
    gateway = None
    trace_id, parent_id, header = new_parent()
    try:
        dead = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "5000"}
        gateway = GatewayProcess(tmp_path / "gateway.toml", replica.url, dead)
        response = httpx.post(
            gateway.url + "/v2/models/double/infer", json=body([[1, 2]]), headers={"traceparent": header}, timeout=30
        )
        assert response.status_code == 200, response.text
        gateway.stop()  # SIGTERM: the gateway exports its spans as it stops

        def mine(spans) -> dict:
            return {s.name: (service, s) for service, s in spans if int.from_bytes(s.trace_id, "big") == trace_id}

        names = {"gateway POST", "gateway forward", "model", "batch", "queue wait", REST}
        received = mine(receiver.wait_for(lambda spans: names <= set(mine(spans))))
    finally:
        if gateway is not None:
            gateway.stop()
        replica.stop()
    (service, entry), (_, forward), (replica_service, server) = (
        received["gateway POST"],
        received["gateway forward"],
        received[REST],
    )
    assert (service, replica_service) == ("mlscale-gateway", "replica-a")
    assert int.from_bytes(entry.parent_span_id, "big") == parent_id
    assert forward.parent_span_id == entry.span_id and forward.kind == forward.SPAN_KIND_CLIENT
    assert server.parent_span_id == forward.span_id and server.kind == server.SPAN_KIND_SERVER
    assert received["batch"][1].parent_span_id == server.span_id
    assert received["model"][1].parent_span_id == received["batch"][1].span_id
