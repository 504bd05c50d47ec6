"""Alert rules go pending, fire once after their 'for' time, resolve once, and reach real channels."""

from __future__ import annotations

import json

import pytest

from mlscale.errors import ConfigError
from mlscale.monitoring.alerts import (
    AlertManager,
    AlertRule,
    FileChannel,
    Sample,
    WebhookChannel,
    rule_from_settings,
)
from mlscale.monitoring.metrics import ALERTS_FIRING


def _share(value: float, monitor: str = "iris") -> list[Sample]:
    return [Sample("dataset_drift_share", {"monitor": monitor}, value)]


def test_rule_goes_pending_then_fires_once_then_resolves_once(webhook_receiver):
    rule = AlertRule("drift", "dataset_drift_share", ">=", 0.5, for_seconds=60)
    manager = AlertManager([rule], [WebhookChannel(webhook_receiver.url, backoff=0.01)])
    assert manager.evaluate(_share(0.6), now=0) == []
    assert manager.active()[0]["state"] == "pending"
    assert manager.evaluate(_share(0.7), now=30) == []
    fired = manager.evaluate(_share(0.7), now=61)
    assert [n["status"] for n in fired] == ["firing"]
    assert ALERTS_FIRING.labels("drift")._value.get() == 1
    assert manager.evaluate(_share(0.9), now=120) == []  # deduplicated while firing
    resolved = manager.evaluate(_share(0.1), now=180)
    assert [n["status"] for n in resolved] == ["resolved"] and resolved[0]["ends_at"] == 180
    bodies = webhook_receiver.wait_for(2)
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert bodies[0]["labels"] == {"monitor": "iris"} and bodies[0]["value"] == 0.7
    assert manager.active() == [] and ALERTS_FIRING.labels("drift")._value.get() == 0


def test_pending_alert_that_clears_before_its_for_time_never_notifies(tmp_path):
    channel = FileChannel(tmp_path / "alerts.jsonl")
    manager = AlertManager([AlertRule("drift", "dataset_drift_share", ">", 0.5, for_seconds=10)], [channel])
    manager.evaluate(_share(0.9), now=0)
    manager.evaluate(_share(0.2), now=5)
    manager.evaluate(_share(0.9), now=6)
    assert manager.evaluate(_share(0.9), now=15) == []  # pending restarted at 6
    assert not (tmp_path / "alerts.jsonl").exists()
    manager.evaluate(_share(0.9), now=16)
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["firing"]


def test_each_matching_series_is_its_own_alert_and_a_vanished_series_resolves():
    rule = AlertRule("feature", "drift_detected", "==", 1, match={"monitor": "iris"})
    manager = AlertManager([rule])
    samples = [Sample("drift_detected", {"monitor": "iris", "feature": f}, v) for f, v in [("a", 1), ("b", 1)]]
    samples.append(Sample("drift_detected", {"monitor": "other", "feature": "a"}, 1))
    fired = manager.evaluate(samples, now=0)
    assert sorted(n["labels"]["feature"] for n in fired) == ["a", "b"]
    resolved = manager.evaluate(samples[:1], now=1)
    assert [(n["status"], n["labels"]["feature"]) for n in resolved] == [("resolved", "b")]


def test_webhook_retries_server_errors_with_backoff(webhook_receiver):
    webhook_receiver.fail_first = 2
    channel = WebhookChannel(webhook_receiver.url, retries=3, backoff=0.01)
    channel.send({"status": "event", "n": 1})
    assert webhook_receiver.attempts == 3 and webhook_receiver.bodies == [{"status": "event", "n": 1}]


def test_webhook_gives_up_after_retries_and_other_channels_still_get_it(webhook_receiver, tmp_path):
    webhook_receiver.fail_first = 100
    hook = WebhookChannel(webhook_receiver.url, retries=2, backoff=0.01)
    with pytest.raises(RuntimeError, match="failed after 3 attempts"):
        hook.send({"x": 1})
    manager = AlertManager([], [hook, FileChannel(tmp_path / "a.jsonl")])
    manager.notify_event("camera_anomaly", "person in zone 3", labels={"camera": "gate"}, data={"score": 0.97})
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["status"] == "event" and line["labels"] == {"camera": "gate"} and line["data"]["score"] == 0.97
    assert manager.recent()[-1]["rule"] == "camera_anomaly"


def test_webhook_does_not_retry_a_rejected_payload(webhook_receiver):
    webhook_receiver.fail_first, webhook_receiver.fail_status = 100, 400
    with pytest.raises(RuntimeError):
        WebhookChannel(webhook_receiver.url, retries=3, backoff=0.01).send({"x": 1})
    assert webhook_receiver.attempts == 1


def test_background_sending_delivers_in_order(webhook_receiver):
    manager = AlertManager([], [WebhookChannel(webhook_receiver.url)], background=True)
    for i in range(5):
        manager.notify_event("e", f"event {i}")
    manager.close()
    assert [b["summary"] for b in webhook_receiver.wait_for(5)] == [f"event {i}" for i in range(5)]


def test_bad_rules_are_config_errors():
    with pytest.raises(ConfigError, match="unknown comparison"):
        AlertRule("r", "m", "=>", 1)
    with pytest.raises(ConfigError, match="unknown keys"):
        rule_from_settings({"name": "r", "metric": "m", "treshold": 1})
    with pytest.raises(ConfigError, match="http"):
        WebhookChannel("ftp://x")
