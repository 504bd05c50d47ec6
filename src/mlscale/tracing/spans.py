"""Everything that touches OpenTelemetry: the tracer, W3C trace-context propagation, and the span
shapes of a request's path. Imported only once tracing is configured (see ``mlscale.tracing``).

The path of one inference request, as spans:

    gateway (SERVER) -> gateway forward (CLIENT, one per replica tried; injects ``traceparent``)
      -> server request (SERVER: REST ``POST /v2/models/{model}/infer`` or gRPC ModelInfer;
         extracts ``traceparent`` from the headers or the call's metadata)
           -> feature lookup, cache lookup (source and hit) -> queue wait (enqueue to batch start)
    batch (its requests as links; the model version, rows and requests as attributes) -> model

A batch serves many requests but a span has one parent: the batch is the child of the oldest
recorded request it serves, so that request's trace shows the model call inline, and it links to
every request it serves; each request's ``queue wait`` span links back to the batch.

The JSON routes have a SERVER span each, named by route, around the body read and the handler:
``POST /v1/features`` -> ``online read`` (the store's batched get and decode), and
``POST /v1/events/{topic}`` -> ``broker append`` (run in a worker thread, which inherits the context).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import mlscale
from mlscale.errors import MlscaleError
from mlscale.tracing import OFF
from mlscale.tracing.settings import TracingSettings

T = TypeVar("T")
# What a request's submit() keeps for its batch: its span's context and when it was queued (ns).
Captured = tuple[SpanContext, int]

_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_propagator = TraceContextTextMapPropagator()
_TRACE_HEADERS = (b"traceparent", b"tracestate")


def install(settings: TracingSettings, default_service: str, exporter: SpanExporter | None = None) -> None:
    """A tracer provider of our own (not OpenTelemetry's global one) with a parent-based ratio sampler."""
    global _provider, _tracer
    uninstall()
    service = settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or default_service
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    if exporter is None:
        # endpoint None: the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _ENDPOINT itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.traces_url())))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("mlscale", mlscale.__version__)


def uninstall() -> None:
    """Flush and stop the exporter (a batch exporter sends what it still holds)."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = trace.NoOpTracer()


def flush(timeout: float) -> None:
    if _provider is not None:
        _provider.force_flush(int(timeout * 1000))


def extract(headers: list[tuple[bytes, bytes]]) -> Any:
    """The remote parent in ``traceparent``/``tracestate`` headers (ASGI pairs), or None."""
    carrier = {}
    for key, value in headers:
        if key in _TRACE_HEADERS:
            carrier[key.decode()] = value.decode("latin-1")
    return _propagator.extract(carrier) if carrier else None


async def serve(
    name: str,
    headers: list[tuple[bytes, bytes]],
    attributes: dict[str, Any],
    call: Awaitable[T],
    status: Callable[[T], int] | None = None,
    error_code: Callable[[MlscaleError], tuple[str, int]] | None = None,
) -> T:
    """Await ``call`` inside a SERVER span continuing the caller's trace from ``headers``.

    ``status(result)``: the HTTP status of an answer; ``error_code(exc)``: the (attribute, code) of a
    typed error (default: its HTTP status). Client errors (4xx) leave the span's status unset, as
    the HTTP conventions ask of a server; 5xx and anything untyped mark it failed."""
    span = _tracer.start_span(
        name,
        context=extract(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            result = await call
        except MlscaleError as exc:
            key, code = error_code(exc) if error_code is not None else ("http.response.status_code", exc.status)
            span.set_attribute(key, code)
            span.set_attribute("error.type", type(exc).__name__)
            if exc.status >= 500:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        except asyncio.CancelledError:
            span.set_attribute("error.type", "cancelled")
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, repr(exc)))
            raise
        if status is not None:
            span.set_attribute("http.response.status_code", status(result))
        return result


@contextmanager
def client(
    name: str, attributes: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> Iterator[tuple[trace.Span, list[tuple[bytes, bytes]]]]:
    """A CLIENT span, and ``headers`` with its ``traceparent`` in place of any the caller sent."""
    span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    with trace.use_span(span, end_on_exit=True):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)  # from the current context: this span
        outgoing = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
        outgoing.extend((k.encode(), v.encode()) for k, v in carrier.items())
        yield span, outgoing


def child(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A span under the current one, or the no-op when the current one is not recorded."""
    if not trace.get_current_span().is_recording():
        return OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def event(name: str, attributes: dict[str, Any] | None = None) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def annotate(attributes: dict[str, Any]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def capture() -> Captured | None:
    """What a queued request hands its batch: its span and the time, when its trace is recorded."""
    context = trace.get_current_span().get_span_context()
    return (context, time.time_ns()) if context.trace_flags.sampled else None


@contextmanager
def batch(captured: list[Captured], rows: int, requests: int, attributes: dict[str, Any]) -> Iterator[None]:
    """The span of one batch (current while it runs), and a ``queue wait`` span in each recorded
    request's trace, from its enqueueing to this batch's start."""
    now = time.time_ns()
    parent = trace.set_span_in_context(trace.NonRecordingSpan(captured[0][0]))
    span = _tracer.start_span(
        "batch",
        context=parent,
        attributes={**attributes, "mlscale.batch.size": rows, "mlscale.batch.requests": requests},
        links=[Link(context) for context, _ in captured],
        start_time=now,
    )
    link = [Link(span.get_span_context())]
    for context, enqueued in captured:
        wait = _tracer.start_span(
            "queue wait",
            context=trace.set_span_in_context(trace.NonRecordingSpan(context)),
            attributes={"mlscale.queue.wait_ms": (now - enqueued) / 1e6, "mlscale.batch.size": rows},
            links=link,
            start_time=enqueued,
        )
        wait.end(end_time=now)
    with trace.use_span(span, end_on_exit=True):
        yield
