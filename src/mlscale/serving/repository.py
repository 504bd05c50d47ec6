"""The model repository: versions, aliases, traffic split, load and unload at run time.

Layout: ``ROOT/<model>/<version>/`` holds a model file (model.onnx, model.joblib, model.pt or
model.py) and an optional model.toml; ``ROOT/<model>/model.toml`` holds what spans versions
(aliases, traffic split, defaults). Models may also come from an MLflow model registry
(serving/mlflow_registry.py); their model.toml, when any, still lives in ``ROOT/<model>/``.
Each source is rescanned on a timer: a new version is loaded before it becomes visible, the
aliases and traffic switch at once, and a removed version is unloaded after its queued requests
finish, so requests in flight never fail because of a change on disk or in the registry.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlscale.cache.factory import Caches
from mlscale.cache.tiered import PredictionCache
from mlscale.errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady
from mlscale.serving import metrics
from mlscale.serving.admission import QueueDelayAdmission
from mlscale.serving.batching import DEFAULT_MAX_WAITING, AdaptiveBatcher
from mlscale.serving.datatypes import V2_TO_NUMPY, v2_datatype
from mlscale.serving.features import FeatureJoin, OnlineStore
from mlscale.serving.model_config import CONFIG_FILE, ModelConfig, model_config
from mlscale.serving.runtimes import Runtime, load_runtime
from mlscale.serving.sources import FolderSource, ModelSource

if TYPE_CHECKING:
    from mlscale.serving.mlflow_registry import RegistrySource

log = logging.getLogger("mlscale.serving")

READY, UNAVAILABLE, UNLOADED = "READY", "UNAVAILABLE", "UNLOADED"
# A model that runs faster than this on one row runs inline on the event loop under "auto".
INLINE_THRESHOLD_SECONDS = 0.0005


def _version_key(version: str) -> tuple:
    """Numeric versions order numerically, others after them by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass
class ModelVersion:
    """One loaded version: its runtime, its batcher and what metadata reports."""

    model: str
    version: str
    path: Path
    config: ModelConfig
    runtime: Runtime
    batcher: AdaptiveBatcher
    fingerprint: tuple
    load_seconds: float
    meters: metrics.ModelMeters
    # The model's prediction cache (shared by its versions; keys include the version), or None.
    cache: PredictionCache | None = None
    # Joins online features into the input when the model declares [features], else None.
    enricher: FeatureJoin | None = None

    def metadata(self, versions: list[str]) -> dict:
        inputs = [s.describe() for s in self.runtime.inputs]
        if self.enricher is not None:  # clients send entity ids; the server fills the features
            inputs = [s for s in inputs if s["name"] != self.enricher.input]
            inputs.insert(0, {"name": self.enricher.entity_key, "datatype": "INT64|BYTES", "shape": [-1]})
        return {
            "name": self.model,
            "versions": versions,
            "platform": self.runtime.platform,
            "inputs": inputs,
            "outputs": [s.describe() for s in self.runtime.outputs],
        }

    def validate(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None) -> None:
        """Reject inputs that do not fit the model before they can join (and fail) a batch."""
        declared = {s.name: s for s in self.runtime.inputs}
        missing = [n for n in declared if n not in inputs]
        if missing:
            raise InvalidInput(f"model {self.model!r} expects input(s) {missing} which the request lacks")
        for name, array in inputs.items():
            spec = declared.get(name)
            if spec is None:
                raise InvalidInput(f"model {self.model!r} has no input {name!r} (inputs: {sorted(declared)})")
            datatype = v2_datatype(array.dtype) if array.dtype.kind != "b" else "BOOL"
            if datatype != spec.datatype:
                raise InvalidInput(
                    f"input {name!r} has datatype {datatype} but model {self.model!r} expects {spec.datatype}"
                )
            if spec.shape and (
                len(spec.shape) != array.ndim
                or any(d not in (-1, a) for d, a in zip(spec.shape, array.shape, strict=True))
            ):
                raise InvalidInput(
                    f"input {name!r} has shape {list(array.shape)} but model {self.model!r} expects {list(spec.shape)}"
                )
        if outputs:
            known = {s.name for s in self.runtime.outputs}
            unknown = [o for o in outputs if o not in known]
            if unknown:
                raise InvalidInput(f"model {self.model!r} has no output(s) {unknown} (outputs: {sorted(known)})")


