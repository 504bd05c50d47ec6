"""Tracing off (the default) costs nothing: a served request, the gateway and the batcher import no
OpenTelemetry at all, so no span can exist; and the settings refuse what cannot work, clearly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlscale.config import parse_settings
from mlscale.errors import ConfigError
from mlscale.tracing import TracingSettings

HERE = Path(__file__).resolve().parent

OFF_SCRIPT = """
import asyncio, sys
from pathlib import Path
import httpx
from tracing_support import body, build_feature_project, new_parent, running_app
from mlscale.gateway.proxy import Gateway
from mlscale.gateway.settings import GatewaySettings

async def main():
    project = build_feature_project(Path(sys.argv[2]))
    async with running_app(Path(sys.argv[1]), project=project) as (app, client):
        headers = {"traceparent": new_parent()[2]}
        for model in ("double", "double-cached"):
            response = await client.post(f"/v2/models/{model}/infer", json=body([[1, 2]]), headers=headers)
            assert response.status_code == 200, response.text
        request = {"feature_service": "driver_model", "entities": {"driver_id": [1]}}
        response = await client.post("/v1/features", json=request, headers=headers)
        assert response.status_code == 200, response.text
        response = await client.post("/v1/events/trips", json=[{"driver_id": 1}], headers=headers)
        assert response.status_code == 200, response.text
    Gateway(GatewaySettings(backends=["http://127.0.0.1:9"]))

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": path},
    )


def test_tracing_off_serves_requests_without_importing_opentelemetry(repository, tmp_path):
    """Inference, online features and event ingestion, each with a caller's traceparent."""
    result = _run(OFF_SCRIPT, str(repository), str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_tracing_on_without_opentelemetry_installed_names_the_extra():
    script = """
    import sys
    sys.modules["opentelemetry"] = None  # as if the extra were not installed
    from mlscale import tracing
    try:
        tracing.configure(tracing.TracingSettings(enabled=True), "mlscale-server")
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
    result = _run(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ConfigError")
    assert "pip install 'mlscale[tracing]'" in result.stdout


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sample_ratio": 1.5}, "sample_ratio must be between 0 and 1"),
        ({"sample_ratio": -0.1}, "sample_ratio must be between 0 and 1"),
        ({"otlp_endpoint": "collector:4318"}, "must be an http:// or https:// URL"),
        ({"otlp_endpoint": "grpc://collector:4317"}, "must be an http:// or https:// URL"),
        ({"service_name": " "}, "service_name must not be empty"),
        ({"enable": True}, "unknown field `enable`"),
    ],
)
def test_bad_tracing_settings_are_refused_with_the_reason(section, message):
    with pytest.raises(ConfigError, match=r"mlscale\.toml") as caught:
        parse_settings({"tracing": section})
    assert message in str(caught.value)


def test_endpoint_gets_the_traces_path_unless_it_has_one():
    assert TracingSettings().traces_url() is None  # the OTEL_* variables decide
    assert TracingSettings(otlp_endpoint="http://c:4318").traces_url() == "http://c:4318/v1/traces"
    assert TracingSettings(otlp_endpoint="http://c:4318/").traces_url() == "http://c:4318/v1/traces"
    assert TracingSettings(otlp_endpoint="https://c/otlp/v1/traces").traces_url() == "https://c/otlp/v1/traces"
    assert parse_settings({}).tracing.enabled is False


def test_cli_refuses_a_bad_tracing_section(tmp_path):
    (tmp_path / "mlscale.toml").write_text("[tracing]\nenabled = true\nsample_ratio = 2\n")
    (tmp_path / "models").mkdir()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mlscale"), "serve", "--config", str(tmp_path / "mlscale.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "sample_ratio must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr
