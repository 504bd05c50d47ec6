"""The JSON endpoints' spans: ``POST /v1/features`` with its online store read and
``POST /v1/events/{topic}`` with its broker append, each continuing the caller's trace; refused
requests keep their 4xx answer and say why on the span; a failing broker marks both spans failed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from tracing_support import DRIVER_RATES, build_feature_project, by_name, new_parent, one, running_app

from mlscale.config import Settings
from mlscale.streams.settings import StreamSettings

FEATURES = "POST /v1/features"
EVENTS = "POST /v1/events/{topic}"


def post_all(repository: Path, project: Settings | None, requests: list[tuple[str, dict]]) -> list[tuple[int, dict]]:
    """POST each (path, keyword arguments) in turn to a running app; the statuses and JSON answers."""

    async def scenario():
        answers = []
        async with running_app(repository, project=project) as (_, client):
            for path, kwargs in requests:
                response = await client.post(path, **kwargs)
                answers.append((response.status_code, response.json()))
        return answers

    return asyncio.run(scenario())


def in_trace(spans, trace_id: int) -> list[str]:
    return sorted(s.name for s in spans if s.context.trace_id == trace_id)


def test_feature_read_is_a_span_of_its_request(exporter, repository, tmp_path):
    project = build_feature_project(tmp_path)
    trace_id, parent_id, header = new_parent()
    request = {"feature_service": "driver_model", "entities": {"driver_id": [2, 3, 99]}}
    [(status, answer)] = post_all(
        repository, project, [("/v1/features", {"json": request, "headers": {"traceparent": header}})]
    )
    assert status == 200, answer
    conv = answer["results"][answer["metadata"]["feature_names"].index("conv_rate")]
    assert conv["values"][:2] == pytest.approx([DRIVER_RATES[2][0], DRIVER_RATES[3][0]])
    assert conv["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]

    spans = exporter.get_finished_spans()
    server = one(spans, FEATURES, trace_id)
    assert server.kind == SpanKind.SERVER and server.parent.span_id == parent_id and server.parent.is_remote
    assert server.attributes["http.route"] == "/v1/features"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["mlscale.features.service"] == "driver_model"
    assert server.attributes["mlscale.features.entities"] == 3
    assert server.attributes["mlscale.features.count"] == 2
    assert server.status.status_code == StatusCode.UNSET
    read = one(spans, "online read", trace_id)
    assert read.parent.span_id == server.context.span_id
    assert read.attributes["mlscale.features.entities"] == 3 and read.attributes["mlscale.features.views"] == 1
    assert server.start_time <= read.start_time <= read.end_time <= server.end_time
    assert in_trace(spans, trace_id) == sorted(["online read", FEATURES])


def test_refused_feature_requests_keep_their_answer_and_say_why_on_the_span(exporter, repository, tmp_path):
    project = build_feature_project(tmp_path)
    unknown, missing, malformed = new_parent(), new_parent(), new_parent()
    requests = [
        ({"feature_service": "nope", "entities": {"driver_id": [1]}}, unknown),
        ({"feature_service": "driver_model"}, missing),
    ]
    calls = [("/v1/features", {"json": body, "headers": {"traceparent": parent[2]}}) for body, parent in requests]
    calls.append(("/v1/features", {"content": b"{oops", "headers": {"traceparent": malformed[2]}}))
    answers = post_all(repository, project, calls)
    assert [status for status, _ in answers] == [404, 400, 400]
    assert "nope" in answers[0][1]["error"] and "entities" in answers[1][1]["error"]

    spans = exporter.get_finished_spans()
    expected = {unknown: (404, "NotFound"), missing: (400, "InvalidInput"), malformed: (400, "InvalidInput")}
    for parent, (code, error) in expected.items():
        server = one(spans, FEATURES, parent[0])
        assert server.parent.span_id == parent[1]
        assert server.attributes["http.response.status_code"] == code
        assert server.attributes["error.type"] == error
        assert server.status.status_code == StatusCode.UNSET  # the client's error, not the server's
        assert in_trace(spans, parent[0]) == [FEATURES]  # refused before any read
    assert one(spans, FEATURES, unknown[0]).attributes["mlscale.features.service"] == "nope"


def test_event_append_is_a_span_of_its_request(exporter, repository):
    good, malformed, bad_topic = new_parent(), new_parent(), new_parent()
    events = [{"driver_id": 7, "fare": 10.0 + i} for i in range(3)]
    calls = [
        ("/v1/events/trips", {"json": events, "headers": {"traceparent": good[2]}}),
        ("/v1/events/trips", {"json": [{"driver_id": 7}, "not an event"], "headers": {"traceparent": malformed[2]}}),
        ("/v1/events/bad topic!", {"json": events, "headers": {"traceparent": bad_topic[2]}}),
    ]
    answers = post_all(repository, None, calls)
    assert [status for status, _ in answers] == [200, 400, 400]
    assert answers[0][1]["accepted"] == 3 and len(answers[0][1]["offsets"]) == 3
    assert "event 1" in answers[1][1]["error"]

    spans = exporter.get_finished_spans()
    server = one(spans, EVENTS, good[0])
    assert server.kind == SpanKind.SERVER and server.parent.span_id == good[1] and server.parent.is_remote
    assert server.attributes["url.path"] == "/v1/events/trips"
    assert server.attributes["http.route"] == "/v1/events/{topic}"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["mlscale.events.topic"] == "trips"
    assert server.attributes["mlscale.events.accepted"] == 3
    append = one(spans, "broker append", good[0])
    assert append.parent.span_id == server.context.span_id
    assert append.attributes["mlscale.events.count"] == 3 and append.attributes["mlscale.broker"] == "EmbeddedBroker"
    assert server.start_time <= append.start_time <= append.end_time <= server.end_time

    for parent in (malformed, bad_topic):  # refused whole, before any append
        refused = one(spans, EVENTS, parent[0])
        assert refused.parent.span_id == parent[1]
        assert refused.attributes["http.response.status_code"] == 400
        assert refused.attributes["error.type"] == "InvalidInput"
        assert "mlscale.events.accepted" not in refused.attributes
        assert refused.status.status_code == StatusCode.UNSET
        assert in_trace(spans, parent[0]) == [EVENTS]
    assert one(spans, EVENTS, malformed[0]).attributes["mlscale.events.topic"] == "trips"


def test_a_failing_broker_marks_the_append_and_the_request_failed(exporter, repository):
    # Nothing listens on port 1: the broker opens (lazily) and its append fails to connect.
    project = Settings(root=str(repository.parent), streams=StreamSettings(broker="redis://127.0.0.1:1"))
    trace_id, _, header = new_parent()
    calls = [("/v1/events/trips", {"json": [{"driver_id": 7}], "headers": {"traceparent": header}})]
    [(status, answer)] = post_all(repository, project, calls)
    assert status == 500 and answer == {"error": "internal server error"}

    spans = exporter.get_finished_spans()
    server = one(spans, EVENTS, trace_id)
    append = one(spans, "broker append", trace_id)
    assert append.parent.span_id == server.context.span_id
    assert append.attributes["mlscale.broker"] == "RedisStreamsBroker"
    for span in (append, server):
        assert span.status.status_code == StatusCode.ERROR
        assert [e.attributes["exception.type"] for e in by_name(span.events, "exception")] == [
            "redis.exceptions.ConnectionError"
        ]
    assert "mlscale.events.accepted" not in server.attributes
