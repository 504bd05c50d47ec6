"""Tracing on, into the SDK's in-memory exporter, for one test at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tracing_support import build_repository

from mlscale import tracing


@pytest.fixture
def exporter() -> Iterator[object]:
    """Tracing on (every trace sampled); the spans land in the returned InMemorySpanExporter."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    tracing.configure(tracing.TracingSettings(enabled=True), "mlscale-test", exporter=memory)
    yield memory
    tracing.shutdown()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("tracing") / "models")
