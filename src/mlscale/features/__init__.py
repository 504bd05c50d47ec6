"""Feature store: definitions, registry, offline store (DuckDB point-in-time joins), online store over
any KeyValue, materialization, and the serving glue (``get_online_features``, ``features_request``).

Names load lazily: config.py imports ``mlscale.features.settings`` and must not pay for DuckDB,
PyArrow or pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Entity": "mlscale.features.definitions",
    "Feature": "mlscale.features.definitions",
    "FeatureView": "mlscale.features.definitions",
    "FeatureService": "mlscale.features.definitions",
    "FeatureRepo": "mlscale.features.definitions",
    "load_definitions": "mlscale.features.loader",
    "Registry": "mlscale.features.registry",
    "OfflineStore": "mlscale.features.offline",
    "OnlineStore": "mlscale.features.online",
    "OnlineResult": "mlscale.features.online",
    "get_online_features": "mlscale.features.online",
    "FeatureStore": "mlscale.features.store",
    "features_request": "mlscale.features.serving",
    "FeatureEnricher": "mlscale.features.serving",
    "enrich": "mlscale.features.serving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlscale.features' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
