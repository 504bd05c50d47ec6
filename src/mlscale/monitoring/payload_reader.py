"""Reads the current window of a model's payload log: the last N rows or the last T seconds.

Only complete (rolled or closed) files are read, from every process that writes the directory.
File names start with the model and the file's start time, so the newest files are found without
opening the others, and a count window stops reading once it has enough rows.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlscale.errors import InvalidInput

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_STAMP = re.compile(r"-(\d+)-\d+-\d+\.parquet$")


class PayloadReader:
    """Windows over ``<directory>/<model>/*.parquet`` written by :class:`PayloadLog`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def files(self, model: str) -> list[Path]:
        """The model's complete files, oldest first (by start time in the name)."""
        folder = self.directory / _UNSAFE.sub("_", model)
        found = []
        for path in folder.glob("*.parquet"):
            match = _STAMP.search(path.name)
            if match:
                found.append((int(match.group(1)), path.name, path))
        return [p for _, _, p in sorted(found)]

    def window(
        self,
        model: str,
        *,
        rows: int | None = None,
        seconds: float | None = None,
        columns: list[str] | None = None,
        now: float | None = None,
    ) -> pa.Table:
        """The last ``rows`` rows and/or the rows of the last ``seconds``, oldest first."""
        if rows is None and seconds is None:
            raise InvalidInput("a window needs rows or seconds")
        since = None if seconds is None else (time.time() if now is None else now) - seconds
        tables: list[pa.Table] = []
        total = 0
        for path in reversed(self.files(model)):
            table = pq.read_table(path, columns=None if columns is None else ["timestamp", *columns])
            if since is not None:
                table = table.filter(
                    pc.greater_equal(table["timestamp"], pa.scalar(int(since * 1e6), pa.timestamp("us", tz="UTC")))
                )
                if table.num_rows == 0 and int(_STAMP.search(path.name).group(1)) / 1000 < since:
                    break
            tables.append(table)
            total += table.num_rows
            if rows is not None and since is None and total >= rows:
                break
        if not tables:
            return pa.table({})
        table = pa.concat_tables(tables, promote_options="permissive")
        table = table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
        if rows is not None and table.num_rows > rows:
            table = table.slice(table.num_rows - rows)
        return table


def to_numpy_columns(
    table: pa.Table, drop: tuple[str, ...] = ("model", "version", "timestamp")
) -> dict[str, np.ndarray]:
    """The feature columns of a window as NumPy arrays (missing values become NaN / None)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names if name not in drop}
