"""The gateway -> replica path: one trace across the two, the replica's request a child of the
gateway's forward (whose ``traceparent`` replaced the client's), in one process and across processes
(a real ``mlscale serve`` exporting over OTLP/HTTP to a receiver in the test)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
from opentelemetry.trace import SpanKind
from tracing_support import OtlpReceiver, body, free_port, new_parent, one, running_app

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


def test_gateway_and_replica_process_share_the_trace_over_otlp(exporter, repository, receiver, tmp_path, monkeypatch):
    """A replica in its own process, tracing on by its project file and exporting where the standard
    OTEL_EXPORTER_OTLP_ENDPOINT variable says; the gateway in this process."""
    (tmp_path / "replica.toml").write_text('[tracing]\nenabled = true\nservice_name = "replica-a"\n')
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not the default 5 s
    replica = RunningServer(repository, workers=1, config=tmp_path / "replica.toml")
    trace_id, parent_id, header = new_parent()
    try:

        async def scenario():
            async with gateway_to(replica.url) as client:
                response = await client.post(
                    "/v2/models/double/infer", json=body([[1, 2]]), headers={"traceparent": header}
                )
                assert response.status_code == 200, response.text

        asyncio.run(scenario())
        names = {"model", "batch", "queue wait", REST}

        def complete(spans) -> bool:
            return names <= {s.name for _, s in spans if int.from_bytes(s.trace_id, "big") == trace_id}

        received = receiver.wait_for(complete)
    finally:
        replica.stop()
    forward = one(exporter.get_finished_spans(), "gateway forward")
    assert forward.context.trace_id == trace_id and forward.resource.attributes["service.name"] == "mlscale-test"
    mine = {s.name: (service, s) for service, s in received if int.from_bytes(s.trace_id, "big") == trace_id}
    service, server = mine[REST]
    assert service == "replica-a"
    assert int.from_bytes(server.parent_span_id, "big") == forward.context.span_id
    assert server.kind == server.SPAN_KIND_SERVER
    assert mine["batch"][1].parent_span_id == server.span_id
    assert mine["model"][1].parent_span_id == mine["batch"][1].span_id
    assert forward.parent.span_id != parent_id  # under the gateway's own span
