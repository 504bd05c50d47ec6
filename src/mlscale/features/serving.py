"""Serving glue: ``POST /v1/features`` semantics and model-input enrichment, free of any web framework.

The server mounts ``features_request`` (JSON body in, JSON-ready dict out; InvalidInput / NotFound
on bad requests) and calls a ``FeatureEnricher`` for models that declare a feature service: the
request then carries only entity ids and the enricher returns the float32 [n, k] model input.
The response has Feast's shape (metadata.feature_names and one result per column, with values,
statuses and event timestamps) so Feast clients and habits carry over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlscale import tracing
from mlscale.errors import InvalidInput
from mlscale.features.online import NULL_VALUE, PRESENT, SMALL_READ, STATUS_NAMES, OnlineResult, OnlineStore

_MAX_ENTITIES = 10_000


def _parse_body(store: OnlineStore, body: Any) -> tuple[Any, dict[str, list], bool]:
    if not isinstance(body, Mapping):
        raise InvalidInput("the request body must be a JSON object")
    unknown = set(body) - {"features", "feature_service", "entities", "full_feature_names"}
    if unknown:
        raise InvalidInput(f"unknown fields in request: {sorted(unknown)}")
    if ("features" in body) == ("feature_service" in body):
        raise InvalidInput('give exactly one of "features" (a list of "view:feature") or "feature_service"')
    if "features" in body:
        features = body["features"]
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise InvalidInput('"features" must be a non-empty list of "view:feature" strings')
        features = tuple(features)
    else:
        features = body["feature_service"]
        if not isinstance(features, str):
            raise InvalidInput('"feature_service" must be a string')
    full = body.get("full_feature_names", False)
    if not isinstance(full, bool):
        raise InvalidInput('"full_feature_names" must be true or false')
    entities = body.get("entities")
    if not isinstance(entities, Mapping) or not entities:
        raise InvalidInput('"entities" must be an object of join key -> list of ids, e.g. {"driver_id": [1]}')
    plan = store.plan(features, full)
    types = store.repo.join_key_types
    columns: dict[str, list] = {}
    for key, ids in entities.items():
        if key not in plan.join_keys:
            raise InvalidInput(f"entity key {key!r} is not used by these features (they need {plan.join_keys})")
        if not isinstance(ids, list):
            raise InvalidInput(f"entities.{key} must be a list of ids")
        if len(ids) > _MAX_ENTITIES:
            raise InvalidInput(f"at most {_MAX_ENTITIES} entities per request")
        want = types.get(key, "int64")
        for value in ids:
            ok = (
                isinstance(value, str) if want == "string" else (isinstance(value, int) and not isinstance(value, bool))
            )
            if not ok:
                kind = "strings" if want == "string" else "integers"
                raise InvalidInput(f"entities.{key} must hold {kind}, got {value!r}")
        columns[key] = ids
    missing = [k for k in plan.join_keys if k not in columns]
    if missing:
        raise InvalidInput(f"entities lack join key(s) {missing}")
    return features, columns, full


def _iso(ts: np.ndarray, status: np.ndarray) -> list[str | None]:
    if len(ts) <= SMALL_READ:
        # datetime_as_string costs ~10 us even for one value; strftime on a handful is ~1 us each.
        return [
            time.strftime(_ISO_FORMAT, time.gmtime(t // 1_000_000)) if code == PRESENT else None
            for t, code in zip(ts.tolist(), status.tolist(), strict=True)
        ]
    stamps = np.datetime_as_string(ts.view("datetime64[us]"), unit="s", timezone="UTC")
    return [s if code == PRESENT else None for s, code in zip(stamps.tolist(), status.tolist(), strict=True)]


_ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def render_result(result: OnlineResult, columns: Mapping[str, list]) -> dict:
    """The Feast-shaped JSON response for a read.

    The common case (every entity present and fresh, no stored nulls) shares one statuses list
    across a view's features and lists the matrix in one call: for a one-entity read, building
    ten status lists and ten one-element arrays cost several times the read itself. Otherwise
    status codes are worked out per view as one (entities x features) matrix.
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    present = ["PRESENT"] * n
    results = [{"values": ids, "statuses": present, "event_timestamps": [None] * n} for ids in columns.values()]
    plan = result._plan
    for view in plan.views:
        view_name = view.layout.view
        status = result.statuses[view_name]
        nulls = result.nulls[view_name]
        stamps = _iso(result.event_ts[view_name], status)
        matrix = result.matrices.get(view_name)
        listed = matrix.T.tolist() if matrix is not None else [result.values[name].tolist() for name in view.names]
        names += view.names
        clean = (
            not (any(status.tolist()) or any(nulls.tolist())) if n <= SMALL_READ else not (status.any() or nulls.any())
        )
        if clean:
            results += [{"values": v, "statuses": present, "event_timestamps": stamps} for v in listed]
            continue
        bits = np.asarray([1 << view.layout.features.index(f) for f in view.features], dtype=np.uint64)
        null = (nulls[:, None] & bits[None, :]) != 0
        codes = np.where((status == PRESENT)[:, None] & null, NULL_VALUE, status[:, None])
        for values, feature_codes in zip(listed, codes.T.tolist(), strict=True):
            if any(feature_codes):  # PRESENT is 0
                values = [v if c == PRESENT else None for v, c in zip(values, feature_codes, strict=True)]
            results.append(
                {
                    "values": values,
                    "statuses": [STATUS_NAMES[c] for c in feature_codes],
                    "event_timestamps": stamps,
                }
            )
    return {"metadata": {"feature_names": names}, "results": results}


