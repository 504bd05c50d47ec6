"""Materialization on Spark: each executor writes its own partitions of the newest rows to the
online store, in chunks, with the same conditional write as the DuckDB engine.

The rows never pass through the driver. ``mapInArrow`` hands each task its partition as Arrow
batches (no per-row Python objects, unlike ``foreachPartition`` over Rows); the task packs them
with the same ``pack_batch`` as DuckDB's path, opens the online store from its ``OnlineTarget``
(a URL and the project folder, which pickle; an open connection does not), writes with
``set_many_if_newer`` and returns one row: how many rows it wrote. A task Spark retries writes
the same records again, which the conditional write makes harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from mlscale.features.definitions import FeatureRepo
from mlscale.features.online import OnlineTarget


def write_latest(latest: Any, repo: FeatureRepo, view_name: str, target: OnlineTarget, chunk_rows: int) -> int:
    """Write the Spark DataFrame ``latest`` (join keys, ``__mlscale_ts`` µs, features) of one view
    from the executors; the number of rows written."""
    writer = PartitionWriter(repo.to_specs(), view_name, target, chunk_rows)
    counts = latest.mapInArrow(writer, "written long").collect()
    return int(sum(row.written for row in counts))


class PartitionWriter:
    """The function each task runs over its partition (pickled to the executors)."""

    def __init__(self, specs: list, view_name: str, target: OnlineTarget, chunk_rows: int) -> None:
        self.specs = specs
        self.view_name = view_name
        self.target = target
        self.chunk_rows = max(1, chunk_rows)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from mlscale.features.materialize import pack_batch
        from mlscale.features.online import OnlineStore

        repo = FeatureRepo.from_specs(self.specs)
        view = repo.views[self.view_name]
        online = OnlineStore(self.target.open_kv(), repo, target=self.target)
        written = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = 0

        def flush() -> int:
            table = pa.Table.from_batches(pending).combine_chunks()
            for batch in table.to_batches():
                keys, records, tails = pack_batch(repo, view, batch)
                online.write(self.view_name, keys, records, tails)
            return table.num_rows

        try:
            for batch in batches:
                if not batch.num_rows:
                    continue
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= self.chunk_rows:
                    written += flush()
                    pending, pending_rows = [], 0
            if pending:
                written += flush()
        finally:
            online.kv.close()
        yield pa.RecordBatch.from_pydict({"written": pa.array([written], pa.int64())})
