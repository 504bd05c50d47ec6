"""Column and dataset drift with scikit-learn's verbs: ``fit(reference)`` then ``score(current)``.

The test of each column is chosen as Evidently chooses it (by kind, reference size and distinct
values; see :func:`stattests.default_test`) unless the caller names one per column or for all; the
dataset drifts when the share of drifted columns reaches ``drift_share`` (Evidently's default 0.5).
Prediction drift is the same detector over a model's output columns (``columns=`` selects them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlscale.errors import InvalidInput
from mlscale.monitoring.drift import stattests
from mlscale.monitoring.drift.arrow_columns import column_to_numpy
from mlscale.monitoring.drift.profile import (
    DEFAULT_MAX_SAMPLE,
    ColumnProfile,
    ReferenceProfile,
    clean_categorical,
    clean_numeric,
)

HISTOGRAM_BINS = 20
SCORED_KINDS = ("num", "cat")
UNSCORED_KINDS = {
    "text": "not scored: text (more than half of the values distinct); set its kind to cat to compare categories",
    "datetime": "not scored: dates and times are not compared",
}
MAX_CATEGORIES_SHOWN = 20


@dataclass
class ColumnDrift:
    """One column's verdict, with the histograms a report or dashboard draws."""

    column: str
    kind: str
    test: str
    title: str
    value: float
    threshold: float
    drifted: bool
    exact: bool
    reference: dict[str, list] = field(default_factory=dict)  # {"bins": [...], "counts": [...]}
    current: dict[str, list] = field(default_factory=dict)
    # All null in the reference or in the current data: not scored, left out of the dataset share.
    empty: bool = False
    # Why the column was not scored (empty, text, datetime, values of another type); "" when scored.
    reason: str = ""

    @property
    def scored(self) -> bool:
        return not self.reason

    def summary(self) -> dict[str, Any]:
        """The verdict without the histograms, JSON-able (a NaN value becomes None)."""
        return {
            "column": self.column,
            "kind": self.kind,
            "test": self.test or None,
            "value": self.value if math.isfinite(self.value) else None,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "drifted": self.drifted,
            "empty": self.empty,
            "reason": self.reason or None,
        }


