"""Triton's model configuration and statistics extensions, as plain dicts both transports send.

Triton tooling (tritonclient's get_model_config / get_inference_statistics, perf_analyzer, model
analyzers) reads these. REST sends the dicts as JSON; gRPC parses the same dicts into its messages,
so the two can never disagree.

Statistics come from the Prometheus metrics, which mlscale already sums over worker processes: any
worker answers for all of them. What mlscale does not measure stays zero rather than being made up:
the per-phase compute times (compute_input / compute_infer / compute_output), cache hit and miss
durations, the time of the last inference and per-batch-size statistics.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from mlscale.serving.datatypes import V2_TO_NUMPY
from mlscale.serving.repository import ModelRepository, ModelVersion

_STAT_FIELDS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


def triton_datatype(datatype: str) -> str:
    """Triton's config enum name of a v2 datatype (BYTES is TYPE_STRING in Triton's configs)."""
    if datatype == "BYTES":
        return "TYPE_STRING"
    return f"TYPE_{datatype}" if datatype in V2_TO_NUMPY else "TYPE_INVALID"


def model_config(model: ModelVersion) -> dict[str, Any]:
    """Triton's ModelConfig of a loaded version. With batching on (max_batch_size > 1) and every
    tensor's first dimension variable, the batch dimension is implicit, as in Triton: max_batch_size
    is reported and dims leave it out; otherwise max_batch_size is 0 and dims are the full shape."""
    metadata = model.metadata([model.version])
    tensors = [*metadata["inputs"], *metadata["outputs"]]
    batched = model.config.max_batch_size > 1 and all(t["shape"] and t["shape"][0] == -1 for t in tensors)

    def entry(tensor: dict) -> dict:
        dims = tensor["shape"][1:] if batched else tensor["shape"]
        return {"name": tensor["name"], "data_type": triton_datatype(tensor["datatype"]), "dims": list(dims)}

    config: dict[str, Any] = {
        "name": model.model,
        "platform": model.runtime.platform,
        "backend": "mlscale",
        "max_batch_size": model.config.max_batch_size if batched else 0,
        "input": [entry(t) for t in metadata["inputs"]],
        "output": [entry(t) for t in metadata["outputs"]],
    }
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": round(model.config.max_delay * 1e6)}
    return config


def model_statistics(repository: ModelRepository, name: str = "", version: str = "") -> dict[str, Any]:
    """Triton's statistics response: every loaded version of ``name`` (all models when empty), or the
    one ``version`` (resolved like an inference request, so aliases work; unknown names raise)."""
    if name and version:
        chosen = [repository.resolve(name, version)]
    elif name:
        repository.resolve(name)  # unknown or unloaded: the same error as an inference request
        chosen = [repository.models[name].versions[v] for v in repository.versions_of(name)]
    else:
        chosen = [
            repository.models[model].versions[v]
            for model in sorted(repository.models)
            for v in repository.versions_of(model)
        ]
    samples = _metric_samples()
    return {"model_stats": [_version_stats(m.model, m.version, samples) for m in chosen]}


def _duration(count: float, seconds: float = 0.0) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * 1e9)}


def _version_stats(model: str, version: str, samples: dict[tuple[str, str], dict[str, float]]) -> dict[str, Any]:
    values = samples.get((model, version), {})
    stats = {field: _duration(0) for field in _STAT_FIELDS}
    stats["success"] = _duration(values.get("success", 0), values.get("duration_sum", 0.0))
    stats["fail"] = _duration(values.get("fail", 0))
    stats["queue"] = _duration(values.get("queue_count", 0), values.get("queue_sum", 0.0))
    return {
        "name": model,
        "version": version,
        "last_inference": 0,
        "inference_count": int(values.get("rows", 0)),
        "execution_count": int(values.get("batches", 0)),
        "inference_stats": stats,
        "batch_stats": [],
    }


# Prometheus sample name -> the key it is summed into.
_SAMPLE_KEYS = {
    "mlscale_request_duration_seconds_sum": "duration_sum",
    "mlscale_queue_wait_seconds_sum": "queue_sum",
    "mlscale_queue_wait_seconds_count": "queue_count",
    "mlscale_batch_size_sum": "rows",
    "mlscale_batch_size_count": "batches",
}


def _metric_samples() -> dict[tuple[str, str], dict[str, float]]:
    """Per (model, version): the sums of this server's metrics, over all workers when several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        if not family.name.startswith("mlscale_"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                continue
            key = (labels["model"], labels["version"])
            if sample.name == "mlscale_requests_total":
                outcome = "success" if labels.get("outcome") == "success" else "fail"
                out[key][outcome] += sample.value
            elif sample.name in _SAMPLE_KEYS:
                out[key][_SAMPLE_KEYS[sample.name]] += sample.value
    return out
