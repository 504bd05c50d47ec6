"""The ``[monitoring]`` section of mlscale.toml: payload log, monitors, alert rules and channels.

Kept free of heavy imports: config.py imports this for every command.

    [monitoring]
    interval = 60                      # seconds between monitor runs
    metrics_port = 9108                # `mlscale monitor run` serves /metrics here (0 = off)

    [monitoring.payload_log]
    enabled = true
    directory = "payload-log"
    sample_rate = 1.0                  # every model, unless named in sample_rates
    sample_rates = { iris = 0.1 }
    broker = "nats://nats:4222"        # every replica publishes to the topic inference-log; the
                                       # monitor archives it into `directory` (default: files per process)

    [[monitoring.monitors]]
    name = "iris-inputs"
    model = "iris"
    reference = "data/train.parquet"   # Parquet, CSV, or a profile saved by `mlscale monitor profile`
    window_rows = 1000                 # and/or window_seconds = 3600

    [[monitoring.alerts]]
    name = "iris-drift"
    metric = "dataset_drift_share"     # or drift_score, drift_detected
    op = ">="
    threshold = 0.5
    for_seconds = 300
    match = { monitor = "iris-inputs" }

    [[monitoring.channels]]
    type = "webhook"                   # webhook (url), log, file (path)
    url = "http://127.0.0.1:9000/alerts"
"""

from __future__ import annotations

import msgspec


class PayloadLogSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sampling of requests and responses into Parquet files (see monitoring.payload_log)."""

    enabled: bool = False
    directory: str = "payload-log"
    sample_rate: float = 1.0
    sample_rates: dict[str, float] = msgspec.field(default_factory=dict)
    max_buffer_records: int = 100_000
    roll_bytes: int = 64 * 1024 * 1024
    roll_seconds: float = 60.0
    # A broker URL (redis://..., nats://..., embedded:PATH): publish to ``topic`` instead of writing
    # files; `mlscale monitor run` (or `monitor archive`) writes the topic into ``directory``.
    broker: str = ""
    topic: str = "inference-log"
    partitions: int = 4


class MonitorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One drift monitor: a model's payload window against a reference."""

    name: str
    model: str
    reference: str
    columns: list[str] | None = None  # default: every reference column (outputs are "out_<name>")
    categorical: list[str] = msgspec.field(default_factory=list)
    # column -> num, cat, text or datetime: overrides the kind inferred as Evidently infers it
    kinds: dict[str, str] = msgspec.field(default_factory=dict)
    window_rows: int | None = 1000
    window_seconds: float | None = None
    test: str | None = None
    tests: dict[str, str] = msgspec.field(default_factory=dict)
    threshold: float | None = None
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)
    drift_share: float = 0.5


class AlertRuleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``metric <op> threshold`` held for ``for_seconds`` (see monitoring.alerts.rules)."""

    name: str
    metric: str
    op: str = ">"
    threshold: float = 0.0
    for_seconds: float = 0.0
    match: dict[str, str] = msgspec.field(default_factory=dict)
    severity: str = "warning"
    summary: str = ""


class ChannelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where alert notifications go."""

    type: str
    url: str | None = None
    path: str | None = None
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 5.0


class MonitoringSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the monitoring part reads from the project file."""

    interval: float = 60.0
    metrics_port: int = 9108
    # Latest results, written by `mlscale monitor run` for the dashboard in another process.
    state_file: str = "monitoring/latest.json"
    payload_log: PayloadLogSettings = msgspec.field(default_factory=PayloadLogSettings)
    monitors: list[MonitorSettings] = msgspec.field(default_factory=list)
    alerts: list[AlertRuleSettings] = msgspec.field(default_factory=list)
    channels: list[ChannelSettings] = msgspec.field(default_factory=list)