@dataclass
class DatasetDrift:
    """Every column's verdict and the dataset's: drifted when the drifted share reaches drift_share."""

    columns: list[ColumnDrift]
    drift_share: float
    reference_rows: int
    current_rows: int

    @property
    def scored_columns(self) -> list[ColumnDrift]:
        """The columns with a verdict; empty and unscorable columns are not among them."""
        return [c for c in self.columns if c.scored]

    @property
    def empty_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.empty]

    @property
    def drifted_columns(self) -> int:
        return sum(c.drifted for c in self.columns)

    @property
    def share(self) -> float:
        """Drifted share of the scored columns (empty and unscorable ones left out)."""
        scored = len(self.scored_columns)
        return self.drifted_columns / scored if scored else 0.0

    @property
    def drifted(self) -> bool:
        return bool(self.scored_columns) and self.share >= self.drift_share

    def verdict(self) -> dict[str, Any]:
        """The dataset verdict and every column's, without histograms: what ``--json`` writes."""
        return {
            "drifted": self.drifted,
            "share": self.share,
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "scored_columns": len(self.scored_columns),
            "empty_columns": self.empty_columns,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "columns": [c.summary() for c in self.columns],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with the histograms (NaN values become None)."""
        columns = []
        for col in self.columns:
            item = asdict(col)
            item.update(col.summary())
            columns.append(item)
        data = self.verdict()
        data["columns"] = columns
        return data


def as_columns(data: Any) -> dict[str, np.ndarray]:
    """A mapping of 1-D arrays from a dict, a pyarrow Table or a pandas DataFrame."""
    if isinstance(data, dict):
        return {str(k): np.asarray(v) for k, v in data.items()}
    if hasattr(data, "column_names") and hasattr(data, "column"):  # pyarrow.Table
        return {name: column_to_numpy(data.column(name)) for name in data.column_names}
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):  # pandas.DataFrame
        return {str(name): data[name].to_numpy() for name in data.columns}
    raise InvalidInput(f"cannot read columns from {type(data).__name__}")


class DriftDetector:
    """Compares current data with a reference profile, column by column.

    tests: column -> test name, overriding the default choice; ``test`` applies one test to all.
    thresholds: column -> threshold; ``threshold`` overrides every test's default.
    """

    def __init__(
        self,
        *,
        columns: list[str] | None = None,
        categorical: list[str] | tuple[str, ...] = (),
        kinds: dict[str, str] | None = None,
        test: str | None = None,
        tests: dict[str, str] | None = None,
        threshold: float | None = None,
        thresholds: dict[str, float] | None = None,
        drift_share: float = 0.5,
        max_sample: int | None = DEFAULT_MAX_SAMPLE,
    ) -> None:
        for name in [test, *(tests or {}).values()]:
            if name is not None and name not in stattests.TESTS:
                raise InvalidInput(f"unknown drift test {name!r}; known: {', '.join(stattests.TESTS)}")
        self.columns = columns
        self.categorical = tuple(categorical)
        self.kinds = dict(kinds or {})
        self.test = test
        self.tests = dict(tests or {})
        self.threshold = threshold
        self.thresholds = dict(thresholds or {})
        self.drift_share = drift_share
        self.max_sample = max_sample

    def fit(self, reference: Any) -> DriftDetector:
        """Profile the reference (or take a ready ReferenceProfile); the rows are not kept."""
        if isinstance(reference, ReferenceProfile):
            profile = reference
        else:
            data = as_columns(reference)
            if self.columns is not None:
                missing = [c for c in self.columns if c not in data]
                if missing:
                    raise InvalidInput(f"reference has no column {missing[0]!r}")
                data = {c: data[c] for c in self.columns}
            profile = ReferenceProfile.fit(data, self.categorical, self.max_sample, self.kinds)
        if self.columns is not None:
            profile = ReferenceProfile({c: profile.columns[c] for c in self.columns if c in profile.columns})
        self.profile_ = profile
        return self

    def score(self, current: Any) -> DatasetDrift:
        """Run each column's test against the current data."""
        profile = getattr(self, "profile_", None)
        if profile is None:
            raise InvalidInput("the drift detector is not fitted: call fit(reference) first")
        data = as_columns(current)
        plan: list[tuple[ColumnProfile, np.ndarray, str]] = []
        unscored: dict[str, ColumnDrift] = {}
        current_rows = 0
        for name, col in profile.columns.items():
            if name not in data:
                raise InvalidInput(f"current data has no column {name!r}")
            raw = np.asarray(data[name]).reshape(-1)
            current_rows = max(current_rows, raw.size)
            test = self.tests.get(name) or self.test
            if test is not None and col.kind in SCORED_KINDS and col.kind not in stattests.TESTS[test].kinds:
                raise InvalidInput(f"test {test!r} does not apply to {col.kind} column {name!r}")
            values, reason = self._current_values(col, raw)
            if reason:
                unscored[name] = self._unscored(col, test, reason)
                continue
            if test is None:
                test = stattests.default_test(col, stattests.distinct_values(col, values))
            plan.append((col, values, test))
        values = self._run(plan)
        scored = {}
        for (col, cur, test), value in zip(plan, values, strict=True):
            spec = stattests.TESTS[test]
            threshold = self._threshold(col.name, test)
            ref_hist, cur_hist = histograms(col, cur)
            exact = col.exact or (test in ("chisquare", "z") or (col.values is not None and not spec.is_pvalue))
            scored[col.name] = ColumnDrift(
                col.name,
                col.kind,
                test,
                spec.title,
                float(value),
                threshold,
                spec.drifted(float(value), threshold),
                bool(exact),
                ref_hist,
                cur_hist,
            )
        results = [scored.get(name) or unscored[name] for name in profile.columns]
        rows = max((c.count for c in profile.columns.values()), default=0)
        return DatasetDrift(results, self.drift_share, rows, current_rows)

    def _threshold(self, column: str, test: str) -> float:
        threshold = self.thresholds.get(column, self.threshold)
        return stattests.TESTS[test].threshold if threshold is None else threshold

    @staticmethod
    def _current_values(col: ColumnProfile, raw: np.ndarray) -> tuple[np.ndarray, str]:
        """The current column cleaned for its test, or the reason it cannot be scored."""
        if col.kind not in SCORED_KINDS:
            return raw, UNSCORED_KINDS[col.kind]
        if col.count == 0:
            return raw, "empty: no values in the reference (all null)"
        if col.kind == "num":
            try:
                values = np.sort(clean_numeric(raw))
            except (TypeError, ValueError):
                return raw, "not scored: numeric in the reference, values that are not numbers in current"
        else:
            values = clean_categorical(raw)
        if values.size == 0:
            return values, "empty: no values in current (all null)"
        return values, ""

    def _unscored(self, col: ColumnProfile, test: str | None, reason: str) -> ColumnDrift:
        spec = stattests.TESTS.get(test or "")
        return ColumnDrift(
            col.name,
            col.kind,
            test or "",
            spec.title if spec else "",
            math.nan,
            self._threshold(col.name, test) if spec else math.nan,
            False,
            col.exact,
            empty=reason.startswith("empty"),
            reason=reason,
        )

    @staticmethod
    def _run(plan: list[tuple[ColumnProfile, np.ndarray, str]]) -> list[float]:
        out = [math.nan] * len(plan)
        # Wasserstein columns with the same sizes run as one vectorized batch.
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (col, cur, test) in enumerate(plan):
            if test == "wasserstein":
                if cur.size:
                    groups[(col.sample.size, cur.size)].append(i)
            elif test == "ks":
                out[i] = stattests.ks_pvalue(col, cur)[0]
            else:
                out[i] = getattr(
                    stattests,
                    {"psi": "psi", "jensenshannon": "jensenshannon", "chisquare": "chisquare", "z": "ztest"}[test],
                )(col, cur)
        for members in groups.values():
            ref = np.column_stack([plan[i][0].sample for i in members])
            cur = np.column_stack([plan[i][1] for i in members])
            norms = np.array([max(plan[i][0].std, 0.001) for i in members])
            for i, value in zip(members, stattests.wasserstein_many(ref, cur) / norms, strict=True):
                out[i] = float(value)
        return out


def histograms(col: ColumnProfile, current: np.ndarray) -> tuple[dict[str, list], dict[str, list]]:
    """Reference and current counts on shared bins (numeric) or categories, for drawing."""
    if col.kind == "num" and col.values is None:
        low = min(col.minimum, float(current[0])) if current.size else col.minimum
        high = max(col.maximum, float(current[-1])) if current.size else col.maximum
        if low == high:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
        ref = stattests.histogram_sorted(col.sample, edges) * (col.count / col.sample.size)
        cur = stattests.histogram_sorted(current, edges)
        bins = edges.tolist()
        return (
            {"bins": bins, "counts": np.round(ref).astype(int).tolist()},
            {"bins": bins, "counts": cur.astype(int).tolist()},
        )
    keys, ref, cur = stattests.value_counts(col, current)
    order = np.argsort(-(ref / max(col.count, 1) + cur / max(current.size, 1)), kind="stable")
    order = order[:MAX_CATEGORIES_SHOWN]
    labels = [f"{k:.6g}" if col.kind == "num" else str(k) for k in keys[order].tolist()]
    return (
        {"bins": labels, "counts": ref[order].astype(int).tolist()},
        {"bins": labels, "counts": cur[order].astype(int).tolist()},
    )
