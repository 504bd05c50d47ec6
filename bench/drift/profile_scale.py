"""Reference profile of a table too long for memory: time and peak RSS of `profile_parquet` by rows.

Writes a Parquet file of ROWS x COLUMNS (float64 columns, a few integer and string ones) one row
group at a time, so the writer never holds the table, then profiles it in a fresh process per size
(peak RSS from getrusage, which only grows, so one process per measurement) with `--batch-rows`
reading. The claim to check: peak RSS stays flat as rows grow, near one row group + one batch +
24 x max_sample bytes per numeric column.

Run: `.venv/bin/python bench/drift/profile_scale.py --rows 1000000 10000000 --columns 1000`
(the file takes rows x columns x 8 bytes of disk before compression: size --columns to the disk), or
`--quick` for a tiny check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GROUP_ROWS = 100_000


def write_table(path: Path, rows: int, columns: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    writer = None
    done = 0
    while done < rows:
        n = min(GROUP_ROWS, rows - done)
        data = {f"x{j}": rng.normal(j % 7, 1 + j % 3, n) for j in range(columns - 2)}
        data["count"] = rng.poisson(3, n)
        data["city"] = rng.choice(["ams", "ber", "par", "rom", "mad"], n)
        table = pa.table(data)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=GROUP_ROWS)
        done += n
    assert writer is not None
    writer.close()


def measure(path: Path, max_sample: int, batch_rows: int) -> dict:
    """Profile in a child process: seconds and peak RSS (MiB)."""
    code = (
        "import json, resource, sys, time\n"
        "from mlscale.monitoring.drift.streaming import profile_parquet\n"
        "t = time.perf_counter()\n"
        f"p = profile_parquet(sys.argv[1], max_sample={max_sample}, batch_rows={batch_rows})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'columns': len(p.columns),"
        " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--columns", type=int, default=1_000)
    parser.add_argument("--max-sample", type=int, default=10_000)
    parser.add_argument("--batch-rows", type=int, default=16_384)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, no figures")
    args = parser.parse_args()
    sizes, columns = ([20_000, 60_000], 12) if args.quick else (args.rows, args.columns)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlscale-bench-profile-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"ref-{rows}.parquet"
            t = time.perf_counter()
            write_table(path, rows, columns)
            written = time.perf_counter() - t
            result = {
                "rows": rows,
                "columns": columns,
                "write_s": written,
                **measure(path, args.max_sample, args.batch_rows),
            }
            results.append(result)
            print(json.dumps(result), flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
