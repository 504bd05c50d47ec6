"""Reading a topic's dead letters back (``mlscale stream dead-letters``): what was set aside, and why.

The processor appends each malformed or late record to ``<topic>-dead-letters`` as JSON with the
source position, the feature, the kind ("malformed", "late") and the reason. Reading uses ``fetch``
from the start of every partition, so it neither needs nor moves any consumer group.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from mlscale.streams.broker import Broker
from mlscale.streams.processor import dead_letter_topic


def dead_letters(broker: Broker, topic: str, batch: int = 10_000) -> Iterator[dict]:
    """Every dead letter of ``topic`` in log order (per partition of the dead-letter topic)."""
    name = dead_letter_topic(topic)
    positions = dict.fromkeys(range(broker.partitions), -1)
    while messages := broker.fetch(name, positions, batch):
        for m in messages:
            positions[m.partition] = m.offset
            try:
                yield msgspec.json.decode(m.value)
            except msgspec.DecodeError:
                yield {"kind": "unreadable", "reason": "not JSON", "record": m.value.decode("utf-8", "replace")}