def features_request(store: OnlineStore, body: Any) -> dict:
    """``POST /v1/features``: {"features" | "feature_service", "entities": {key: [ids]}} -> values.

    Unknown services, views or features raise NotFound; malformed bodies raise InvalidInput.
    """
    features, columns, full = _parse_body(store, body)
    return render_result(store.read(features, columns, full_names=full), columns)


async def afeatures_request(store: OnlineStore, body: Any) -> dict:
    """``features_request`` for the event loop (non-blocking store reads)."""
    if tracing.enabled:
        return await _traced_features_request(store, body)
    features, columns, full = _parse_body(store, body)
    return render_result(await store.aread(features, columns, full_names=full), columns)


async def _traced_features_request(store: OnlineStore, body: Any) -> dict:
    """``afeatures_request`` telling its request's span what was asked, the store read a child span
    of it (the kv's batched get and the decode: where a slow store shows). Apart from the untraced
    path, so that tracing off costs one flag check."""
    if isinstance(body, Mapping) and isinstance(body.get("feature_service"), str):
        # Before the checks, so that a refused (unknown) service is named on the span too.
        tracing.annotate({"mlscale.features.service": body["feature_service"][:_MAX_NAME]})
    features, columns, full = _parse_body(store, body)
    plan = store.plan(features, full)
    attributes = {
        "mlscale.features.entities": len(next(iter(columns.values()))),
        "mlscale.features.count": len(plan.names),
    }
    tracing.annotate(attributes)
    with tracing.span("online read", {**attributes, "mlscale.features.views": len(plan.views)}):
        result = await store.aread(features, columns, full_names=full)
    return render_result(result, columns)


# The longest feature service name put on a span (a body may name anything, at any length).
_MAX_NAME = 128


