"""The monitoring part's Prometheus metrics, defined once so every module and worker shares them.

The server's workers set PROMETHEUS_MULTIPROC_DIR before importing this, so counters are summed
across processes; gauges use "liveall"/"max" modes where a sum would be meaningless.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PAYLOAD_RECORDS = Counter(
    "mlscale_payload_records",
    "Batch items offered to the payload log, by model and outcome (logged, dropped, sampled_out).",
    ["model", "outcome"],
)
DRIFT_SCORE = Gauge(
    "mlscale_drift_score",
    "Latest drift test value per monitor, feature and test.",
    ["monitor", "feature", "test"],
    multiprocess_mode="max",
)
DRIFT_DETECTED = Gauge(
    "mlscale_drift_detected",
    "1 when the feature drifted in the monitor's latest run.",
    ["monitor", "feature"],
    multiprocess_mode="max",
)
DATASET_DRIFT_SHARE = Gauge(
    "mlscale_dataset_drift_share",
    "Share of drifted features in the monitor's latest run.",
    ["monitor"],
    multiprocess_mode="max",
)
ALERTS_FIRING = Gauge(
    "mlscale_alerts_firing",
    "1 while the alert rule fires.",
    ["rule"],
    multiprocess_mode="max",
)
ALERT_NOTIFICATIONS = Counter(
    "mlscale_alert_notifications",
    "Notifications sent per channel and outcome (sent, failed).",
    ["channel", "outcome"],
)
