"""Move keys between shard layouts: only the keys whose owners changed, resumable after a crash.

Each source shard is scanned; a key is copied (value and remaining TTL) to all of its new owners and
only then deleted from the old shard if that shard no longer owns it. Copy-then-delete makes every step
idempotent, so a rerun after a crash redoes at most one batch; the checkpoint file (written
atomically after every batch) records finished shards and counts, so a rerun skips finished shards
and reports totals across runs.

Writes that arrive during a reshard should go to the new layout; keys written to the old layout
after their shard was scanned are not moved (run it again with ``--restart`` to catch them).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlscale.errors import ConfigError
from mlscale.storage.base import KeyValue
from mlscale.storage.hashring import HashRing


@dataclass
class Checkpoint:
    """Durable progress of one reshard (from-spec, to-spec)."""

    source: list[str]
    target: list[str]
    done: list[str] = field(default_factory=list)
    scanned: int = 0
    moved: int = 0
    complete: bool = False

    @classmethod
    def load(cls, path: Path, source: list[str], target: list[str]) -> Checkpoint:
        if not path.exists():
            return cls(source=source, target=target)
        try:
            state = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a reshard checkpoint ({exc})") from None
        if state.source != source or state.target != target:
            raise ConfigError(f"{path}: checkpoint of another reshard ({state.source} -> {state.target})")
        return state

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old or the new checkpoint, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(self), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def default_checkpoint(source: list[str], target: list[str]) -> Path:
    """A checkpoint path derived from the two specs, so a rerun with the same arguments finds it."""
    digest = hashlib.blake2b(json.dumps([source, target]).encode(), digest_size=8).hexdigest()
    return Path(".mlscale") / f"reshard-{digest}.json"


@dataclass
class Layout:
    """Named shards and the ring over them."""

    shards: dict[str, KeyValue]
    ring: HashRing

    @classmethod
    def of(cls, shards: dict[str, KeyValue], *, vnodes: int, replicas: int) -> Layout:
        return cls(shards, HashRing(shards, vnodes=vnodes, replicas=replicas))


def reshard(
    source: Layout,
    target: Layout,
    checkpoint_path: Path,
    *,
    batch_size: int = 500,
    max_rate: float | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Checkpoint:
    """Move keys from ``source`` to ``target``; returns the final checkpoint (counts across runs).

    ``on_total(keys)`` is told how many keys remain to scan; ``on_progress(scanned, moved)`` after
    each batch. ``max_rate`` (keys per second) throttles the copy to spare a production store.
    """
    state = Checkpoint.load(checkpoint_path, source.ring.names, target.ring.names)
    if state.complete:
        return state
    todo = [name for name in source.ring.names if name not in state.done]
    listed = {name: list(source.shards[name].scan()) for name in todo}
    if on_total is not None:
        on_total(sum(len(keys) for keys in listed.values()))
    started = time.monotonic()
    copied_this_run = 0
    for name in todo:
        shard = source.shards[name]
        keys = listed[name]
        for start in range(0, len(keys), batch_size):
            batch = keys[start : start + batch_size]
            old = source.ring.owner_indices(batch)
            new = target.ring.owner_indices(batch)
            moving = []
            still_owner = []
            for key, old_row, new_row in zip(batch, old, new, strict=True):
                old_names = {source.ring.names[i] for i in old_row}
                new_names = {target.ring.names[i] for i in new_row}
                if old_names != new_names or name not in new_names:
                    moving.append(key)
                    still_owner.append(name in new_names)
            if moving:
                moved = _move(shard, target, moving)
                stale = [k for k, keep in zip(moving, still_owner, strict=True) if not keep]
                shard.delete(stale)
                state.moved += moved
                copied_this_run += len(moving)
            state.scanned += len(batch)
            state.save(checkpoint_path)
            if on_progress is not None:
                on_progress(len(batch), len(moving))
            if max_rate:
                ahead = copied_this_run / max_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        state.done.append(name)
        state.save(checkpoint_path)
    state.complete = True
    state.save(checkpoint_path)
    return state


def _move(shard: KeyValue, target: Layout, keys: list[bytes]) -> int:
    """Copy ``keys`` (value and remaining TTL) from ``shard`` to every new owner; returns how many existed."""
    values = shard.get_many(keys)
    ttls = shard.ttl_many(keys)
    items = {k: (v, t) for k, v, t in zip(keys, values, ttls, strict=True) if v is not None}
    if not items:
        return 0
    present = list(items)
    owners = target.ring.owner_indices(present)
    per_shard: dict[int, dict[bytes, tuple[bytes, float | None]]] = {}
    for key, row in zip(present, owners, strict=True):
        for index in row:
            per_shard.setdefault(int(index), {})[key] = items[key]
    # Any failure raises before the source copy is deleted, so nothing is lost; a rerun resumes.
    for index, group in per_shard.items():
        target.shards[target.ring.names[index]].set_many_with_ttls(group)
    return len(items)