@dataclass
class ModelEntry:
    """A model name with its loaded versions, aliases and traffic split."""

    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # Fingerprint of each failed version's folder: unchanged files are not retried on every scan.
    failed_fingerprints: dict[str, tuple] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    latest: str | None = None

    def refresh(self, config: ModelConfig, aliases: dict[str, str] | None = None, default: str | None = None) -> None:
        """Recompute the latest version, aliases and traffic weights after a change. ``aliases``
        (a registry's) win over model.toml's; ``default`` serves unversioned calls when model.toml
        sets no traffic split."""
        self.refresh_latest()
        self.aliases = {**config.aliases, **(aliases or {})}
        traffic = config.traffic or ({default: 1.0} if default else {})
        self.targets = list(traffic)
        self.cumulative = list(accumulate(traffic.values()))

    def refresh_latest(self) -> None:
        ordered = sorted(self.versions, key=_version_key)
        self.latest = ordered[-1] if ordered else None

    def resolve(self, version: str | None) -> ModelVersion:
        if version is None or version == "":
            if self.targets:
                pick = random.random() * self.cumulative[-1]
                version = self.targets[bisect.bisect_right(self.cumulative, pick)]
            elif self.latest is None:
                raise ModelNotReady(f"model {self.name!r} has no ready version")
            else:
                return self.versions[self.latest]
        version = self.aliases.get(version, version)
        found = self.versions.get(version)
        if found is None:
            if version in self.failed:
                raise ModelNotReady(f"model {self.name!r} version {version!r} failed to load: {self.failed[version]}")
            raise ModelNotFound(f"model {self.name!r} has no version or alias {version!r}")
        return found


