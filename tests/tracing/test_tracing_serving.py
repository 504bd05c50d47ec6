"""Spans of the server's request path, REST and gRPC, into the SDK's in-memory exporter: the caller's
trace id and parent kept, and each step (cache lookup, queue wait, batch, model) where it belongs."""

from __future__ import annotations

import asyncio

import numpy as np
import tritonclient.grpc.aio as triton_aio
from opentelemetry.trace import SpanKind, StatusCode
from tracing_support import body, by_name, free_port, new_parent, one, running_app

from mlscale import tracing

REST = "POST /v2/models/{model}/infer"
GRPC = "inference.GRPCInferenceService/ModelInfer"


def test_rest_request_continues_the_callers_trace_down_to_the_model(exporter, repository):
    trace_id, parent_id, header = new_parent()

    async def scenario():
        async with running_app(repository) as (_, client):
            response = await client.post(
                "/v2/models/double/infer", json=body([[1, 2]]), headers={"traceparent": header}
            )
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [2, 4]

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {trace_id}
    server = one(spans, REST)
    assert server.kind == SpanKind.SERVER
    assert server.parent.span_id == parent_id and server.parent.is_remote
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["mlscale.model"] == "double"
    wait = one(spans, "queue wait")
    batch = one(spans, "batch")
    model = one(spans, "model")
    assert wait.parent.span_id == server.context.span_id
    assert batch.parent.span_id == server.context.span_id  # a batch of one request: inline in its trace
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert [link.context.span_id for link in wait.links] == [batch.context.span_id]
    assert model.parent.span_id == batch.context.span_id
    assert batch.attributes["mlscale.model"] == "double" and batch.attributes["mlscale.model.version"] == "1"
    assert batch.attributes["mlscale.batch.size"] == 1 and batch.attributes["mlscale.batch.requests"] == 1
    # Nested in time as in structure: queued, then batched, then the model ran, all within the request.
    assert server.start_time <= wait.start_time <= wait.end_time <= batch.start_time <= model.start_time
    assert model.end_time <= batch.end_time <= server.end_time
    assert wait.attributes["mlscale.queue.wait_ms"] == (wait.end_time - wait.start_time) / 1e6


def test_one_batch_serving_two_traced_requests_links_to_both(exporter, repository):
    first, second = new_parent(), new_parent()

    async def scenario():
        async with running_app(repository) as (_, client):
            calls = [
                client.post("/v2/models/double/infer", json=body(rows), headers={"traceparent": parent[2]})
                for parent, rows in ((first, [[1, 1]]), (second, [[2, 2], [3, 3]]))
            ]
            responses = await asyncio.gather(*calls)
            assert [r.status_code for r in responses] == [200, 200]

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    servers = {s.context.trace_id: s for s in by_name(spans, REST)}
    assert set(servers) == {first[0], second[0]}
    batch = one(spans, "batch")  # the 50 ms max_delay joined both requests
    assert batch.attributes["mlscale.batch.requests"] == 2 and batch.attributes["mlscale.batch.size"] == 3
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in servers.values()}
    assert batch.parent.span_id in {s.context.span_id for s in servers.values()}
    for trace_id, server in servers.items():
        wait = one(spans, "queue wait", trace_id)
        assert wait.parent.span_id == server.context.span_id
        assert [link.context.span_id for link in wait.links] == [batch.context.span_id]
    assert one(spans, "model").parent.span_id == batch.context.span_id


def test_cache_lookup_says_miss_then_hit_and_a_hit_runs_no_batch(exporter, repository):
    miss, hit = new_parent(), new_parent()

    async def scenario():
        async with running_app(repository) as (_, client):
            for parent in (miss, hit):
                response = await client.post(
                    "/v2/models/double-cached/infer", json=body([[4, 5]]), headers={"traceparent": parent[2]}
                )
                assert response.status_code == 200, response.text

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    computed = one(spans, "cache lookup", miss[0])
    assert computed.attributes["mlscale.cache.hit"] is False
    assert computed.attributes["mlscale.cache.source"] == "computed"
    assert computed.parent.span_id == one(spans, REST, miss[0]).context.span_id
    assert one(spans, "queue wait", miss[0]).parent.span_id == computed.context.span_id
    cached = one(spans, "cache lookup", hit[0])
    assert cached.attributes["mlscale.cache.hit"] is True and cached.attributes["mlscale.cache.source"] == "l1"
    assert [s.name for s in spans if s.context.trace_id == hit[0]] == ["cache lookup", REST]


