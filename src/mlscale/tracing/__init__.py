"""mlscale.tracing: OpenTelemetry spans along a request's path, off unless ``[tracing] enabled``.

The hot path reads one module attribute, ``enabled``, and does nothing else while it is False: no
span objects, no context switching, and OpenTelemetry itself is never imported (``spans`` holds
every line that touches it and is imported by ``configure`` only). Callers branch on
``tracing.enabled`` and open spans on the enabled side only; ``span()`` and ``event()`` are safe to
call either way (a shared no-op when off), but even a no-op costs half a microsecond, which an L1
cache hit would notice.

Tracing is process-wide state on purpose: a worker process has one exporter and one sampler, and
the flag must be free to read from the batcher, the transports and the gateway alike. The SDK's
tracer provider stays private to mlscale (not installed as OpenTelemetry's global provider), so an
application embedding mlscale keeps its own.
"""

from __future__ import annotations

from typing import Any

from mlscale.errors import ConfigError
from mlscale.tracing.settings import TracingSettings

__all__ = ["TracingSettings", "annotate", "configure", "enabled", "event", "flush", "shutdown", "span"]

# True between configure() (with tracing enabled) and shutdown().
enabled = False


class _Off:
    """What ``span()`` gives while tracing is off (or there is no recorded parent): does nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def add_event(self, name: str, attributes: dict | None = None) -> None:
        return None


OFF = _Off()


def configure(settings: TracingSettings, default_service: str, exporter: Any = None) -> bool:
    """Start tracing in this process when ``settings.enabled``; returns whether it is on.

    ``exporter``: a SpanExporter to use instead of OTLP, exporting each span as it ends (tests
    pass the SDK's InMemorySpanExporter). Call it in each worker process (after the fork: the
    OTLP exporter's batch thread does not survive one)."""
    global enabled
    if not settings.enabled:
        return False
    try:
        from mlscale.tracing import spans
    except ImportError as exc:
        raise ConfigError(
            f"[tracing] enabled needs OpenTelemetry ({exc.name} is missing): pip install 'mlscale[tracing]'"
        ) from None
    spans.install(settings, default_service, exporter)
    enabled = True
    return True


def shutdown() -> None:
    """Export what is buffered and stop tracing (spans after this are not recorded)."""
    global enabled
    if not enabled:
        return
    enabled = False
    from mlscale.tracing import spans

    spans.uninstall()


def flush(timeout: float = 10.0) -> None:
    """Export what is buffered now, waiting at most ``timeout`` seconds; tracing stays on. For a
    process about to exit by a signal, where code after the server's return never runs."""
    if enabled:
        from mlscale.tracing import spans

        spans.flush(timeout)


def span(name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A context manager recording ``name`` as a child of the current span; a no-op when tracing is
    off or the current request is not recorded (a step never starts a trace of its own)."""
    if not enabled:
        return OFF
    from mlscale.tracing import spans

    return spans.child(name, attributes)


def event(name: str, attributes: dict[str, Any] | None = None) -> None:
    """Add an event to the current span (when tracing is on and it is recorded)."""
    if enabled:
        from mlscale.tracing import spans

        spans.event(name, attributes)


def annotate(attributes: dict[str, Any]) -> None:
    """Set attributes on the current span (when tracing is on and it is recorded): what a handler
    learns from the body (a feature service, how many events) belongs on its request's span."""
    if enabled:
        from mlscale.tracing import spans

        spans.annotate(attributes)
