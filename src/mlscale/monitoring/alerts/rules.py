"""Alert rules over metric samples, with the states Prometheus uses: pending, firing, resolved.

A rule names a metric and, optionally, labels its series must carry; each matching series is its
own alert (so one rule over ``drift_score`` alerts per feature). A condition that holds starts a
pending alert; held for ``for_seconds`` it fires (one notification, then silence while it keeps
firing); when it stops holding, or its series disappears, a firing alert resolves (one more
notification) and a pending one is simply forgotten.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlscale.errors import ConfigError

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Sample:
    """One value of a metric series."""

    metric: str
    labels: dict[str, str]
    value: float

    def key(self) -> tuple:
        return tuple(sorted(self.labels.items()))


@dataclass
class AlertRule:
    """``metric <op> threshold`` held for ``for_seconds``, over series that carry ``match`` labels."""

    name: str
    metric: str
    op: str = ">"
    threshold: float = 0.0
    for_seconds: float = 0.0
    match: dict[str, str] = field(default_factory=dict)
    severity: str = "warning"
    summary: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ConfigError(f"alert rule {self.name!r}: unknown comparison {self.op!r} ({' '.join(OPS)})")
        if self.for_seconds < 0:
            raise ConfigError(f"alert rule {self.name!r}: 'for' must not be negative")

    def matches(self, sample: Sample) -> bool:
        return sample.metric == self.metric and all(sample.labels.get(k) == v for k, v in self.match.items())

    def holds(self, value: float) -> bool:
        return not math.isnan(value) and OPS[self.op](value, self.threshold)


@dataclass
class Alert:
    """One series of one rule: its state and when it entered it."""

    rule: AlertRule
    labels: dict[str, str]
    state: str  # "pending" or "firing"
    since: float
    value: float
    fired_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "labels": self.labels,
            "state": self.state,
            "since": self.since,
            "fired_at": self.fired_at,
            "value": self.value,
            "threshold": self.rule.threshold,
            "op": self.rule.op,
            "metric": self.rule.metric,
            "severity": self.rule.severity,
        }


def rule_from_settings(spec: dict[str, Any]) -> AlertRule:
    """An AlertRule from a settings mapping; unknown keys are a ConfigError naming the rule."""
    known = {"name", "metric", "op", "threshold", "for_seconds", "match", "severity", "summary"}
    unknown = set(spec) - known
    if unknown or "name" not in spec or "metric" not in spec:
        raise ConfigError(
            f"alert rule {spec.get('name', '?')!r}: needs name and metric; unknown keys {sorted(unknown)}"
        )
    return AlertRule(**spec)