class ModelRepository:
    """Every model under ``root``, kept in step with the folder and with load/unload calls."""

    def __init__(
        self,
        root: Path,
        *,
        max_queue_size: int = 1024,
        max_waiting: int = DEFAULT_MAX_WAITING,
        queue_delay: tuple[float, float] = (0.05, 1.0),
        caches: Caches | None = None,
        features: Callable[[], OnlineStore] | None = None,
        registry: RegistrySource | None = None,
    ) -> None:
        self.root = Path(root)
        # The folder always (model.toml of registry models lives there too); the registry's models,
        # when configured, take precedence over folders of the same name.
        self.folder = FolderSource(self.root)
        self.registry = registry
        self.sources: list[ModelSource] = [self.folder, *([registry] if registry is not None else [])]
        # The last listing error of each model, so a registry that stays down is logged once.
        self._listing_errors: dict[str, str] = {}
        self.caches = caches
        # Opens the online feature store on first need (models declaring [features]).
        self.features = features
        self.max_queue_size = max_queue_size
        self.max_waiting = max_waiting
        # Default (target, max wait) of queue-delay admission; model.toml may override either.
        self.queue_delay = queue_delay
        self.models: dict[str, ModelEntry] = {}
        # Models unloaded through the API stay unloaded until loaded through the API.
        self.unloaded: set[str] = set()
        self._lock = asyncio.Lock()
        if registry is None and not self.root.is_dir():
            raise ConfigError(f"{self.root}: the model repository folder does not exist")

    # --- reading -------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            if name in self.unloaded:
                raise ModelNotReady(f"model {name!r} is unloaded")
            raise ModelNotFound(f"unknown model {name!r}")
        return entry.resolve(version)

    def versions_of(self, name: str) -> list[str]:
        return sorted(self.models[name].versions, key=_version_key)

    def index(self) -> list[dict]:
        rows: list[dict] = []
        for name in sorted(self._owners()):
            entry = self.models.get(name)
            if entry is None:
                state = UNLOADED if name in self.unloaded else UNAVAILABLE
                rows.append({"name": name, "state": state, "reason": "unloaded" if state == UNLOADED else ""})
                continue
            for version in sorted({*entry.versions, *entry.failed}, key=_version_key):
                if version in entry.versions:
                    rows.append({"name": name, "version": version, "state": READY, "reason": ""})
                else:
                    rows.append(
                        {"name": name, "version": version, "state": UNAVAILABLE, "reason": entry.failed[version]}
                    )
        return rows

    def all_ready(self) -> bool:
        return all(entry.versions for entry in self.models.values())

    # --- changing ------------------------------------------------------------------------------
    def _owners(self) -> dict[str, ModelSource]:
        """Every model name with the source it comes from (the registry wins over a folder)."""
        owners: dict[str, ModelSource] = {}
        for source in self.sources:
            owners.update(dict.fromkeys(source.names(), source))
        return owners

    async def sync(self, only: ModelSource | None = None, *, strict: bool = False) -> None:
        """Bring loaded models in line with their sources (or with ``only``): load new or changed
        versions, drop gone ones. A source that cannot be read leaves its models as they are
        (logged), unless ``strict`` (at startup), when the error is raised."""
        async with self._lock:
            owners = self._owners()
            for name, source in sorted(owners.items()):
                if name not in self.unloaded and (only is None or source is only):
                    await self._sync_model(name, source, strict=strict)
            for name in [n for n in self.models if n not in owners]:
                await self._drop_model(name)

    async def load(self, name: str) -> None:
        """Load (or reload) a model through the API; it stays loaded across rescans."""
        async with self._lock:
            source = self._owners().get(name)
            if source is None:
                raise ModelNotFound(f"no model {name!r} in the repository folder or the registry")
            self.unloaded.discard(name)
            await self._sync_model(name, source, strict=True)
            entry = self.models.get(name)
            if entry is not None and not entry.versions:
                reasons = "; ".join(f"{v}: {r}" for v, r in entry.failed.items()) or "no version folders"
                raise ModelNotReady(f"model {name!r} could not be loaded: {reasons}")

    async def unload(self, name: str) -> None:
        """Unload a model through the API; queued requests finish first."""
        async with self._lock:
            if name not in self.models and name not in self._owners():
                raise ModelNotFound(f"unknown model {name!r}")
            self.unloaded.add(name)
            await self._drop_model(name)

    async def close(self) -> None:
        async with self._lock:
            for name in list(self.models):
                await self._drop_model(name)

    async def _sync_model(self, name: str, source: ModelSource, *, strict: bool = False) -> None:
        try:
            listing = await source.listing(name)
        except Exception as exc:
            if strict:
                raise
            # Once per outage: the same outage is told in several words as it goes on (a request
            # cut off mid-way, then connections refused), and a poll every few seconds would log
            # each change.
            if name not in self._listing_errors:
                log.error("model %s: cannot list its versions, serving what is loaded: %s", name, exc)
            self._listing_errors[name] = str(exc)
            return
        if self._listing_errors.pop(name, None) is not None:
            log.info("model %s: its source answers again", name)
        entry = self.models.get(name) or ModelEntry(name)
        present = listing.versions
        # Versions replaced or gone are closed only once nothing routes to them any more.
        retired: list[ModelVersion] = []
        attempted: set[str] = set()
        for version, (path, fingerprint) in sorted(present.items(), key=lambda kv: _version_key(kv[0])):
            current = entry.versions.get(version)
            if current is not None and current.fingerprint == fingerprint:
                continue
            if current is None and entry.failed_fingerprints.get(version) == fingerprint:
                continue
            attempted.add(version)
            try:
                loaded = await self._load_version(name, version, path, fingerprint)
            except Exception as exc:
                reason = str(exc)
                log.error("model %s version %s failed to load: %s", name, version, reason)
                entry.failed[version] = reason
                entry.failed_fingerprints[version] = fingerprint
                continue
            entry.failed.pop(version, None)
            entry.failed_fingerprints.pop(version, None)
            entry.versions[version] = loaded
            if current is not None:
                retired.append(current)
        # A source's alias never moves to a version that failed to load: it keeps its loaded
        # version (and that version stays) until the source names one that loads.
        held = {
            alias: entry.aliases[alias]
            for alias, version in listing.aliases.items()
            if version not in entry.versions and entry.aliases.get(alias) in entry.versions
        }
        for alias, version in held.items():
            if listing.aliases[alias] in attempted:  # once, not on every poll
                log.error("model %s: alias %s stays on version %s until a version that loads", name, alias, version)
        # From here to refresh() nothing awaits: requests see the old routing or the new one whole.
        keep = {*present, *held.values()}
        retired.extend(entry.versions.pop(v) for v in [v for v in entry.versions if v not in keep])
        for version in [v for v in entry.failed if v not in present]:
            entry.failed.pop(version)
            entry.failed_fingerprints.pop(version, None)
        try:
            entry.refresh(model_config(self.root / name), {**listing.aliases, **held}, listing.default)
        except ConfigError as exc:  # a broken model.toml keeps the routing it had
            log.error("%s", exc)
            entry.refresh_latest()
        self.models[name] = entry
        for gone in retired:
            await gone.batcher.close()
            gone.runtime.unload()

    async def _load_version(self, name: str, version: str, path: Path, fingerprint: tuple) -> ModelVersion:
        started = time.perf_counter()
        config = model_config(self.root / name, path)
        runtime = await asyncio.to_thread(load_runtime, path, config)
        inline = config.execution == "inline"
        if config.execution == "auto":
            inline = await asyncio.to_thread(_runs_fast, runtime)
        meters = metrics.ModelMeters(name, version)
        batcher = AdaptiveBatcher(
            runtime.predict,
            max_batch_size=config.max_batch_size,
            max_delay=config.max_delay,
            max_queue_size=config.max_queue_size or self.max_queue_size,
            max_waiting=config.max_waiting or self.max_waiting,
            inline=inline,
            on_batch=meters.on_batch,
            admission=QueueDelayAdmission(
                config.queue_delay_target or self.queue_delay[0],
                config.max_queue_wait or self.queue_delay[1],
            ),
            on_shed=meters.on_shed,
            trace_attributes={"mlscale.model": name, "mlscale.model.version": version},
        )
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD.labels(name, version).observe(seconds)
        log.info(
            "loaded model %s version %s (%s, %.3fs, %s)",
            name,
            version,
            runtime.platform,
            seconds,
            "inline" if inline else "thread",
        )
        cache = self.caches.for_model(name, config.cache) if self.caches is not None else None
        enricher = None
        if config.features is not None:
            if self.features is None:
                raise ConfigError(f"{path}: the model declares [features] but the server has no feature store")
            enricher = FeatureJoin(config.features, runtime, await asyncio.to_thread(self.features))
        return ModelVersion(
            name, version, path, config, runtime, batcher, fingerprint, seconds, meters, cache, enricher
        )

    async def _drop_model(self, name: str) -> None:
        entry = self.models.pop(name, None)
        if entry is None:
            return
        for loaded in entry.versions.values():
            await loaded.batcher.close()
            loaded.runtime.unload()


def _runs_fast(runtime: Runtime) -> bool:
    """Time one row through the model: fast models run inline, slow ones on a thread."""
    sample = {}
    for spec in runtime.inputs:
        if spec.datatype == "BYTES":
            return False
        shape = tuple(1 if d < 0 else d for d in spec.shape) or (1,)
        sample[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
    try:
        runtime.predict(sample)
        started = time.perf_counter()
        for _ in range(3):
            runtime.predict(sample)
    except Exception:
        return False
    return (time.perf_counter() - started) / 3 < INLINE_THRESHOLD_SECONDS


__all__ = ["CONFIG_FILE", "ModelRepository", "ModelVersion"]
