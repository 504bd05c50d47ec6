"""Prediction and feature caches: L1 in-process, L2 shared (any KeyValue), single-flight.

The server calls ``await cache.get_or_compute(prediction_key(model, version, inputs), compute)``
and gets the answer with where it came from ("l1", "l2", "computed", "shared").
Names are imported on first use, so ``mlscale.config`` can import the settings without NumPy or
prometheus_client.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Caches": "mlscale.cache.factory",
    "CachedKeyValue": "mlscale.cache.features",
    "pack_arrays": "mlscale.cache.codec",
    "unpack_arrays": "mlscale.cache.codec",
    "inputs_digest": "mlscale.cache.keys",
    "model_prefix": "mlscale.cache.keys",
    "prediction_key": "mlscale.cache.keys",
    "LRUCache": "mlscale.cache.l1",
    "SharedTier": "mlscale.cache.l2",
    "CacheSettings": "mlscale.cache.settings",
    "ModelCacheSettings": "mlscale.cache.settings",
    "ResolvedCache": "mlscale.cache.settings",
    "SingleFlight": "mlscale.cache.singleflight",
    "PredictionCache": "mlscale.cache.tiered",
    "TieredCache": "mlscale.cache.tiered",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlscale.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
