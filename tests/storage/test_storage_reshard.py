"""`mlscale storage reshard` moves exactly the keys whose owner changed, and resumes after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlscale.storage import HashRing
from mlscale.storage.reshard import Layout, reshard
from mlscale.storage.sharded import ShardedKeyValue
from mlscale.storage.sqlite import SQLiteKeyValue

CLI = [sys.executable, "-c", "from mlscale.cli import main; main()"]


def sqlite_spec(folder: Path, names: list[str]) -> str:
    return ",".join(f"{n}=sqlite:///{folder / n}.db" for n in names)


def shards_of(folder: Path, names: list[str]) -> dict[str, SQLiteKeyValue]:
    return {n: SQLiteKeyValue(folder / f"{n}.db") for n in names}


def test_reshard_moves_exactly_the_keys_whose_owner_changed(tmp_path: Path) -> None:
    old, new = ["a", "b", "c"], ["a", "b", "c", "d"]
    source = ShardedKeyValue(shards_of(tmp_path, old))
    items = {f"k{i}".encode(): f"v{i}".encode() for i in range(3000)}
    source.set_many(items, ttl=600)
    expected = sum(
        a != b for a, b in zip(HashRing(old).primaries(list(items)), HashRing(new).primaries(list(items)), strict=True)
    )
    state = reshard(
        Layout.of(shards_of(tmp_path, old), vnodes=160, replicas=1),
        Layout.of(shards_of(tmp_path, new), vnodes=160, replicas=1),
        tmp_path / "ckpt.json",
        batch_size=200,
    )
    assert state.complete and state.moved == expected and 0 < expected < 3000
    target = ShardedKeyValue(shards_of(tmp_path, new))
    assert target.get_many(list(items)) == list(items.values())
    assert all(580 < t <= 600 for t in target.ttl_many(list(items)[:50]))
    # No key is left behind on a shard that no longer owns it.
    for name, shard in shards_of(tmp_path, new).items():
        assert all(target.ring.owners(k) == [name] for k in shard.scan())


def test_reshard_resumes_after_being_killed_midway(tmp_path: Path) -> None:
    old, new = ["a", "b", "c"], ["b", "c", "d", "e"]  # one shard removed, two added
    items = {f"key-{i}".encode(): os.urandom(16) for i in range(6000)}
    ShardedKeyValue(shards_of(tmp_path, old)).set_many(items)
    checkpoint = tmp_path / "reshard.json"
    args = ["storage", "reshard", "--from", sqlite_spec(tmp_path, old), "--to", sqlite_spec(tmp_path, new)]
    args += ["--checkpoint", str(checkpoint), "--batch-size", "100"]
    proc = subprocess.Popen([*CLI, *args, "--max-rate", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    progress = {}
    while time.monotonic() < deadline:
        if checkpoint.exists():
            progress = json.loads(checkpoint.read_text())
            if progress["moved"] > 300:
                break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not progress["complete"], "the reshard finished before it could be killed; slow it down"

    rerun = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert "reshard complete" in rerun.stdout
    state = json.loads(checkpoint.read_text())
    assert state["complete"] and state["done"] == ["a", "b", "c"]
    target = ShardedKeyValue(shards_of(tmp_path, new))
    assert target.get_many(list(items)) == list(items.values())
    assert list(SQLiteKeyValue(tmp_path / "a.db").scan()) == []
    assert sum(len(list(s.scan())) for s in shards_of(tmp_path, new).values()) == len(items)
    again = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_reshard_with_a_foreign_checkpoint_or_bad_options_exits_with_one_line(tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.json"
    checkpoint.write_text(json.dumps({"source": ["x"], "target": ["y"]}))
    spec = sqlite_spec(tmp_path, ["a"])
    run = subprocess.run(
        [*CLI, "storage", "reshard", "--from", spec, "--to", spec, "--checkpoint", str(checkpoint)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "checkpoint of another reshard" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = subprocess.run(
        [*CLI, "storage", "reshard", "--from", "ftp://x", "--to", spec], capture_output=True, text=True
    )
    assert run.returncode == 2 and "scheme must be one of" in run.stderr


def test_storage_info_counts_keys_per_shard_and_names_dead_ones(tmp_path: Path, start_redis) -> None:
    names = ["a", "b"]
    ShardedKeyValue(shards_of(tmp_path, names)).set_many({f"k{i}".encode(): b"v" for i in range(400)})
    run = subprocess.run(
        [*CLI, "storage", "info", "--store", sqlite_spec(tmp_path, names)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    counts = {
        line.split()[1]: int(line.split()[3]) for line in run.stdout.splitlines() if line.split()[1:2] in (["a"], ["b"])
    }
    assert sum(counts.values()) == 400 and min(counts.values()) > 100
    dead = start_redis()
    dead.stop()
    spec = sqlite_spec(tmp_path, names) + f",c={dead.url}"
    run = subprocess.run([*CLI, "storage", "info", "--store", spec, "--timeout", "0.5"], capture_output=True, text=True)
    assert run.returncode == 2 and "unreachable shards: ['c']" in run.stderr
