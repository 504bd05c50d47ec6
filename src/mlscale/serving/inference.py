"""One inference, whatever carried it: the steps REST and gRPC share, in one place.

Both transports hand over a model name and version, a way to decode the request and a way to encode
the answer; this module does what lies between (resolve the model, admit, join features, validate,
deadline, cache or batch, metrics, payload log). Decoding is a callback so that a refused request
costs no decode: admission runs first, as in the REST path's "refuse before reading the body".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mlscale import tracing
from mlscale.cache.codec import pack_arrays, unpack_arrays
from mlscale.cache.keys import prediction_key
from mlscale.errors import DeadlineExceeded, InvalidInput, MlscaleError, ModelNotFound, Overloaded, VersionRetired
from mlscale.serving import metrics
from mlscale.serving.protocol import DecodedRequest
from mlscale.serving.repository import ModelRepository, ModelVersion

T = TypeVar("T")
# encode(model, request, outputs, response parameters or None) -> what the transport sends.
Encode = Callable[[ModelVersion, DecodedRequest, dict, dict | None], T]

_OUTCOMES = {
    Overloaded: "rejected",
    VersionRetired: "rejected",
    DeadlineExceeded: "timeout",
    ModelNotFound: "not_found",
}


class InferenceCore:
    """The transport-neutral inference path over a model repository."""

    def __init__(self, repository: ModelRepository, payload_log: Any = None) -> None:
        self.repository = repository
        # Sampled requests and responses for drift monitoring (mlscale.monitoring.PayloadLog), or None.
        self.payload_log = payload_log

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Callable[[], Awaitable[DecodedRequest]],
        encode: Encode[T],
        timeout: float | None,
        tenant: str | None = None,
    ) -> T:
        """Run one request. ``timeout`` (seconds, None: none) is the default deadline, which a request
        parameter ``timeout`` (microseconds, as tritonclient sends it) overrides. ``tenant`` (from the
        caller's key, None without auth) is whose fair share of the model's queue the request uses.
        Raises the typed errors of mlscale.errors, which each transport maps to its own status codes."""
        started = time.perf_counter()
        model = None
        admitted = None  # the batcher whose room this request holds until it submits
        try:
            # The model first: a request to a model or version that does not exist is "not found"
            # whatever its body, and an unknown name costs no body read or decode.
            model = self.repository.resolve(name, version)
            # Wait for room in the model's queue before the request is decoded, so a refusal costs no
            # body read or decode. A cached answer needs no queue: with a cache, only misses wait.
            if model.cache is None:
                model = await self._admit(name, version, model, timeout, tenant)
                admitted = model.batcher
            request = await decode()
            requested = tuple(o.name for o in request.outputs) if request.outputs else None
            parameter_timeout = request.parameters.get("timeout")
            if parameter_timeout is not None:
                if not isinstance(parameter_timeout, (int, float)) or parameter_timeout < 0:
                    raise InvalidInput("parameter 'timeout' must be a non-negative number of microseconds")
                timeout = parameter_timeout / 1e6
            deadline = time.monotonic() + timeout if timeout else None
            decoded = request.inputs  # before features are joined: a re-routed request joins anew
            for attempt in range(_ROUTES):
                try:
                    request.inputs = await _joined(model, decoded)
                    model.validate(request.inputs, requested)
                    model.meters.inflight.inc()
                    try:
                        if model.cache is None:
                            holds_room, admitted = admitted is not None, None  # submit takes the room over
                            outputs = await model.batcher.submit(
                                request.inputs, deadline, requested, admitted=holds_room, tenant=tenant
                            )
                            parameters = None
                        else:
                            outputs, parameters = await _cached_predict(
                                model, request.inputs, deadline, requested, tenant
                            )
                    finally:
                        model.meters.inflight.dec()
                    break
                except VersionRetired:
                    # Routed to a version that closed while this request was on its way (an alias
                    # moved, a version was replaced): the new routing takes it, once decoded.
                    if attempt == _ROUTES - 1:
                        raise
                    model = self._route_again(name, version, model)
            if requested:
                outputs = {n: outputs[n] for n in requested if n in outputs}
            answer = encode(model, request, outputs, parameters)
        except MlscaleError as exc:
            outcome = _OUTCOMES.get(type(exc), "error")
            if model is not None:
                model.meters.outcome(outcome).inc()
            else:  # a name not in the repository is the client's text: one series, or any client could
                # add series to /metrics for ever (one per made-up name)
                label = name if name in self.repository.models else UNKNOWN_MODEL
                metrics.REQUESTS.labels(label, "", outcome).inc()
            raise
        finally:
            if admitted is not None:  # let in, but its body was bad, too large or too slow
                admitted.release(tenant)
        model.meters.success.inc()
        model.meters.duration.observe(time.perf_counter() - started)
        if self.payload_log is not None:  # never blocks: a full buffer drops and counts
            self.payload_log.record(model.model, model.version, request.inputs, outputs)
        return answer

    async def _admit(
        self, name: str, version: str | None, model: ModelVersion, timeout: float | None, tenant: str | None
    ) -> ModelVersion:
        """Wait for room in the queue of the version the request is routed to; the version it was
        let into (another one when the first closed on its way)."""
        for attempt in range(_ROUTES):
            try:
                await model.batcher.admit(time.monotonic() + timeout if timeout else None, tenant)
                return model
            except VersionRetired:
                if attempt == _ROUTES - 1:
                    raise
                model = self._route_again(name, version, model)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _route_again(self, name: str, version: str | None, retired: ModelVersion) -> ModelVersion:
        """The version the request is routed to now that ``retired`` is closing; the typed errors of
        resolve (the model or version is gone) when nothing takes its place."""
        model = self.repository.resolve(name, version)
        if model is retired:  # still routed to while it closes: no other version to take the request
            raise VersionRetired()
        return model


# Routing attempts of one request: versions closing one after another within one request's flight
# are rare; this bounds the loop when they are not.
_ROUTES = 3

# The model label of requests naming a model the repository does not have.
UNKNOWN_MODEL = "(unknown)"


async def _cached_predict(
    model: ModelVersion,
    inputs: dict,
    deadline: float | None,
    requested: tuple[str, ...] | None,
    tenant: str | None = None,
) -> tuple[dict, dict]:
    """Through the model's prediction cache; the response parameter ``cache`` says where the answer
    came from: l1, l2, shared (waited on an identical request) or miss."""
    key = prediction_key(model.model, model.version, inputs, requested)

    async def compute() -> bytes:
        return pack_arrays(await model.batcher.submit(inputs, deadline, requested, tenant=tenant))

    if tracing.enabled:
        packed, source = await _traced_lookup(model, key, compute)
    else:
        packed, source = await model.cache.get_or_compute(key, compute)
    return unpack_arrays(packed), {"cache": "miss" if source == "computed" else source}


async def _joined(model: ModelVersion, inputs: dict) -> dict:
    """The inputs with the model's online features joined in (the inputs as they are without [features])."""
    if model.enricher is None:
        return inputs
    if tracing.enabled:
        return await _traced_join(model, inputs)
    return await model.enricher.join(inputs)


# The traced twins of two steps: apart, so that tracing off costs an L1 hit one flag check, not a no-op span.
async def _traced_join(model: ModelVersion, inputs: dict) -> dict:
    with tracing.span("feature lookup", {"mlscale.model": model.model}):
        return await model.enricher.join(inputs)


async def _traced_lookup(model: ModelVersion, key: bytes, compute: Callable[[], Awaitable[bytes]]) -> tuple[bytes, str]:
    with tracing.span("cache lookup", {"mlscale.model": model.model}) as span:
        packed, source = await model.cache.get_or_compute(key, compute)
        span.set_attribute("mlscale.cache.source", source)
        span.set_attribute("mlscale.cache.hit", source != "computed")
        return packed, source
