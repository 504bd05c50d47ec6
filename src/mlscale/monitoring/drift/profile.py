"""The reference profile: what the drift tests need from training data, computed once and stored.

Per numeric column the profile keeps the exact count, mean and standard deviation, and a sorted
sample: the whole sorted column when it has at most ``max_sample`` values, otherwise a quantile
sketch of ``max_sample`` evenly spaced quantiles. Every test computed from a full sorted column is
exact (it is the empirical distribution itself); from a sketch, the tests are approximations whose
error shrinks as 1/max_sample (the profile's ``exact`` flag says which). Columns with at most
``MAX_VALUE_COUNTS`` distinct values also keep exact value counts, which the value-count based tests
(chi-square, Z, and PSI / Jensen-Shannon on few-valued columns) use. Categorical columns keep exact
value counts, nothing else.

The profile is saved as one ``.npz`` file (no pickle), so it can be loaded without trusting code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError, InvalidInput

# Columns with at most this many distinct values keep their exact value counts.
MAX_VALUE_COUNTS = 20
DEFAULT_MAX_SAMPLE = 100_000


@dataclass
class ColumnProfile:
    """What is kept of one reference column."""

    name: str
    kind: str  # "num" or "cat"
    count: int  # non-missing values
    std: float = 0.0
    mean: float = 0.0
    minimum: float = 0.0
    maximum: float = 0.0
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))  # sorted values or quantile sketch
    exact: bool = True  # sample is the whole column
    n_unique: int = 0
    values: np.ndarray | None = None  # distinct values (sorted) when few, or the categories
    counts: np.ndarray | None = None  # their counts

    def value_counts(self) -> dict:
        """Distinct value -> count, when the profile kept them."""
        if self.values is None or self.counts is None:
            return {}
        return dict(zip(self.values.tolist(), self.counts.tolist(), strict=True))


def clean_numeric(values: np.ndarray) -> np.ndarray:
    """Float64 values without NaN and infinities (the tests, as Evidently's, ignore those)."""
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def clean_categorical(values: np.ndarray) -> np.ndarray:
    """Values as strings without missing entries, so categories compare across files and types."""
    array = np.asarray(values, dtype=object)
    keep = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) for v in array], dtype=bool)
    return array[keep].astype(str)


def is_numeric(values: np.ndarray) -> bool:
    """Numbers (not booleans) are numeric columns; everything else is categorical."""
    return np.asarray(values).dtype.kind in "iuf"


def _quantile_sketch(sorted_values: np.ndarray, size: int) -> np.ndarray:
    """``size`` mid-point quantiles: treated as an equally weighted sample of the column."""
    positions = (np.arange(size) + 0.5) / size * sorted_values.size - 0.5
    return np.interp(positions, np.arange(sorted_values.size), sorted_values)


def profile_column(
    name: str, values: np.ndarray, kind: str | None = None, max_sample: int | None = DEFAULT_MAX_SAMPLE
) -> ColumnProfile:
    """Profile one reference column; ``kind`` None infers it from the dtype."""
    kind = kind or ("num" if is_numeric(values) else "cat")
    if kind == "cat":
        clean = clean_categorical(values)
        cats, counts = np.unique(clean, return_counts=True)
        return ColumnProfile(
            name, "cat", int(clean.size), n_unique=int(cats.size), values=cats, counts=counts.astype(np.int64)
        )
    clean = np.sort(clean_numeric(values))
    if clean.size == 0:
        raise InvalidInput(f"reference column {name!r} has no finite numeric values")
    distinct = np.flatnonzero(np.diff(clean)) + 1
    n_unique = int(distinct.size + 1)
    values_kept = counts_kept = None
    if n_unique <= MAX_VALUE_COUNTS:
        starts = np.concatenate(([0], distinct))
        values_kept = clean[starts]
        counts_kept = np.diff(np.concatenate((starts, [clean.size]))).astype(np.int64)
    exact = max_sample is None or clean.size <= max_sample
    sample = clean if exact else _quantile_sketch(clean, int(max_sample))
    return ColumnProfile(
        name,
        "num",
        int(clean.size),
        std=float(np.std(clean)),
        mean=float(np.mean(clean)),
        minimum=float(clean[0]),
        maximum=float(clean[-1]),
        sample=sample,
        exact=exact,
        n_unique=n_unique,
        values=values_kept,
        counts=counts_kept,
    )


@dataclass
class ReferenceProfile:
    """The profiles of every reference column, in column order."""

    columns: dict[str, ColumnProfile]

    @classmethod
    def fit(
        cls,
        data: dict[str, np.ndarray],
        categorical: list[str] | tuple[str, ...] = (),
        max_sample: int | None = DEFAULT_MAX_SAMPLE,
    ) -> ReferenceProfile:
        """Profile every column of ``data`` (name -> 1-D array); ``categorical`` forces that kind."""
        if not data:
            raise InvalidInput("the reference has no columns")
        columns = {}
        for name, values in data.items():
            kind = "cat" if name in categorical else None
            columns[name] = profile_column(name, np.asarray(values).reshape(-1), kind, max_sample)
        return cls(columns)

    def save(self, path: str | Path) -> None:
        """Write the profile as one ``.npz`` (arrays) with a JSON header (the scalars)."""
        header, arrays = [], {}
        for i, col in enumerate(self.columns.values()):
            header.append(
                {
                    "name": col.name,
                    "kind": col.kind,
                    "count": col.count,
                    "std": col.std,
                    "mean": col.mean,
                    "minimum": col.minimum,
                    "maximum": col.maximum,
                    "exact": col.exact,
                    "n_unique": col.n_unique,
                    "has_values": col.values is not None,
                }
            )
            arrays[f"sample_{i}"] = col.sample
            if col.values is not None:
                arrays[f"values_{i}"] = col.values.astype(str) if col.kind == "cat" else col.values
                arrays[f"counts_{i}"] = col.counts
        arrays["header"] = np.frombuffer(json.dumps({"version": 1, "columns": header}).encode(), np.uint8)
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`; a wrong file is a ConfigError naming it."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(npz["header"].tobytes())
                columns = {}
                for i, meta in enumerate(header["columns"]):
                    has_values = meta.pop("has_values")
                    col = ColumnProfile(**meta, sample=npz[f"sample_{i}"])
                    if has_values:
                        col.values, col.counts = npz[f"values_{i}"], npz[f"counts_{i}"]
                    columns[col.name] = col
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a reference profile ({exc})") from None
        return cls(columns)
