"""Online features joined into a model's input, so a client sends only entity ids.

The model declares ``[features]`` in its model.toml (feature service, entity key, defaults); the
request's entity-id tensor is replaced by the float matrix of the entities' current feature values,
read in one batched call through the feature cache, before validation and batching.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.serving.datatypes import V2_TO_NUMPY

if TYPE_CHECKING:
    from mlscale.features.online import OnlineStore
    from mlscale.serving.model_config import FeaturesConfig
    from mlscale.serving.runtimes import Runtime
else:
    OnlineStore = object


class FeatureJoin:
    """Replaces ``entity_key`` in a request's inputs with the model input built from features."""

    def __init__(self, config: FeaturesConfig, runtime: Runtime, store: OnlineStore) -> None:
        from mlscale.features.serving import FeatureEnricher

        self.entity_key = config.entity_key
        target = config.input or (runtime.inputs[0].name if runtime.inputs else "")
        spec = next((s for s in runtime.inputs if s.name == target), None)
        if spec is None:
            raise ConfigError(f"[features] input {target!r} is not an input of the model")
        self.input = target
        self.dtype = V2_TO_NUMPY[spec.datatype]
        try:
            self.enricher = FeatureEnricher(store, config.service, config.entity_key, config.defaults)
        except Exception as exc:  # unknown service, wrong key: the model cannot load
            raise ConfigError(f"[features]: {exc}") from None
        width = spec.shape[-1] if spec.shape else -1
        if width not in (-1, len(self.enricher.names)):
            raise ConfigError(
                f"[features] gives {len(self.enricher.names)} features but input {target!r} takes {width}"
            )

    async def join(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = inputs.get(self.entity_key)
        if ids is None:
            raise InvalidInput(f"the request needs input {self.entity_key!r} (entity ids) for its online features")
        if ids.dtype == object:
            ids = np.array([v.decode() if isinstance(v, bytes) else v for v in ids.ravel()], dtype=object)
        values = await self.enricher.acall(ids.ravel() if ids.ndim == 2 and ids.shape[1] == 1 else ids)
        joined = {k: v for k, v in inputs.items() if k != self.entity_key}
        joined[self.input] = values.astype(self.dtype, copy=False)
        return joined