class FeatureEnricher:
    """Turns entity ids into a model's float32 [n, k] input from its declared feature service.

    ``defaults``: None (a missing or stale entity is an error), one number for every feature, or a
    {feature: number} mapping (features not named in it stay required).
    """

    def __init__(
        self,
        store: OnlineStore,
        feature_service: str | Sequence[str],
        entity_key: str,
        defaults: float | Mapping[str, float] | None = None,
    ) -> None:
        self.store = store
        self.features = feature_service if isinstance(feature_service, str) else tuple(feature_service)
        self.entity_key = entity_key
        plan = store.plan(self.features)
        if plan.join_keys != [entity_key]:
            raise InvalidInput(f"feature service {feature_service!r} is keyed by {plan.join_keys}, not {entity_key!r}")
        strings = [n for v in plan.views for f, n in zip(v.features, v.names, strict=True) if f in v.layout.strings]
        if strings:
            raise InvalidInput(
                f"feature service {feature_service!r} has string features {strings}: a model's joined input is "
                "a float32 matrix, so list only numeric features in the service it declares"
            )
        self.names = plan.names
        if isinstance(defaults, Mapping):
            unknown = set(defaults) - set(self.names)
            if unknown:
                raise InvalidInput(f"defaults name unknown features {sorted(unknown)} (features: {self.names})")
            self.defaults = np.array([defaults.get(n, np.nan) for n in self.names], np.float32)
            self.required = np.array([n not in defaults for n in self.names])
        elif defaults is None:
            self.defaults, self.required = None, np.ones(len(self.names), bool)
        else:
            self.defaults = np.full(len(self.names), defaults, np.float32)
            self.required = np.zeros(len(self.names), bool)

    def __call__(self, entity_ids: Sequence | np.ndarray) -> np.ndarray:
        return self.assemble(self.store.read(self.features, self._ids(entity_ids)), entity_ids)

    async def acall(self, entity_ids: Sequence | np.ndarray) -> np.ndarray:
        return self.assemble(await self.store.aread(self.features, self._ids(entity_ids)), entity_ids)

    def _ids(self, entity_ids: Sequence | np.ndarray) -> Sequence | np.ndarray:
        if isinstance(entity_ids, np.ndarray):
            if entity_ids.ndim == 2 and entity_ids.shape[1] == 1:
                entity_ids = entity_ids[:, 0]
            if entity_ids.ndim != 1:
                raise InvalidInput(f"{self.entity_key} must be a 1-d list of ids, got shape {entity_ids.shape}")
        return entity_ids

    def assemble(self, result: OnlineResult, entity_ids: Sequence | np.ndarray) -> np.ndarray:
        """Stack the read into [n, k] float32, applying defaults or raising for missing entities."""
        plan = result._plan
        parts = []
        for view in plan.views:
            matrix = result.matrices.get(view.layout.view)
            if matrix is None:
                matrix = np.stack([result.values[n] for n in view.names], axis=1)
            parts.append(matrix)
        out = parts[0].astype(np.float32) if len(parts) == 1 else np.hstack(parts).astype(np.float32)
        # Fast path: every entity present and fresh, no null stored.
        if not any(s.any() for s in result.statuses.values()) and not any(m.any() for m in result.nulls.values()):
            return out
        ok_parts = []
        for view in plan.views:
            name = view.layout.view
            good = result.statuses[name] == PRESENT
            nulls = result.nulls[name]
            cols = [good & ((nulls & np.uint64(1 << view.layout.features.index(f))) == 0) for f in view.features]
            ok_parts.append(np.stack(cols, axis=1))
        ok = ok_parts[0] if len(ok_parts) == 1 else np.hstack(ok_parts)
        bad = ~ok & self.required
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            ids = [np.asarray(entity_ids).ravel()[r].item() for r in rows[:5]]
            missing = sorted({self.names[c] for c in np.flatnonzero(bad.any(axis=0))})
            raise InvalidInput(
                f"no online features for {self.entity_key}={ids}{' ...' if len(rows) > 5 else ''} "
                f"(missing or stale: {missing}); materialize them or declare defaults"
            )
        return np.where(ok, out, self.defaults)


def enrich(
    store: OnlineStore,
    feature_service: str | Sequence[str],
    entity_key: str,
    entity_ids: Sequence | np.ndarray,
    defaults: float | Mapping[str, float] | None = None,
) -> np.ndarray:
    """One-shot ``FeatureEnricher``: float32 [n, k] model input for ``entity_ids``."""
    return FeatureEnricher(store, feature_service, entity_key, defaults)(entity_ids)
