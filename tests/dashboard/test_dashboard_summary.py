"""The numbers behind the dashboard: rates and quantiles from two scrapes, checked by hand."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mlscale.monitoring.dashboard.panels import alerts_panel, drift_panel, histogram_bars
from mlscale.monitoring.dashboard.promtext import histogram_quantile, parse_snapshot
from mlscale.monitoring.dashboard.summary import MetricsHistory, step_point, window_figures


def exposition(
    *,
    a_success: float,
    a_error: float,
    b_success: float,
    a_buckets: tuple[float, float, float, float],
    b_buckets: tuple[float, float, float, float],
    batch: tuple[float, ...] = (0, 0, 0, 0, 0),
    hits: float = 0,
    misses: float = 0,
    inflight: float = 0,
) -> str:
    """Prometheus text for two models; buckets are cumulative counts at le=0.01, 0.1, 1, +Inf."""
    lines = [
        "# TYPE mlscale_requests_total counter",
        f'mlscale_requests_total{{model="a",version="1",outcome="success"}} {a_success}',
        f'mlscale_requests_total{{model="a",version="1",outcome="error"}} {a_error}',
        f'mlscale_requests_total{{model="b",version="2",outcome="success"}} {b_success}',
        "# TYPE mlscale_request_duration_seconds histogram",
    ]
    for model, version, buckets in (("a", "1", a_buckets), ("b", "2", b_buckets)):
        for le, count in zip(("0.01", "0.1", "1.0", "+Inf"), buckets, strict=True):
            labels = f'model="{model}",version="{version}",le="{le}"'
            lines.append(f"mlscale_request_duration_seconds_bucket{{{labels}}} {count}")
        lines.append(f'mlscale_request_duration_seconds_count{{model="{model}",version="{version}"}} {buckets[-1]}')
        lines.append(f'mlscale_request_duration_seconds_sum{{model="{model}",version="{version}"}} 1.0')
    lines.append("# TYPE mlscale_batch_size histogram")
    for le, count in zip(("1.0", "2.0", "4.0", "8.0", "+Inf"), batch, strict=True):
        lines.append(f'mlscale_batch_size_bucket{{model="a",version="1",le="{le}"}} {count}')
    lines.append(f'mlscale_batch_size_count{{model="a",version="1"}} {batch[-1]}')
    lines.append(f'mlscale_batch_size_sum{{model="a",version="1"}} {sum(batch[:1]) + 4 * batch[-1]}')
    lines += [
        "# TYPE mlscale_cache_requests_total counter",
        f'mlscale_cache_requests_total{{cache="predictions",tier="l1",result="hit"}} {hits}',
        f'mlscale_cache_requests_total{{cache="predictions",tier="l1",result="miss"}} {misses}',
        "# TYPE mlscale_inflight_requests gauge",
        f'mlscale_inflight_requests{{model="a"}} {inflight}',
        'mlscale_inflight_requests{model="b"} 1',
    ]
    return "\n".join(lines) + "\n"


BEFORE = exposition(a_success=100, a_error=5, b_success=50, a_buckets=(10, 90, 100, 105), b_buckets=(50, 50, 50, 50))
# Over the 10 s step: model a +100 success, +10 errors, latency buckets +20/+80/+100/+100;
# model b +30 requests, all under 10 ms.
AFTER = exposition(
    a_success=200,
    a_error=15,
    b_success=80,
    a_buckets=(30, 170, 200, 205),
    b_buckets=(80, 80, 80, 80),
    batch=(2, 2, 6, 8, 8),
    hits=30,
    misses=10,
    inflight=3,
)


def test_step_point_rates_and_quantiles_match_hand_computation():
    point = step_point(parse_snapshot(AFTER, 110.0), parse_snapshot(BEFORE, 100.0))
    assert point["requests_per_second"] == pytest.approx(140 / 10)
    assert point["errors_per_second"] == pytest.approx(10 / 10)
    # Summed buckets: 50, 110, 130, 130. p50: rank 65 in (0.01, 0.1] holding 60 above 50 below.
    assert point["p50"] == pytest.approx(0.01 + 0.09 * 15 / 60)
    # p90: rank 117 in (0.1, 1] holding 20 above 110 below.
    assert point["p90"] == pytest.approx(0.1 + 0.9 * 7 / 20)
    assert point["p99"] == pytest.approx(0.1 + 0.9 * (128.7 - 110) / 20)
    assert point["cache_hit_ratio"] == pytest.approx(0.75)
    assert point["inflight"] == 4
    assert point["time"] == 110.0


def test_window_figures_per_model_and_batch_distribution():
    figures = window_figures(parse_snapshot(AFTER, 110.0), parse_snapshot(BEFORE, 100.0))
    rows = {r["model"]: r for r in figures["per_model"]}
    assert rows["a"]["requests"] == 110
    assert rows["a"]["error_ratio"] == pytest.approx(10 / 110)
    assert rows["a"]["p50"] == pytest.approx(0.01 + 0.09 * 30 / 60)
    assert rows["b"]["requests_per_second"] == pytest.approx(3.0)
    assert rows["b"]["p50"] == pytest.approx(0.005)
    assert figures["error_ratio"] == pytest.approx(10 / 140)
    # Cumulative batch buckets 2, 2, 6, 8, 8 -> per bucket 2, 0, 4, 2, 0.
    assert [b["count"] for b in figures["batch_sizes"]] == [2, 0, 4, 2, 0]
    assert [b["le"] for b in figures["batch_sizes"]][:4] == [1, 2, 4, 8]
    assert figures["cache"] == [
        {"cache": "predictions", "tier": "l1", "hits": 30, "misses": 10, "hit_ratio": 0.75, "bytes": None}
    ]


def test_counter_reset_counts_the_whole_new_value():
    restarted = exposition(
        a_success=30, a_error=0, b_success=80, a_buckets=(30, 30, 30, 30), b_buckets=(80, 80, 80, 80)
    )
    point = step_point(parse_snapshot(restarted, 115.0), parse_snapshot(AFTER, 110.0))
    # a restarted: its 30 requests count; b grew by 0; a's errors went 15 -> 0: a reset of zero.
    assert point["requests_per_second"] == pytest.approx(30 / 5)
    assert point["p50"] == pytest.approx(0.005)


def test_interval_without_traffic_has_no_quantiles_and_zero_rate():
    point = step_point(parse_snapshot(BEFORE, 101.0), parse_snapshot(BEFORE, 100.0))
    assert point["requests_per_second"] == 0
    assert point["p50"] is None and point["p99"] is None and point["cache_hit_ratio"] is None


def test_histogram_quantile_follows_promql_edges():
    assert histogram_quantile(0.5, [(1.0, 0.0), (2.0, 10.0), (math.inf, 10.0)]) == pytest.approx(1.5)
    # Rank in the +Inf bucket: the highest finite bound.
    assert histogram_quantile(0.99, [(1.0, 5.0), (2.0, 5.0), (math.inf, 10.0)]) == 2.0
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
    assert math.isnan(histogram_quantile(0.5, [(1.0, 3.0)]))
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, [(1.0, 1.0), (math.inf, 1.0)])


def test_quantiles_from_a_real_prometheus_client_registry():
    registry = CollectorRegistry()
    duration = Histogram(
        "mlscale_request_duration_seconds",
        "d",
        ["model", "version"],
        buckets=(0.1, 0.2, 0.4),
        registry=registry,
    )
    requests = Counter("mlscale_requests", "r", ["model", "version", "outcome"], registry=registry)
    before = parse_snapshot(generate_latest(registry).decode(), 0.0)
    for _ in range(10):
        duration.labels("m", "1").observe(0.15)
        requests.labels("m", "1", "success").inc()
    duration.labels("m", "1").observe(0.3)
    requests.labels("m", "1", "timeout").inc()
    point = step_point(parse_snapshot(generate_latest(registry).decode(), 2.0), before)
    # 10 in (0.1, 0.2], 1 in (0.2, 0.4]: p50 rank 5.5 -> 0.1 + 0.1 * 5.5 / 10.
    assert point["p50"] == pytest.approx(0.155)
    assert point["p99"] == pytest.approx(0.2 + 0.2 * (10.89 - 10))
    assert point["requests_per_second"] == pytest.approx(5.5)
    assert point["errors_per_second"] == pytest.approx(0.5)


def test_history_windows_series_and_pruning():
    history = MetricsHistory(max_age=60.0, min_interval=0.5)
    history.add(BEFORE, 100.0)
    assert history.summary(30.0)["window"] is None
    history.add(AFTER, 110.0)
    summary = history.summary(30.0)
    assert summary["series"]["requests_per_second"] == [pytest.approx(14.0)]
    assert summary["window"]["requests"] == 140
    assert not history.due(110.2) and history.due(110.5)
    with pytest.raises(ValueError, match="time order"):
        history.add(AFTER, 105.0)
    history.add(AFTER, 200.0)
    # The first two snapshots are older than max_age now; the window falls back to the last step.
    assert len(history.summary(30.0)["series"]["time"]) == 1
    assert history.summary(30.0)["window"]["requests"] == 0


def test_malformed_metrics_text_is_rejected():
    with pytest.raises(ValueError):
        MetricsHistory().add('mlscale_requests_total{model="a" 1\n', 1.0)


def test_drift_histograms_become_comparable_shares():
    bars = histogram_bars({"bins": [0, 1, 2], "counts": [30, 10]}, {"bins": [0, 1, 2], "counts": [1, 3]})
    assert bars["x"] == [0.5, 1.5] and bars["width"] == [1, 1]
    assert bars["reference"] == [0.75, 0.25] and bars["current"] == [0.25, 0.75]
    cat = histogram_bars({"bins": ["a", "b"], "counts": [1, 1]}, {"bins": ["b", "c"], "counts": [1, 3]})
    assert cat["x"] == ["a", "b", "c"]
    assert cat["reference"] == [0.5, 0.5, 0.0] and cat["current"] == [0.0, 0.25, 0.75]
    with pytest.raises(ValueError, match="bin edges"):
        histogram_bars({"bins": [0, 1, 2], "counts": [1, 1]}, {"bins": [0, 5, 9], "counts": [1, 1]})
    panel = drift_panel(
        {"features": [{"feature": "x", "drifted": True}, {"feature": "y", "drifted": False}], "name": "m"}
    )
    assert panel["monitors"][0]["drift_share"] == 0.5 and panel["monitors"][0]["drifted"]


def test_alerts_sorted_firing_first_then_newest():
    rows = alerts_panel(
        [
            {"rule": "old", "state": "resolved", "since": 5},
            {"rule": "p", "state": "pending", "since": 9},
            {"rule": "f1", "state": "firing", "since": 1},
            {"rule": "f2", "state": "firing", "since": 3},
        ]
    )
    assert [r["rule"] for r in rows] == ["f2", "f1", "p", "old"]


def test_drift_panel_reads_the_monitor_run_state_file_shape():
    """``mlscale monitor run`` stores ``{"monitors": {name: result}}``; ``share`` is the drifted share
    there and ``drift_share`` the dataset-drift threshold."""
    state = {
        "time": 100.0,
        "monitors": {
            "iris": {
                "model": "iris",
                "share": 0.5,
                "drifted": True,
                "drift_share": 0.5,
                "current_rows": 400,
                "columns": [
                    {
                        "column": "x",
                        "kind": "numeric",
                        "test": "ks",
                        "value": 0.3,
                        "threshold": 0.05,
                        "drifted": True,
                        "reference": {"bins": [0.0, 1.0, 2.0], "counts": [3, 1]},
                        "current": {"bins": [0.0, 1.0, 2.0], "counts": [1, 1]},
                    },
                    {"column": "y", "kind": "categorical", "test": "chisquare", "value": 0.9, "drifted": False},
                ],
            },
            "fraud": {"model": "fraud", "error": "payload log unreadable", "time": 100.0},
        },
    }
    iris, fraud = drift_panel(state)["monitors"]
    assert iris["name"] == "iris" and iris["drift_share"] == 0.5 and iris["threshold"] == 0.5
    assert iris["rows"] == 400 and [f["feature"] for f in iris["features"]] == ["x", "y"]
    assert iris["features"][0]["histogram"]["current"] == [0.5, 0.5]
    assert fraud["error"] == "payload log unreadable" and fraud["features"] == []


def test_alerts_from_the_alert_manager_snapshot():
    snapshot = {
        "active": [
            {
                "rule": "p99",
                "labels": {"model": "iris"},
                "state": "firing",
                "since": 50.0,
                "value": 0.8,
                "threshold": 0.5,
                "op": ">",
                "metric": "latency_p99",
                "severity": "warning",
            },
        ],
        "recent": [
            {"status": "firing", "rule": "p99", "labels": {"model": "iris"}, "summary": "slow", "ends_at": None},
            {"status": "resolved", "rule": "errors", "labels": {}, "summary": "errors back to normal", "ends_at": 40.0},
            {"status": "resolved", "rule": "p99", "labels": {"model": "iris"}, "summary": "old", "ends_at": 30.0},
        ],
    }
    rows = alerts_panel(snapshot)
    assert [(r["rule"], r["state"]) for r in rows] == [("p99", "firing"), ("errors", "resolved")]
    assert rows[0]["message"] == "latency_p99 > 0.5 (model=iris)"
    assert rows[1]["message"] == "errors back to normal" and rows[1]["since"] == 40.0


def official(text: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def flattened(snapshot) -> dict[tuple, float]:
    return {
        (name, tuple(sorted(labels.items()))): value
        for name, series in snapshot.series.items()
        for labels, value in series.values()
    }


def test_caching_parser_agrees_with_prometheus_client_across_scrapes():
    from mlscale.monitoring.dashboard.promtext import TextParser

    registry = CollectorRegistry()
    counter = Counter("mlscale_requests", "r", ["model", "version", "outcome"], registry=registry)
    histogram = Histogram("mlscale_batch_size", "b", ["model", "version"], buckets=(1, 4), registry=registry)
    odd = 'we "quote" \\ and } spaces'
    parser = TextParser()
    for step in range(3):
        counter.labels(odd, "1", "success").inc(step + 1)
        counter.labels("m", str(step), "error").inc()  # a new series on each scrape
        histogram.labels(odd, "1").observe(step * 2)
        text = generate_latest(registry).decode() + 'mlscale_inflight_requests{model="m"} 3 1700000000000\n'
        snapshot = parser.parse(text, float(step))
        assert flattened(snapshot) == official(text)
    assert (
        flattened(snapshot)[("mlscale_requests_total", (("model", odd), ("outcome", "success"), ("version", "1")))] == 6
    )


def test_caching_parser_rejects_a_bad_value_for_a_known_series():
    from mlscale.monitoring.dashboard.promtext import TextParser

    parser = TextParser()
    parser.parse('mlscale_inflight_requests{model="m"} 3\n', 1.0)
    with pytest.raises(ValueError, match="invalid sample value"):
        parser.parse('mlscale_inflight_requests{model="m"} three\n', 2.0)


def test_cameras_panel_reads_the_vision_status_shape():
    from mlscale.monitoring.dashboard.panels import cameras_panel

    status = {
        "running": True,
        "cameras": [
            {
                "camera": "dock",
                "fps_in": 25.0,
                "fps_processed": 12.5,
                "events": {"intrusion": 2},
                "recent_events": [
                    {"time": 10.0, "kind": "intrusion", "score": 0.9, "snapshot": "snapshots/dock-1.jpg"},
                    {"time": 20.0, "kind": "intrusion", "score": 0.8, "snapshot": None},
                ],
            }
        ],
    }
    (served,) = cameras_panel(status, snapshots=True)
    assert served["input_fps"] == 25.0 and served["processed_fps"] == 12.5
    assert served["event_counts"] == {"intrusion": 2}
    assert [e["time"] for e in served["events"]] == [20.0, 10.0]  # newest first
    assert served["events"][1]["snapshot_url"] == "snapshots/dock-1.jpg"
    assert served["events"][1]["label"] == "intrusion"
    (unserved,) = cameras_panel(status, snapshots=False)
    assert unserved["events"][1]["snapshot_url"] is None  # no broken image when nothing serves it
