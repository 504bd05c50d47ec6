"""Feature definitions and their one compiled form.

``Entity``, ``FeatureView`` and ``FeatureService`` are plain declarations, written in Python or read
from mlscale.toml; both paths end in :class:`FeatureRepo`, which validates the whole set once and
compiles what the stores need: the online key prefix and packed record layout of each view, and the
resolution of feature references. Nothing downstream looks at the raw declarations again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import PurePath

import msgspec
import numpy as np

from mlscale.errors import ConfigError, InvalidInput, NotFound

# Feature types and their fixed-width little-endian layout in the online record.
FEATURE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
# Strings are the one variable-width type: they follow the fixed record (see ViewLayout.strings).
STRING = "string"
FEATURE_TYPES = (*FEATURE_DTYPES, STRING)
ENTITY_DTYPES = ("int64", "string")
# The null bitmask of an online record is one uint64, hence at most 64 features per view.
MAX_FEATURES_PER_VIEW = 64
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: float | int | str | timedelta | None, what: str) -> float:
    """Seconds from a number, a timedelta or a string like "90s", "15m", "2h", "7d"."""
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(f"{what}: cannot read duration {value!r} (use e.g. 90s, 15m, 2h, 7d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ConfigError(f"{what}: expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise ConfigError(f"{what}: duration must not be negative")
    return seconds


class Entity(msgspec.Struct, kw_only=True):
    """A business object features are keyed by; ``join_key`` is its id column (default: its name)."""

    name: str
    join_key: str = ""
    dtype: str = "int64"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.join_key:
            self.join_key = self.name


class Feature(msgspec.Struct, frozen=True):
    """One typed feature column of a view."""

    name: str
    dtype: str = "float32"


class FeatureView(msgspec.Struct, kw_only=True):
    """Features from one source (Parquet, CSV or a DuckDB query), keyed by entities, stamped in time.

    Accepts friendly Python values and normalizes them: ``entities`` as Entity objects or names,
    ``features`` as a {name: dtype} mapping or Feature objects, ``ttl`` as seconds, timedelta or "2h".
    """

    name: str
    entities: list[str]
    features: list[Feature]
    source: str = ""
    query: str = ""
    timestamp_field: str = "event_timestamp"
    # Optional column of when each row was written: among rows of one entity with the same event
    # time, the greatest created time wins (a late correction replaces the row it corrects).
    created_timestamp_field: str = ""
    # Seconds after __post_init__ (which also accepts a timedelta or "2h").
    ttl: float | str = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        what = f"feature view {self.name!r}"
        if isinstance(self.entities, str | Entity):
            self.entities = [self.entities]  # type: ignore[list-item]
        self.entities = [e.name if isinstance(e, Entity) else e for e in self.entities]
        if isinstance(self.features, Mapping):
            self.features = [Feature(str(n), str(t)) for n, t in self.features.items()]
        self.features = [
            f if isinstance(f, Feature) else Feature(*f) if isinstance(f, tuple | list) else Feature(f)
            for f in self.features
        ]
        if isinstance(self.source, PurePath):
            self.source = str(self.source)
        self.ttl = parse_duration(self.ttl, f"{what}: ttl")


class FeatureService(msgspec.Struct, kw_only=True):
    """The named set of features one model uses: refs "view:feature" or "view:*" (all of a view)."""

    name: str
    features: list[str]
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.features, str):
            self.features = [self.features]
        self.features = [_ref_of(f) for f in self.features]


def _ref_of(item: object) -> str:
    # A FeatureView stands for all of its features, so services can list views directly.
    if isinstance(item, FeatureView):
        return f"{item.name}:*"
    return str(item)


class ViewLayout(msgspec.Struct, frozen=True):
    """A view compiled for the online store: key prefix and the packed record of one entity.

    The prefix carries a hash of the schema, so changing a view's features or entities makes old
    online rows invisible instead of misread; the record is [event time µs, null bitmask, features].
    String features are not in the fixed record: a stored value is the record followed by one
    MessagePack array of the view's strings (in ``strings`` order), so numeric reads still decode
    with one ``np.frombuffer`` over the fixed parts. Null bits count every feature, strings included.
    """

    view: str
    prefix: bytes
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    record: np.dtype
    ttl_us: int
    # The same bytes seen as [ts, nulls, values[k]] when all features share one dtype (else None):
    # reading a view is then one (n, k) matrix instead of k field copies.
    matrix_record: np.dtype | None
    # Record returned for a missing entity: event time INT64_MIN, floats NaN, ints 0, all null.
    empty: bytes
    # String features, in the order of the MessagePack array that follows the record.
    strings: tuple[str, ...] = ()


MISSING_TS = np.iinfo(np.int64).min


def _compile_layout(view: FeatureView, entities: Mapping[str, Entity]) -> ViewLayout:
    join_keys = tuple(entities[e].join_key for e in view.entities)
    schema = repr(
        (
            view.name,
            [(entities[e].join_key, entities[e].dtype) for e in view.entities],
            [(f.name, f.dtype) for f in view.features],
        )
    )
    digest = hashlib.blake2b(schema.encode(), digest_size=4).hexdigest()
    fixed = [f for f in view.features if f.dtype != STRING]
    strings = tuple(f.name for f in view.features if f.dtype == STRING)
    record = np.dtype([("__ts", "<i8"), ("__nulls", "<u8")] + [(f.name, FEATURE_DTYPES[f.dtype]) for f in fixed])
    empty = np.zeros(1, dtype=record)
    empty["__ts"] = MISSING_TS
    empty["__nulls"] = np.uint64((1 << len(view.features)) - 1)
    for f in fixed:
        if FEATURE_DTYPES[f.dtype].kind == "f":
            empty[f.name] = np.nan
    dtypes = {FEATURE_DTYPES[f.dtype] for f in fixed}
    matrix_record = None
    if len(dtypes) == 1 and not strings:
        matrix_record = np.dtype([("__ts", "<i8"), ("__nulls", "<u8"), ("values", dtypes.pop(), (len(view.features),))])
        assert matrix_record.itemsize == record.itemsize
    return ViewLayout(
        view=view.name,
        prefix=f"{view.name}:{digest}:".encode(),
        join_keys=join_keys,
        features=tuple(f.name for f in view.features),
        record=record,
        ttl_us=round(view.ttl * 1_000_000),
        matrix_record=matrix_record,
        empty=empty.tobytes(),
        strings=strings,
    )


class FeatureRepo:
    """The validated, compiled set of definitions every other module works from."""

    def __init__(
        self,
        entities: Iterable[Entity] = (),
        views: Iterable[FeatureView] = (),
        services: Iterable[FeatureService] = (),
    ) -> None:
        self.entities: dict[str, Entity] = _unique(entities, "entity")
        self.views: dict[str, FeatureView] = _unique(views, "feature view")
        self.services: dict[str, FeatureService] = _unique(services, "feature service")
        for entity in self.entities.values():
            _check_entity(entity)
        for view in self.views.values():
            _check_view(view, self.entities)
        self.layouts: dict[str, ViewLayout] = {
            name: _compile_layout(view, self.entities) for name, view in self.views.items()
        }
        # Join key -> id type, for validating request ids without walking the entities each time.
        self.join_key_types: dict[str, str] = {e.join_key: e.dtype for e in self.entities.values()}
        for service in self.services.values():
            try:
                self.resolve(service.features)
            except (InvalidInput, NotFound) as exc:
                raise ConfigError(f"feature service {service.name!r}: {exc}") from None

    # --- feature references -------------------------------------------------------------------

    def resolve(self, features: str | FeatureService | Sequence[str]) -> list[tuple[str, list[str]]]:
        """Features (a service name or object, or refs) as [(view, [feature, ...])] in request order.

        Views keep the order they first appear in; features keep the order they are listed in.
        """
        if isinstance(features, FeatureService):
            refs = features.features
        elif isinstance(features, str):
            service = self.services.get(features)
            if service is None:
                raise NotFound(f"unknown feature service {features!r}")
            refs = service.features
        else:
            refs = [_ref_of(f) for f in features]
            if not refs:
                raise InvalidInput("no features requested")
        grouped: dict[str, list[str]] = {}
        for ref in refs:
            if not isinstance(ref, str) or ref.count(":") != 1:
                raise InvalidInput(f"feature reference {ref!r} must look like 'view:feature' or 'view:*'")
            view_name, feature = ref.split(":")
            view = self.views.get(view_name)
            if view is None:
                raise NotFound(f"unknown feature view {view_name!r} in {ref!r}")
            names = [f.name for f in view.features]
            chosen = grouped.setdefault(view_name, [])
            if feature == "*":
                chosen.extend(n for n in names if n not in chosen)
            elif feature not in names:
                raise NotFound(f"feature view {view_name!r} has no feature {feature!r} (has {names})")
            elif feature in chosen:
                raise InvalidInput(f"feature {ref!r} requested twice")
            else:
                chosen.append(feature)
        return list(grouped.items())

    def output_names(self, resolved: list[tuple[str, list[str]]], full_names: bool) -> list[str]:
        """Column names of resolved features: "feature", or "view__feature" with ``full_names``."""
        names = [f"{v}__{f}" if full_names else f for v, feats in resolved for f in feats]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InvalidInput(f"feature name {name!r} comes from two views; ask for full feature names")
            seen.add(name)
        return names

    # --- serialization (registry) -------------------------------------------------------------

    def to_specs(self) -> list[tuple[str, str, bytes]]:
        """(kind, name, JSON spec) for every definition, as the registry stores them."""
        out = [("entity", n, msgspec.json.encode(e)) for n, e in self.entities.items()]
        out += [("view", n, msgspec.json.encode(v)) for n, v in self.views.items()]
        out += [("service", n, msgspec.json.encode(s)) for n, s in self.services.items()]
        return out

    @classmethod
    def from_specs(cls, rows: Iterable[tuple[str, str, bytes | str]]) -> FeatureRepo:
        kinds = {"entity": Entity, "view": FeatureView, "service": FeatureService}
        found: dict[str, list] = {k: [] for k in kinds}
        for kind, _name, spec in rows:
            found[kind].append(msgspec.json.decode(spec, type=kinds[kind]))
        return cls(found["entity"], found["view"], found["service"])

    def describe(self, name: str) -> dict:
        """A plain dict describing one entity, view or service, for ``mlscale features describe``."""
        for kind, table in (
            ("entity", self.entities),
            ("feature view", self.views),
            ("feature service", self.services),
        ):
            if name in table:
                info = {"kind": kind, **msgspec.to_builtins(table[name])}
                if kind == "feature view":
                    info["online_key_prefix"] = self.layouts[name].prefix.decode()
                return info
        raise NotFound(f"no entity, feature view or feature service named {name!r}")


def _unique(items: Iterable, kind: str) -> dict:
    out: dict = {}
    for item in items:
        if not isinstance(item.name, str) or not _NAME.match(item.name):
            raise ConfigError(f"{kind} name {item.name!r} must be letters, digits and _ (not first a digit)")
        if item.name in out:
            raise ConfigError(f"duplicate {kind} name {item.name!r}")
        out[item.name] = item
    return out


def _check_entity(entity: Entity) -> None:
    if entity.dtype not in ENTITY_DTYPES:
        raise ConfigError(f"entity {entity.name!r}: bad type {entity.dtype!r} (supported: {', '.join(ENTITY_DTYPES)})")
    if not _NAME.match(entity.join_key):
        raise ConfigError(f"entity {entity.name!r}: bad join key {entity.join_key!r}")


def _check_view(view: FeatureView, entities: Mapping[str, Entity]) -> None:
    what = f"feature view {view.name!r}"
    if bool(view.source) == bool(view.query):
        raise ConfigError(f"{what}: give exactly one of source (a Parquet/CSV file) or query (DuckDB SQL)")
    # A folder of Parquet files (a table as Spark and most lakes write it) is spelled with a final "/".
    if view.source and not view.source.lower().endswith((".parquet", ".csv", ".csv.gz", ".pq", "/")):
        raise ConfigError(
            f"{what}: source {view.source!r} must be a .parquet or .csv file (or glob), or a folder of "
            "Parquet files ending in /"
        )
    if not view.entities:
        raise ConfigError(f"{what}: needs at least one entity")
    for name in view.entities:
        if name not in entities:
            raise ConfigError(f"{what}: unknown entity {name!r} (known: {sorted(entities) or 'none'})")
    if len(set(view.entities)) != len(view.entities):
        raise ConfigError(f"{what}: an entity is listed twice")
    if not view.features:
        raise ConfigError(f"{what}: declares no features")
    if len(view.features) > MAX_FEATURES_PER_VIEW:
        raise ConfigError(f"{what}: at most {MAX_FEATURES_PER_VIEW} features per view; split it")
    reserved = {entities[e].join_key for e in view.entities} | {view.timestamp_field}
    if view.created_timestamp_field:
        if view.created_timestamp_field in reserved:
            raise ConfigError(
                f"{what}: created_timestamp_field {view.created_timestamp_field!r} must differ from the "
                "timestamp field and the join keys"
            )
        reserved.add(view.created_timestamp_field)
    seen: set[str] = set()
    for feature in view.features:
        if not _NAME.match(feature.name) or feature.name.startswith("__"):
            raise ConfigError(f"{what}: bad feature name {feature.name!r}")
        if feature.name in seen:
            raise ConfigError(f"{what}: duplicate feature {feature.name!r}")
        if feature.name in reserved:
            raise ConfigError(f"{what}: feature {feature.name!r} clashes with a join key or a timestamp field")
        if feature.dtype not in FEATURE_TYPES:
            raise ConfigError(
                f"{what}: feature {feature.name!r} has bad type {feature.dtype!r} "
                f"(supported: {', '.join(FEATURE_TYPES)})"
            )
        seen.add(feature.name)
    if not view.timestamp_field:
        raise ConfigError(f"{what}: timestamp_field must be set")
