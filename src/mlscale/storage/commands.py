"""``mlscale storage ...``: operate the key-value stores (resharding, inspection)."""

from __future__ import annotations

from pathlib import Path

import click

from mlscale.errors import ConfigError
from mlscale.storage.base import KeyValue
from mlscale.storage.factory import open_url, parse_spec


@click.group()
def storage() -> None:
    """Key-value stores shared by the caches and the online feature store."""


def _open_layout(spec: str, timeout: float) -> dict[str, KeyValue]:
    return {name: open_url(url, root=Path.cwd(), timeout=timeout) for name, url in parse_spec(spec)}


@storage.command()
@click.option("--from", "source_spec", required=True, help="Current shards: comma-separated URLs (name=URL).")
@click.option("--to", "target_spec", required=True, help="New shards: comma-separated URLs (name=URL).")
@click.option("--replicas", default=1, show_default=True, help="Owners per key (the same in both layouts).")
@click.option("--vnodes", default=160, show_default=True, help="Ring points per shard (as in the store).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Progress file (default under .mlscale/).")
@click.option("--batch-size", default=500, show_default=True, help="Keys copied per round trip.")
@click.option("--max-rate", type=float, help="At most this many keys moved per second.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds each store call may take.")
@click.option("--restart", is_flag=True, help="Ignore a finished or partial checkpoint and scan everything again.")
def reshard(
    source_spec: str,
    target_spec: str,
    replicas: int,
    vnodes: int,
    checkpoint: Path | None,
    batch_size: int,
    max_rate: float | None,
    timeout: float,
    restart: bool,
) -> None:
    """Move exactly the keys whose owners change from one shard layout to another (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mlscale.storage.reshard import Checkpoint, Layout, default_checkpoint
    from mlscale.storage.reshard import reshard as run

    if replicas < 1 or vnodes < 1 or batch_size < 1:
        raise ConfigError("--replicas, --vnodes and --batch-size must be at least 1")
    source = Layout.of(_open_layout(source_spec, timeout), vnodes=vnodes, replicas=replicas)
    target = Layout.of(_open_layout(target_spec, timeout), vnodes=vnodes, replicas=replicas)
    path = checkpoint or default_checkpoint(source.ring.names, target.ring.names)
    if restart:
        path.unlink(missing_ok=True)
    elif Checkpoint.load(path, source.ring.names, target.ring.names).complete:
        click.echo(f"reshard already complete (checkpoint {path}); pass --restart to scan again")
        return
    columns = (
        TextColumn("[bold]reshard"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("moved {task.fields[moved]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("reshard", total=None, moved=0)
        moved = 0

        def advance(scanned: int, moved_now: int) -> None:
            nonlocal moved
            moved += moved_now
            progress.update(task, advance=scanned, moved=moved)

        state = run(
            source,
            target,
            path,
            batch_size=batch_size,
            max_rate=max_rate,
            on_total=lambda total: progress.update(task, total=total),
            on_progress=advance,
        )
    click.echo(f"reshard complete: {state.scanned} keys scanned, {state.moved} moved (checkpoint {path})")


@storage.command()
@click.option("--store", "spec", required=True, help="Comma-separated store URLs (name=URL), as in reshard.")
@click.option("--prefix", default="", help="Count only keys starting with this prefix.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds each store call may take.")
def info(spec: str, prefix: str, timeout: float) -> None:
    """Keys held by each shard of a store, and its share of the total (to check the balance)."""
    from rich.console import Console
    from rich.table import Table

    from mlscale.errors import ServiceUnavailable

    shards = _open_layout(spec, timeout)
    table = Table("shard", "keys", "share")
    counts: dict[str, int | None] = {}
    for name, store in shards.items():
        try:
            counts[name] = sum(1 for _ in store.scan(prefix.encode()))
        except ServiceUnavailable:
            counts[name] = None
    total = sum(c for c in counts.values() if c is not None)
    for name, count in counts.items():
        if count is None:
            table.add_row(name, "unreachable", "-")
        else:
            table.add_row(name, str(count), f"{count / total:.1%}" if total else "-")
    Console().print(table)
    if any(c is None for c in counts.values()):
        raise ServiceUnavailable(f"unreachable shards: {[n for n, c in counts.items() if c is None]}")
