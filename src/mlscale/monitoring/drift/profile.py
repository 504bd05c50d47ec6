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
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlscale.errors import ConfigError, InvalidInput

# Columns with at most this many distinct values keep their exact value counts.
MAX_VALUE_COUNTS = 20
# Evidently's INTEGER_CARDINALITY_LIMIT: integer columns with at most this many distinct values are categorical.
INTEGER_CATEGORIES_MAX = 10
# num and cat are scored; text and datetime are profiled and reported as not scored.
KINDS = ("num", "cat", "text", "datetime")
DEFAULT_MAX_SAMPLE = 100_000


@dataclass
class ColumnProfile:
    """What is kept of one reference column."""

    name: str
    kind: str  # "num", "cat", "text" or "datetime"
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
    array = np.asarray(values)
    if array.dtype.kind == "O":  # nulls among numbers (a pyarrow column with nulls, a bool with None)
        array = np.array([np.nan if v is None else v for v in array], dtype=np.float64)
    array = np.asarray(array, dtype=np.float64)
    return array[np.isfinite(array)]


def _label(value: object) -> str:
    """One category label; integral floats print as integers, so 3 and 3.0 are the same category
    (a count column turns float in a file where it has nulls)."""
    if isinstance(value, float | np.floating) and value.is_integer():
        return str(int(value))
    return str(value)


def clean_categorical(values: np.ndarray) -> np.ndarray:
    """Values as string labels without missing entries, so categories compare across files and types."""
    array = np.asarray(values)
    kind = array.dtype.kind
    if kind == "b":
        return np.where(array, "True", "False")
    if kind in "iu":
        return array.astype(str)
    if kind == "f":
        array = array[np.isfinite(array)]
        labels = array.astype(str)
        integral = array == np.floor(array)
        labels[integral] = array[integral].astype(np.int64).astype(str)
        return labels
    if kind in "US":
        return array.astype(str)
    keep = [v for v in array.tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return np.array([_label(v) for v in keep], dtype=str) if keep else np.empty(0, dtype=str)


def infer_kind(values: np.ndarray) -> str:
    """A column's kind as Evidently 0.7.23 infers it by default (``evidently.core.datasets.infer_column_type``).

    Floats are numeric; integers are categorical when they have at most ``INTEGER_CATEGORIES_MAX`` (10)
    distinct values, numeric otherwise; booleans are categorical; strings are text when more than half
    of their non-missing values are distinct, categorical otherwise; dates are datetime. Text and datetime
    columns are profiled but not scored. Where mlscale differs: unsigned integers follow the integer rule
    (Evidently leaves them unknown) and booleans or mixed values with nulls are categorical (unknown in
    Evidently, so never tested there).
    """
    array = np.asarray(values)
    kind = array.dtype.kind
    if kind == "f":
        return "num"
    if kind in "iu":
        return "cat" if np.unique(array).size <= INTEGER_CATEGORIES_MAX else "num"
    if kind == "b":
        return "cat"
    if kind in "Mm":
        return "datetime"
    present = [v for v in array.tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return "cat"
    if all(isinstance(v, bool | np.bool_) for v in present):
        return "cat"
    if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in present):
        return infer_kind(np.array(present))  # numbers with nulls in an object column
    if isinstance(present[0], str) and isinstance(present[-1], str) and len(set(present)) > 0.5 * len(present):
        return "text"
    return "cat"


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
    """Profile one reference column; ``kind`` None infers it as Evidently does (:func:`infer_kind`).

    A column with no values (all null) gets a profile with ``count`` 0: the detector reports it empty.
    """
    values = np.asarray(values)
    kind = kind or infer_kind(values)
    if kind not in KINDS:
        raise InvalidInput(f"column {name!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if kind in ("text", "datetime"):
        return ColumnProfile(name, kind, int(values.size))
    if kind == "cat":
        clean = clean_categorical(values)
        cats, counts = np.unique(clean, return_counts=True)
        return ColumnProfile(
            name, "cat", int(clean.size), n_unique=int(cats.size), values=cats, counts=counts.astype(np.int64)
        )
    try:
        clean = np.sort(clean_numeric(values))
    except (TypeError, ValueError):
        raise InvalidInput(f"column {name!r} is set to kind num but holds values that are not numbers") from None
    if clean.size == 0:
        return ColumnProfile(name, "num", 0)
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
        kinds: dict[str, str] | None = None,
    ) -> ReferenceProfile:
        """Profile every column of ``data`` (name -> 1-D array).

        ``kinds`` (column -> num, cat, text or datetime) overrides the inferred kind; ``categorical`` is a
        shorthand for kind cat.
        """
        if not data:
            raise InvalidInput("the reference has no columns")
        kinds = {**{name: "cat" for name in categorical}, **(kinds or {})}
        unknown = [name for name in kinds if name not in data]
        if unknown:
            raise InvalidInput(f"a kind is set for column {unknown[0]!r}, which the reference does not have")
        columns = {}
        for name, values in data.items():
            kind = kinds.get(name)
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
