"""Many records in one broker entry: the grouping and encoding the NATS and Redis brokers share.

Why: the client libraries cost tens of microseconds of Python per message or stream entry, on both
the write and the read side, while the processor's budget is a few microseconds per event. So an
entry (a JetStream message, a Redis stream entry) carries up to ``MAX_RECORDS`` records of one
partition as a msgpack array of byte strings, and a record's offset is its entry's position plus
its index in the entry.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import add

import msgspec

from mlscale.errors import InvalidInput

MAX_RECORDS = 2048  # records per entry; readers rely on it (an entry spans at most this many offsets)
MAX_BYTES = 256 * 1024  # payload bytes per entry
pack = msgspec.msgpack.Encoder().encode
unpack = msgspec.msgpack.Decoder(list[bytes]).decode


def group_records(
    payloads: list[bytes], partitions: list[int], limit: int, container: str
) -> list[tuple[int, list[int]]]:
    """Records grouped into entries: (partition, indexes into payloads), in order per partition.

    An entry holds at most ``MAX_RECORDS`` records and ``limit`` bytes (each record counted with its
    msgpack header); a record larger than that alone is refused (``container`` names what it would
    not fit, for the message). Sorting and cumulative sums keep the per-record work in C: this runs
    for every produced event."""
    n = len(payloads)
    order = sorted(range(n), key=partitions.__getitem__)  # stable: a partition's records keep their order
    keys = list(map(partitions.__getitem__, order))
    lengths = list(map(len, map(payloads.__getitem__, order)))
    if n and max(lengths) + 5 > limit:
        i = next(i for i in range(n) if len(payloads[i]) + 5 > limit)
        raise InvalidInput(f"record {i} is {len(payloads[i])} bytes; at most {limit - 5} fit {container}")
    # cum[k]: bytes of the first k records in ``order``, each with its 5-byte msgpack bin header
    cum = list(map(add, accumulate(lengths, initial=0), range(0, 5 * n + 1, 5)))
    out: list[tuple[int, list[int]]] = []
    k = 0
    while k < n:
        p = keys[k]
        end = min(k + MAX_RECORDS, bisect_right(keys, p, lo=k), bisect_right(cum, cum[k] + limit, lo=k) - 1)
        out.append((p, order[k:end]))
        k = end
    return out
