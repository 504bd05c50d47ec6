"""Settings of tracing (``[tracing]`` in mlscale.toml); imports nothing heavy (no OpenTelemetry)."""

from __future__ import annotations

from urllib.parse import urlparse

import msgspec


class TracingSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenTelemetry spans of each request (inference, features, events), exported over OTLP/HTTP; off by default.

    ``otlp_endpoint`` is the collector's base URL (``http://collector:4318``; ``/v1/traces`` is
    added when the URL has no path) or the full traces URL. Unset, the standard variables decide
    (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``), then
    ``http://localhost:4318``. ``service_name`` unset: ``OTEL_SERVICE_NAME``, else ``mlscale-server``
    or ``mlscale-gateway``. ``sample_ratio``: the share of new traces recorded; a request that
    arrives with a ``traceparent`` follows its caller's decision.
    """

    enabled: bool = False
    otlp_endpoint: str | None = None
    service_name: str | None = None
    sample_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError("tracing.sample_ratio must be between 0 and 1")
        if self.otlp_endpoint is not None:
            url = urlparse(self.otlp_endpoint)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(
                    f"tracing.otlp_endpoint must be an http:// or https:// URL, got {self.otlp_endpoint!r}"
                )
        if self.service_name is not None and not self.service_name.strip():
            raise ValueError("tracing.service_name must not be empty")

    def traces_url(self) -> str | None:
        """The OTLP/HTTP traces URL from ``otlp_endpoint``, or None to let the OTEL_* variables decide."""
        if self.otlp_endpoint is None:
            return None
        if urlparse(self.otlp_endpoint).path.strip("/"):
            return self.otlp_endpoint
        return self.otlp_endpoint.rstrip("/") + "/v1/traces"
