"""Alerts: rules over metrics and drift results, states pending/firing/resolved, and channels."""

from mlscale.monitoring.alerts.channels import (
    Channel,
    FileChannel,
    LogChannel,
    WebhookChannel,
    channel_from_settings,
)
from mlscale.monitoring.alerts.manager import AlertManager
from mlscale.monitoring.alerts.rules import Alert, AlertRule, Sample, rule_from_settings

__all__ = [
    "Alert",
    "AlertManager",
    "AlertRule",
    "Channel",
    "FileChannel",
    "LogChannel",
    "Sample",
    "WebhookChannel",
    "channel_from_settings",
    "rule_from_settings",
]