def test_a_refused_request_is_traced_with_its_status(exporter, repository):
    trace_id, parent_id, header = new_parent()

    async def scenario():
        async with running_app(repository) as (_, client):
            response = await client.post("/v2/models/nope/infer", json=body([[1, 2]]), headers={"traceparent": header})
            assert response.status_code == 404

    asyncio.run(scenario())
    server = one(exporter.get_finished_spans(), REST)
    assert server.parent.span_id == parent_id and server.context.trace_id == trace_id
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["error.type"] == "ModelNotFound"
    assert server.status.status_code == StatusCode.UNSET  # the client's error, not the server's


def test_grpc_request_continues_the_trace_in_its_metadata(exporter, repository):
    trace_id, parent_id, header = new_parent()
    port = free_port()

    async def scenario():
        async with running_app(repository, grpc_port=port), triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
            tensor = triton_aio.InferInput("x", [1, 2], "FP32")
            tensor.set_data_from_numpy(np.array([[3, 4]], dtype=np.float32))
            result = await c.infer("double", [tensor], headers={"traceparent": header})
            np.testing.assert_array_equal(result.as_numpy("y"), [[6, 8]])
            try:
                await c.infer("nope", [tensor], headers={"traceparent": header})
            except triton_aio.InferenceServerException as exc:
                assert "NOT_FOUND" in exc.status()
            else:
                raise AssertionError("an unknown model must fail")

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    calls = by_name(spans, GRPC)
    assert len(calls) == 2
    for call in calls:
        assert call.kind == SpanKind.SERVER and call.context.trace_id == trace_id
        assert call.parent.span_id == parent_id and call.parent.is_remote
    ok, refused = sorted(calls, key=lambda s: "error.type" in s.attributes)
    assert refused.attributes["rpc.grpc.status_code"] == 5 and refused.attributes["error.type"] == "ModelNotFound"
    assert one(spans, "queue wait").parent.span_id == ok.context.span_id
    assert one(spans, "batch").parent.span_id == ok.context.span_id


def test_sample_ratio_zero_records_new_traces_never_and_sampled_callers_always(repository):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    tracing.configure(tracing.TracingSettings(enabled=True, sample_ratio=0.0), "mlscale-test", exporter=memory)
    sampled, unsampled = new_parent(), new_parent(sampled=False)

    async def scenario():
        async with running_app(repository) as (_, client):
            for headers in ({}, {"traceparent": unsampled[2]}, {"traceparent": sampled[2]}):
                response = await client.post("/v2/models/double/infer", json=body([[1, 2]]), headers=headers)
                assert response.status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        tracing.shutdown()
    spans = memory.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {sampled[0]}
    assert {"queue wait", "batch", "model", REST} == {s.name for s in spans}


def test_after_shutdown_requests_create_no_spans(exporter, repository):
    tracing.shutdown()
    assert not tracing.enabled

    async def scenario():
        async with running_app(repository) as (_, client):
            response = await client.post(
                "/v2/models/double/infer", json=body([[1, 2]]), headers={"traceparent": new_parent()[2]}
            )
            assert response.status_code == 200

    asyncio.run(scenario())
    assert exporter.get_finished_spans() == ()


def test_a_malformed_traceparent_starts_a_new_trace(exporter, repository):
    bad = ["00-zz-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "ff-" + "a" * 2000, "\u00e9t\u00e9"]

    async def scenario():
        async with running_app(repository) as (_, client):
            for header in bad:
                headers = {"traceparent": header.encode("utf-8")}
                response = await client.post("/v2/models/double/infer", json=body([[1, 2]]), headers=headers)
                assert response.status_code == 200, response.text

    asyncio.run(scenario())
    servers = by_name(exporter.get_finished_spans(), REST)
    assert len(servers) == len(bad)
    assert all(s.parent is None and s.context.trace_id != 0 for s in servers)
    assert len({s.context.trace_id for s in servers}) == len(bad)
