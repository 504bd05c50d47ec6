"""Settings of the prediction and feature caches (``[cache]`` in mlscale.toml); imports nothing heavy."""

from __future__ import annotations

import msgspec


class ModelCacheSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model's overrides (``[cache.models.<name>]``, or a model.toml's ``[cache]``); unset inherits."""

    enabled: bool | None = None
    ttl: float | None = None
    l1_max_bytes: int | None = None


class ResolvedCache(msgspec.Struct, kw_only=True, frozen=True):
    """The effective cache settings of one model."""

    enabled: bool
    ttl: float
    l1_max_bytes: int
    l2: str | None


class CacheSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Prediction cache (opt-in per model) and feature cache.

    ``l2`` is a store URL shared by workers and replicas (``redis://host:6379/0``, or
    ``sqlite:///.mlscale/cache.db`` for the workers of one host); None keeps the cache in-process.
    """

    # Default for models without their own entry in ``models``: caching is opt-in.
    enabled: bool = False
    ttl: float = 300.0
    l1_max_bytes: int = 64 * 1024 * 1024
    l2: str | None = None
    # Seconds an L2 call may take before the request goes on without it.
    l2_timeout: float = 0.25
    # Seconds a failed L2 is left alone before it is tried again.
    l2_retry_after: float = 5.0
    models: dict[str, ModelCacheSettings] = msgspec.field(default_factory=dict)
    # The feature cache in front of the online store: short-lived, so fresh features arrive fast.
    feature_ttl: float = 5.0
    feature_l1_max_bytes: int = 16 * 1024 * 1024

    def for_model(self, name: str, override: ModelCacheSettings | None = None) -> ResolvedCache:
        """Settings of model ``name``: its model.toml ``override``, then ``models[name]``, then defaults."""
        layers = [o for o in (override, self.models.get(name)) if o is not None]

        def pick(field: str, default: object) -> object:
            for layer in layers:
                value = getattr(layer, field)
                if value is not None:
                    return value
            return default

        return ResolvedCache(
            enabled=pick("enabled", self.enabled),
            ttl=pick("ttl", self.ttl),
            l1_max_bytes=pick("l1_max_bytes", self.l1_max_bytes),
            l2=self.l2,
        )
