"""mlscale.monitoring: payload log, drift detection, monitors, alerts.

Public face (imported lazily, so ``mlscale.config`` can import the settings without NumPy/Arrow):
``PayloadLog``, ``PayloadReader``, ``DriftDetector``, ``ReferenceProfile``, ``MonitorService``,
``AlertManager``, ``AlertRule``, ``load_latest``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PayloadLog": "mlscale.monitoring.payload_log",
    "PayloadReader": "mlscale.monitoring.payload_reader",
    "DriftDetector": "mlscale.monitoring.drift",
    "ReferenceProfile": "mlscale.monitoring.drift",
    "MonitorService": "mlscale.monitoring.monitors",
    "load_latest": "mlscale.monitoring.monitors",
    "AlertManager": "mlscale.monitoring.alerts",
    "AlertRule": "mlscale.monitoring.alerts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
