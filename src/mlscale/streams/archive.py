"""Archive a topic to Parquet: the offline copy of the events that backfills and training sets read.

Exactly-once without a transaction spanning broker and files: each file is named by its partition and
offset range (``p3-000000001200-000000001399.parquet``), written whole to a temporary name and renamed,
then the group's offset is committed. A crash before the commit rewrites the same file on the next run.
Records that are not JSON objects are skipped here (the processor's dead-letter topic reports them).
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from mlscale.streams.broker import Broker


def archive_topic(
    broker: Broker, topic: str, folder: str | Path, group: str = "mlscale-archiver", batch_size: int = 100_000
) -> int:
    """Append every record after the group's committed offsets as Parquet files; returns records written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(folder) / topic
    out_dir.mkdir(parents=True, exist_ok=True)
    committed = broker.committed(topic, group)
    positions = {p: committed.get(p, -1) for p in range(broker.partitions)}
    written = 0
    while True:
        batches = broker.fetch_columns(topic, positions, batch_size)
        if not batches:
            return written
        for p, offsets, values in batches:
            rows = []
            for off, raw in zip(offsets, values, strict=True):
                try:
                    event = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, dict):
                    rows.append({**event, "_partition": p, "_offset": off})
            if rows:
                name = out_dir / f"p{p}-{offsets[0]:012d}-{offsets[-1]:012d}.parquet"
                tmp = name.with_suffix(".tmp")
                pq.write_table(pa.Table.from_pylist(rows), tmp)
                os.replace(tmp, name)
                written += len(rows)
            positions[p] = offsets[-1]
            broker.commit(topic, group, {p: offsets[-1]})
