"""HTTP ingestion glue: ``POST /v1/events/{topic}`` bodies validated whole, then appended in one call.

The body is a JSON list of event objects or ``{"events": [...]}``. Every event is checked before any
is appended, so a bad request (answered 400 via ``InvalidInput``) leaves nothing half-accepted.
"""

from __future__ import annotations

import re

import msgspec

from mlscale import tracing
from mlscale.errors import InvalidInput
from mlscale.streams.broker import Broker

_TOPIC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_EVENTS = 100_000


def parse_events(body: bytes | str | list | dict) -> list[dict]:
    """The events of a request body, or InvalidInput naming what is wrong."""
    if isinstance(body, bytes | str):
        try:
            body = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from None
    if isinstance(body, dict):
        if set(body) != {"events"}:
            raise InvalidInput('expected a JSON list of events or {"events": [...]}')
        body = body["events"]
    if not isinstance(body, list):
        raise InvalidInput('expected a JSON list of events or {"events": [...]}')
    if not body:
        raise InvalidInput("no events in the body")
    if len(body) > MAX_EVENTS:
        raise InvalidInput(f"{len(body)} events in one request; at most {MAX_EVENTS}")
    for i, event in enumerate(body):
        if not isinstance(event, dict):
            raise InvalidInput(f"event {i} is a {type(event).__name__}, not a JSON object")
    return body


def check_topic(topic: str) -> None:
    """InvalidInput unless ``topic`` is a name every broker accepts."""
    if not _TOPIC.match(topic):
        raise InvalidInput(f"topic {topic!r}: use letters, digits, '_', '.', '-' (at most 128)")


def ingest_events(broker: Broker, topic: str, body: bytes | str | list | dict) -> dict:
    """Append a request's events to ``topic``; returns ``{"topic", "accepted", "offsets"}``."""
    check_topic(topic)
    if tracing.enabled:
        return _traced_ingest(broker, topic, body)
    events = parse_events(body)
    offsets = broker.append(topic, events)
    return {"topic": topic, "accepted": len(events), "offsets": offsets}


def _traced_ingest(broker: Broker, topic: str, body: bytes | str | list | dict) -> dict:
    """``ingest_events`` with the topic and the events accepted on the request's span, and the
    append (the broker's round trips: where the time goes) as a child span."""
    tracing.annotate({"mlscale.events.topic": topic})
    events = parse_events(body)
    attributes = {"mlscale.events.topic": topic, "mlscale.events.count": len(events)}
    with tracing.span("broker append", {**attributes, "mlscale.broker": type(broker).__name__}):
        offsets = broker.append(topic, events)
    tracing.annotate({"mlscale.events.accepted": len(events)})
    return {"topic": topic, "accepted": len(events), "offsets": offsets}
