"""Reference profiles of tables too long for memory: a Parquet file read in batches of rows.

``ReferenceProfile.fit`` sorts whole columns; ``profile_parquet`` gives the same profile while
holding, per column, at most about ``max_sample`` numbers, whatever the row count:

- numeric: count, mean and variance merged batch by batch (Chan et al.'s parallel update), minimum
  and maximum, exact value counts while a column has at most ``MAX_VALUE_COUNTS`` distinct values,
  and the sorted sample. While a column has at most ``max_sample`` values they are all kept and the
  profile is exactly ``profile_column``'s; past that a KLL quantile sketch (Karnin, Lang and
  Liberty, 2016) takes over, whose rank error shrinks as 1/k with k = ``max_sample`` and whose
  size stays under 3k values; the profile's sample is then ``max_sample`` mid-point quantiles of
  the sketch (``exact`` False, as for ``fit`` on a long column). ``n_unique`` of a column with
  many distinct values is a lower bound (``MAX_VALUE_COUNTS`` + 1), all the tests use it for.
- categorical: exact value counts (memory grows with the number of categories, not rows).
- text and datetime: counts.

Memory, independent of the row count: the row group being read (Parquet's unit of reading; PyArrow
decodes one at a time) and one batch of ``batch_rows`` rows as NumPy arrays, plus per numeric column
at most about 3 x ``max_sample`` float64s (24 x ``max_sample`` bytes: 2.4 MB at the default 100,000)
and per categorical column its distinct labels.
Kinds not given are inferred from the first batch (as ``infer_kind`` does on a whole column),
so a column whose first rows are unlike the rest can be given its kind with ``kinds``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mlscale.errors import InvalidInput
from mlscale.monitoring.drift.profile import (
    DEFAULT_MAX_SAMPLE,
    KINDS,
    MAX_VALUE_COUNTS,
    ColumnProfile,
    ReferenceProfile,
    clean_categorical,
    clean_numeric,
    infer_kind,
    profile_column,
)

DEFAULT_BATCH_ROWS = 65_536


class QuantileSketch:
    """A KLL sketch of float64 values: levels of sorted buffers; an item at level h weighs 2**h.

    A level over its capacity is sorted and halved (every other item, from a random offset) into
    the level above, so memory stays under about 3k items; capacities shrink by 2/3 per level down
    from the top one, which is what bounds the total.
    """

    def __init__(self, k: int, seed: int = 0) -> None:
        self.k = max(8, int(k))
        self.levels: list[np.ndarray] = [np.empty(0)]
        self.rng = np.random.default_rng(seed)

    def _capacity(self, level: int) -> int:
        depth = len(self.levels) - 1 - level
        return max(2, math.ceil(self.k * (2 / 3) ** depth))

    def add(self, values: np.ndarray) -> None:
        self.levels[0] = np.concatenate((self.levels[0], np.asarray(values, dtype=np.float64)))
        # Each compaction removes items, so this ends; a new top level lowers the capacities
        # below it, hence the scan from the bottom each time.
        while True:
            over = next((h for h in range(len(self.levels)) if self.levels[h].size > self._capacity(h)), None)
            if over is None:
                return
            self._compact(over)

    def _compact(self, level: int) -> None:
        items = np.sort(self.levels[level])
        kept = items[-1:] if items.size % 2 else items[:0]  # the odd one out stays where it is
        items = items[: items.size - kept.size]
        if level + 1 == len(self.levels):
            self.levels.append(np.empty(0))
        self.levels[level] = kept
        promoted = items[int(self.rng.integers(2)) :: 2]
        self.levels[level + 1] = np.concatenate((self.levels[level + 1], promoted))

    @property
    def size(self) -> int:
        return sum(level.size for level in self.levels)

    def quantiles(self, size: int) -> np.ndarray:
        """``size`` mid-point quantiles (as ``_quantile_sketch`` takes of a sorted column)."""
        items = np.concatenate(self.levels)
        weights = np.concatenate([np.full(level.size, 2.0**h) for h, level in enumerate(self.levels)])
        order = np.argsort(items, kind="stable")
        items, weights = items[order], weights[order]
        upper = np.cumsum(weights)
        positions = (np.arange(size) + 0.5) / size * upper[-1]
        return items[np.minimum(np.searchsorted(upper, positions, side="right"), items.size - 1)]


class _Numeric:
    def __init__(self, max_sample: int | None) -> None:
        self.max_sample = max_sample
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.distinct: tuple[np.ndarray, np.ndarray] | None = (np.empty(0), np.empty(0, np.int64))
        self.kept: list[np.ndarray] | None = []
        self.sketch: QuantileSketch | None = None

    def add(self, raw: np.ndarray, name: str) -> None:
        try:
            clean = clean_numeric(raw)
        except (TypeError, ValueError):
            raise InvalidInput(f"column {name!r} is set to kind num but holds values that are not numbers") from None
        n = clean.size
        if not n:
            return
        mean = float(clean.mean())
        m2 = float(((clean - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, float(clean.min()))
        self.maximum = max(self.maximum, float(clean.max()))
        if self.distinct is not None:
            values, counts = np.unique(clean, return_counts=True)
            merged = np.concatenate((self.distinct[0], values))
            weights = np.concatenate((self.distinct[1], counts))
            values, inverse = np.unique(merged, return_inverse=True)
            many = values.size > MAX_VALUE_COUNTS
            self.distinct = None if many else (values, np.bincount(inverse, weights).astype(np.int64))
        if self.kept is not None:
            self.kept.append(clean)
            if self.max_sample is not None and self.count > self.max_sample:
                self.sketch = QuantileSketch(self.max_sample)
                for part in self.kept:
                    self.sketch.add(part)
                self.kept = None
        else:
            assert self.sketch is not None
            self.sketch.add(clean)

    def profile(self, name: str) -> ColumnProfile:
        if self.kept is not None:  # every value kept: exactly what fit() computes
            values = np.concatenate(self.kept) if self.kept else np.empty(0)
            return profile_column(name, values, "num", self.max_sample)
        assert self.sketch is not None and self.max_sample is not None
        values = counts = None
        n_unique = MAX_VALUE_COUNTS + 1
        if self.distinct is not None:
            values, counts = self.distinct
            n_unique = int(values.size)
        return ColumnProfile(
            name,
            "num",
            self.count,
            std=math.sqrt(self.m2 / self.count),
            mean=self.mean,
            minimum=self.minimum,
            maximum=self.maximum,
            sample=self.sketch.quantiles(self.max_sample),
            exact=False,
            n_unique=n_unique,
            values=values,
            counts=counts,
        )


class _Categorical:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, raw: np.ndarray, name: str) -> None:
        labels, counts = np.unique(clean_categorical(raw), return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            self.counts[label] = self.counts.get(label, 0) + count

    def profile(self, name: str) -> ColumnProfile:
        cats = np.array(sorted(self.counts), dtype=str)
        counts = np.array([self.counts[c] for c in cats.tolist()], dtype=np.int64)
        return ColumnProfile(name, "cat", int(counts.sum()), n_unique=int(cats.size), values=cats, counts=counts)


class _Counted:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0

    def add(self, raw: np.ndarray, name: str) -> None:
        self.count += int(raw.size)

    def profile(self, name: str) -> ColumnProfile:
        return ColumnProfile(name, self.kind, self.count)


def profile_parquet(
    path: str | Path,
    categorical: list[str] | tuple[str, ...] = (),
    max_sample: int | None = DEFAULT_MAX_SAMPLE,
    kinds: dict[str, str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ReferenceProfile:
    """The reference profile of a Parquet file, read ``batch_rows`` rows at a time (see the module)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlscale.monitoring.drift.arrow_columns import column_to_numpy

    if max_sample is None:
        raise InvalidInput("a profile read in batches needs max_sample (keeping every value is what fit() does)")
    path = Path(path)
    try:
        # pre_buffer off: with it (pyarrow's default) iter_batches buffers the whole file's column
        # chunks, so memory grew with the rows (4.9 GiB peak for 10M rows x 50 columns, 2026-12-01).
        reader = pq.ParquetFile(path, pre_buffer=False)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInput(f"{path}: cannot read as parquet: {str(exc).splitlines()[0]}") from None
    names = reader.schema_arrow.names
    if not names or reader.metadata.num_rows == 0:
        raise InvalidInput(f"{path}: has no rows")
    kinds = {**{name: "cat" for name in categorical}, **(kinds or {})}
    unknown = [name for name in kinds if name not in names]
    if unknown:
        raise InvalidInput(f"a kind is set for column {unknown[0]!r}, which the reference does not have")
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise InvalidInput(f"column {name!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    accumulators: dict[str, _Numeric | _Categorical | _Counted] = {}
    for batch in reader.iter_batches(batch_size=max(1, batch_rows)):
        for name in names:
            values = column_to_numpy(batch.column(name))
            if name not in accumulators:
                kind = kinds.get(name) or infer_kind(values)
                accumulators[name] = (
                    _Numeric(max_sample) if kind == "num" else _Categorical() if kind == "cat" else _Counted(kind)
                )
            accumulators[name].add(values, name)
    return ReferenceProfile({name: accumulators[name].profile(name) for name in names})
