"""Tables shaped like real feature tables, for the drift tests (written apart from the detector).

Low-cardinality integer counts, 0/1 flags, booleans, strings with 5 and 30 categories (a category new
in current), 10% nulls, constants of each type, and a column that is all null in current.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMPTY_IN_CURRENT = "gone"


def _with_nulls(rng: np.random.Generator, values: np.ndarray, share: float = 0.1) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < share)


def feature_table(rows: int, rng: np.random.Generator, drift: bool) -> pa.Table:
    """One table; ``drift`` shifts some columns, adds a category and empties one column."""
    s = 1 if drift else 0
    products = [f"p{i:02d}" for i in range(30)]
    weights = np.linspace(1, 3, 30)
    return pa.table(
        {
            "visits_few": rng.poisson(2 + 0.6 * s, rows).clip(0, 7).astype(np.int64),
            "flag": (rng.random(rows) < 0.3 + 0.1 * s).astype(np.int64),
            "active": rng.random(rows) < 0.5,
            "city": rng.choice(["ams", "ber", "par", "rom", "mad"], rows),
            "product": rng.choice([*products, "p_new"], rows)
            if drift
            else rng.choice(products, rows, p=weights / weights.sum()),
            "amount": _with_nulls(rng, rng.normal(100 + 8 * s, 20, rows)),
            "age": _with_nulls(rng, rng.integers(18, 80, rows)),
            "visits": rng.integers(0, 60 + 10 * s, rows),
            "rating": rng.integers(1, 6, rows).astype(float),
            "const_num": np.full(rows, 1.5),
            "const_int": np.full(rows, 3, dtype=np.int64),
            "const_str": np.full(rows, "x"),
            EMPTY_IN_CURRENT: pa.nulls(rows, pa.float64()) if drift else pa.array(rng.normal(0, 1, rows)),
        }
    )


def write_pair(folder: Path, rows: int, seed: int = 7) -> tuple[Path, Path]:
    """Reference (``rows``) and current (3/4 as many, drifted) Parquet files."""
    rng = np.random.default_rng(seed)
    ref, cur = folder / f"ref-{rows}.parquet", folder / f"cur-{rows}.parquet"
    pq.write_table(feature_table(rows, rng, False), ref)
    pq.write_table(feature_table(rows * 3 // 4, rng, True), cur)
    return ref, cur
