"""The Grafana dashboard and Prometheus alert rules in deploy/: they parse, they query only metrics
mlscale exports, and (where promtool is installed) the rules are valid PromQL that fire as intended."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana" / "mlscale-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "mlscale-alerts.yml"

# What the server and its parts export (histograms also expose _bucket, _sum and _count).
COUNTERS = {
    "mlscale_requests_total",
    "mlscale_cache_requests_total",
    "mlscale_vision_dropped_frames_total",
    "mlscale_vision_events_total",
}
GAUGES = {
    "mlscale_inflight_requests",
    "mlscale_cache_bytes",
    "mlscale_drift_score",
    "mlscale_dataset_drift_share",
    "mlscale_alerts_firing",
    "mlscale_vision_input_fps",
    "mlscale_vision_processed_fps",
    "mlscale_vision_lag_seconds",
}
HISTOGRAMS = {
    "mlscale_request_duration_seconds",
    "mlscale_batch_size",
    "mlscale_queue_wait_seconds",
    "mlscale_model_load_seconds",
    "mlscale_vision_latency_seconds",
}
KNOWN = COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
METRIC = re.compile(r"\bmlscale_[a-z0-9_]+")


def grafana_exprs() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_grafana_dashboard_parses_and_uses_known_metrics():
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = grafana_exprs()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used <= KNOWN, f"unknown metric names: {sorted(used - KNOWN)}"
    text = "\n".join(exprs)
    for needle in (
        "rate(mlscale_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(mlscale_request_duration_seconds_bucket",
        "mlscale_batch_size_bucket",
        'mlscale_cache_requests_total{result="hit"}',
        "mlscale_drift_score",
    ):
        assert needle in text
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr


def test_alert_rules_parse_and_use_known_metrics():
    found = rules()
    names = {r["alert"] for r in found}
    assert {
        "MlscaleHighErrorRate",
        "MlscaleHighP99Latency",
        "MlscaleQueueRejections",
        "MlscaleDatasetDrift",
        "MlscaleCameraLag",
    } <= names
    for rule in found:
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= KNOWN, f"{rule['alert']}: unknown {sorted(used - KNOWN)}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]


def test_the_server_really_exports_the_names_the_exports_use():
    """The names above are not wishful: the serving, cache and monitoring parts register them."""
    for module in ("mlscale.serving.metrics", "mlscale.cache.metrics", "mlscale.monitoring.metrics"):
        pytest.importorskip(module)
    from prometheus_client import REGISTRY

    exported = {s.name for m in REGISTRY.collect() for s in m.samples} | {m.name for m in REGISTRY.collect()}
    for name in (
        "mlscale_requests",
        "mlscale_request_duration_seconds",
        "mlscale_batch_size",
        "mlscale_queue_wait_seconds",
        "mlscale_inflight_requests",
        "mlscale_model_load_seconds",
        "mlscale_cache_requests",
        "mlscale_cache_bytes",
        "mlscale_drift_score",
        "mlscale_dataset_drift_share",
        "mlscale_alerts_firing",
    ):
        assert name in exported, name


PROMTOOL = shutil.which("promtool")


def rule_tests(rules_file: str) -> dict:
    """A promtool unit test: sample series, and the alerts (with rendered summaries) they must raise."""
    described = {r["alert"]: r["annotations"]["description"] for r in rules()}

    def expect(alert: str, labels: dict, summary: str) -> list[dict]:
        description = described[alert]
        for key, value in labels.items():
            description = description.replace("{{ $labels." + key + " }}", value)
        annotations = {"summary": summary, "description": description}
        return [{"exp_labels": labels, "exp_annotations": annotations}]

    series = {
        'mlscale_requests_total{model="iris",version="1",outcome="success"}': "0+90x20",
        'mlscale_requests_total{model="iris",version="1",outcome="error"}': "0+10x20",
        'mlscale_requests_total{model="fraud",version="2",outcome="success"}': "0+100x20",
        'mlscale_dataset_drift_share{monitor="inputs"}': "0.2x5 0.8x20",
        'mlscale_vision_lag_seconds{camera="dock"}': "0.1x10 3x10",
    }
    cases = [
        (
            "12m",
            "MlscaleHighErrorRate",
            expect("MlscaleHighErrorRate", {"severity": "critical", "model": "iris"}, "iris: 10% of requests fail"),
        ),
        ("12m", "MlscaleDatasetDrift", []),  # drifting for 7 of the 15 minutes `for` asks
        (
            "22m",
            "MlscaleDatasetDrift",
            expect(
                "MlscaleDatasetDrift", {"severity": "warning", "monitor": "inputs"}, "inputs: 80% of features drifted"
            ),
        ),
        (
            "14m",
            "MlscaleCameraLag",
            expect("MlscaleCameraLag", {"severity": "warning", "camera": "dock"}, "camera dock is 3s behind live"),
        ),
        ("14m", "MlscaleQueueRejections", []),
    ]
    return {
        "rule_files": [rules_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": e} for t, a, e in cases],
            }
        ],
    }


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_rules_and_they_fire_on_sample_series(tmp_path):
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    rules_copy = tmp_path / "mlscale-alerts.yml"
    rules_copy.write_text(RULES.read_text())
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(rule_tests(rules_copy.name)))
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
