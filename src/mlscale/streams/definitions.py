"""Windowed feature definitions: one declaration, compiled to the stream processor and to DuckDB SQL.

A definition is plain data (it can live in mlscale.toml under ``[[streams.features]]``); ``compile()``
checks it once and turns names and durations into the integers both executors use, so the two can
never disagree about what a window is.

Semantics both executors share (and the tests pin down):
- event time is milliseconds since the epoch, floored: an RFC 3339 / ISO-8601 string
  ("2026-11-01T00:00:05.250Z", "...+05:30"; without an offset it is UTC) to the millisecond, epoch
  seconds as ``floor(t * 1000)``, epoch milliseconds as ``floor(t)``. ``event_time_unit = "auto"``
  takes a number of magnitude 1e11 or more as milliseconds (1e11 s is the year 5138, 1e11 ms 1973);
- with ``dedup_key``, an event whose key (per entity) was seen with an event time within
  ``dedup_horizon`` of its own is a duplicate and dropped (a client retry resends the same event);
- tumbling windows ``[k*size, (k+1)*size)``; hopping windows of ``size`` every ``slide`` (size a
  multiple of slide); session windows close after ``gap`` without events of the entity (an event more
  than ``gap`` after the previous one starts a new session);
- ``last(x)`` is ``x`` of the event with the greatest event time, ties broken by the greater value;
- ``distinct_count(x)`` is EXACT (a set per window), so stream and batch agree to the unit; it costs
  memory proportional to the distinct values of open windows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from mlscale.errors import ConfigError

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "distinct_count", "last")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_AGG = re.compile(r"^\s*([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_duration(text: str | int | float, what: str = "duration") -> int:
    """Milliseconds in ``text``: "500ms", "10s", "1m", "2h", "1d", or a number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return round(float(text) * 1000)
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{what} {text!r}: expected a number with a unit such as 500ms, 10s, 1m, 2h")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2) or "s"])


class WindowedFeature(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Aggregations of a topic's events per entity and event-time window.

    ``aggregations`` are strings: "count", "sum(amount)", "mean(amount)", "min(x)", "max(x)",
    "distinct_count(item)", "last(x)". Each becomes an output named like ``sum_amount`` (``count``).
    """

    name: str
    source: str
    entity_key: str
    event_time: str = "ts"
    window: Literal["tumbling", "hopping", "session"] = "tumbling"
    size: str = "1m"
    slide: str | None = None
    gap: str | None = None
    aggregations: list[str] = msgspec.field(default_factory=lambda: ["count"])
    allowed_lateness: str = "0s"
    # "auto" (numbers of magnitude >= 1e11 are milliseconds, others seconds), "s" or "ms";
    # RFC 3339 strings are read whatever the unit says.
    event_time_unit: Literal["auto", "s", "ms"] = "auto"
    # Field naming each event (a client's retry carries the same one): repeats are dropped.
    dedup_key: str | None = None
    # How far apart in event time two events with the same key still count as one; default
    # window size (or session gap) + allowed lateness. Memory holds the keys of about this span.
    dedup_horizon: str | None = None
    # Time-to-live of the online values (None keeps them until overwritten).
    ttl: str | None = None

    def compile(self) -> CompiledFeature:
        return compile_feature(self)


@dataclass(frozen=True, slots=True)
class Aggregation:
    fn: str
    field: str | None
    output: str


@dataclass(frozen=True, slots=True)
class CompiledFeature:
    """A checked definition with durations in milliseconds and aggregations resolved."""

    definition: WindowedFeature
    name: str
    source: str
    entity_key: str
    event_time: str
    window: str
    size_ms: int
    slide_ms: int
    gap_ms: int
    lateness_ms: int
    time_unit: str
    dedup_key: str | None
    dedup_horizon_ms: int
    ttl_s: float | None
    aggregations: tuple[Aggregation, ...]
    numeric_fields: tuple[str, ...]
    distinct_fields: tuple[str, ...]

    @property
    def outputs(self) -> list[str]:
        return [a.output for a in self.aggregations]

    def online_key(self, entity: object, window_start_ms: int) -> bytes:
        """Key of one entity's window in the online store: ``name|entity|window_start_ms``."""
        return f"{self.name}|{entity}|{window_start_ms}".encode()


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def compile_feature(feature: WindowedFeature) -> CompiledFeature:
    where = f"feature {feature.name!r}"
    if not _NAME.match(feature.name):
        raise ConfigError(f"{where}: name must be letters, digits, '_', '.', '-'")
    aggs: list[Aggregation] = []
    for spec in feature.aggregations:
        match = _AGG.match(spec)
        if not match or match.group(1) not in AGGREGATIONS:
            raise ConfigError(f"{where}: aggregation {spec!r}: expected one of {', '.join(AGGREGATIONS)}")
        fn, field = match.group(1), match.group(2) or None
        if fn == "count":
            if field:
                raise ConfigError(f"{where}: count takes no field (it counts events)")
            aggs.append(Aggregation("count", None, "count"))
            continue
        if not field:
            raise ConfigError(f"{where}: {fn} needs a field, as in {fn}(amount)")
        aggs.append(Aggregation(fn, field, f"{fn}_{field}"))
    if not aggs:
        raise ConfigError(f"{where}: at least one aggregation is needed")
    outputs = [a.output for a in aggs]
    if len(set(outputs)) != len(outputs):
        raise ConfigError(f"{where}: an aggregation is listed twice")
    size = parse_duration(feature.size, f"{where}: size")
    slide = parse_duration(feature.slide, f"{where}: slide") if feature.slide else size
    gap = parse_duration(feature.gap, f"{where}: gap") if feature.gap else 0
    if feature.window in ("tumbling", "hopping") and size <= 0:
        raise ConfigError(f"{where}: size must be positive")
    if feature.window == "hopping" and (not feature.slide or slide <= 0 or size % slide):
        raise ConfigError(f"{where}: a hopping window needs a positive slide that divides size")
    if feature.window == "session" and gap <= 0:
        raise ConfigError(f'{where}: a session window needs a positive gap, as in gap = "30s"')
    lateness = parse_duration(feature.allowed_lateness, f"{where}: allowed_lateness")
    if feature.dedup_key is not None and not feature.dedup_key:
        raise ConfigError(f'{where}: dedup_key must name a field, as in dedup_key = "id"')
    if feature.dedup_horizon is not None:
        horizon = parse_duration(feature.dedup_horizon, f"{where}: dedup_horizon")
        if horizon < 0:
            raise ConfigError(f"{where}: dedup_horizon must not be negative")
    else:
        horizon = (gap if feature.window == "session" else size) + lateness
    numeric = tuple(dict.fromkeys(a.field for a in aggs if a.fn in ("sum", "mean", "min", "max", "last")))
    distinct = tuple(dict.fromkeys(a.field for a in aggs if a.fn == "distinct_count"))
    return CompiledFeature(
        definition=feature,
        name=feature.name,
        source=feature.source,
        entity_key=feature.entity_key,
        event_time=feature.event_time,
        window=feature.window,
        size_ms=size if feature.window != "session" else 0,
        slide_ms=slide if feature.window == "hopping" else size,
        gap_ms=gap,
        lateness_ms=lateness,
        time_unit=feature.event_time_unit,
        dedup_key=feature.dedup_key,
        dedup_horizon_ms=horizon,
        ttl_s=parse_duration(feature.ttl, f"{where}: ttl") / 1000 if feature.ttl else None,
        aggregations=tuple(aggs),
        numeric_fields=numeric,
        distinct_fields=distinct,
    )
