"""Reading a user's data file (Parquet or CSV) into Arrow, with one clear error when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlscale.errors import InvalidInput


def read_table(path: str | Path) -> pa.Table:
    """A Parquet (``.parquet``/``.pq``) or CSV file as an Arrow table; anything else is InvalidInput."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.ParquetFile(path).read()  # not pq.read_table: that imports pyarrow.dataset
        elif suffix in (".csv", ".txt"):
            table = pacsv.read_csv(path)
        else:
            raise InvalidInput(f"{path}: unknown format {suffix or '(none)'}; use .parquet or .csv")
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{path}: cannot read as {suffix[1:]}: {first}") from None
    if table.num_rows == 0 or table.num_columns == 0:
        raise InvalidInput(f"{path}: has no rows")
    return table
