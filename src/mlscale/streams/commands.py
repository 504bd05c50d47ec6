"""``mlscale stream``: run the processor, produce events, backfill with DuckDB, show lag."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from pathlib import Path

import click

from mlscale.config import load_settings
from mlscale.errors import ConfigError, InvalidInput

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Project file (mlscale.toml); without it, embedded defaults in the working folder.",
)


def _settings(config_path):
    settings = load_settings(
        config_path if config_path else ("mlscale.toml" if Path("mlscale.toml").exists() else None)
    )
    return settings


@click.group()
def stream() -> None:
    """Event streams: windowed features computed into the online store, exactly-once."""


@stream.command()
@config_option
@click.option("--consumer", default=None, help="Name of this instance in the consumer group.")
@click.option("--idle-exit", type=float, default=None, help="Stop after this many seconds without events.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option("--quiet", is_flag=True, help="No live progress display.")
def run(config_path, consumer, idle_exit, metrics_port, quiet) -> None:
    """Run the stream processor for the features in [streams] until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from mlscale.storage import open_store
    from mlscale.streams.connect import broker_from_settings
    from mlscale.streams.processor import StreamProcessor

    settings = _settings(config_path)
    s = settings.streams
    if not s.features:
        raise ConfigError("no [[streams.features]] in the configuration: nothing to compute")
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    broker = broker_from_settings(settings)
    online = open_store(s.online, root=settings.root)
    proc = StreamProcessor(
        broker,
        s.features,
        online,
        settings.resolve(s.checkpoint_dir) / "checkpoints.db",
        group=s.group,
        consumer=consumer,
        batch_size=s.batch_size,
        checkpoint_interval=s.checkpoint_interval,
        flush_interval=s.flush_interval,
    )
    totals = {"processed": 0, "dead": 0, "written": 0}
    started = time.monotonic()
    last_lag = [0.0, {}]

    def table() -> Table:
        t = Table(title=f"mlscale stream run ({proc.consumer})")
        for col in ("topic", "partitions", "events", "events/s", "dead letters", "online writes", "lag"):
            t.add_column(col)
        rate = totals["processed"] / max(time.monotonic() - started, 1e-9)
        for topic in proc.by_topic:
            t.add_row(
                topic,
                str(sorted(proc.parts[topic])),
                str(totals["processed"]),
                f"{rate:,.0f}",
                str(totals["dead"]),
                str(totals["written"]),
                str(last_lag[1].get(topic, "?")),
            )
        return t

    console = Console(stderr=True)

    def on_step(res) -> None:
        totals["processed"] += res.processed
        totals["dead"] += res.dead_letters
        totals["written"] += res.written
        if time.monotonic() - last_lag[0] >= 1.0:
            last_lag[0], last_lag[1] = time.monotonic(), proc.lag()
            if live is not None:
                live.update(table())

    live = None
    # Ctrl-C / SIGTERM stop the loop between batches, so the last checkpoint is a consistent one.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        if quiet:
            proc.run(stop=stopping.is_set, on_step=on_step, idle_exit=idle_exit)
        else:
            with Live(table(), console=console, refresh_per_second=2) as live:
                proc.run(stop=stopping.is_set, on_step=on_step, idle_exit=idle_exit)
                live.update(table())
    finally:
        proc.close()
        broker.close()
        online.close()
    click.echo(f"processed {totals['processed']} events, {totals['dead']} dead letters", err=True)


@stream.command()
@config_option
@click.argument("topic")
@click.argument("source", required=False, type=click.File("rb"))
@click.option("--demo", type=int, default=None, help="Append N generated order events instead.")
@click.option("--entities", type=int, default=1000, help="Distinct users in --demo events.")
def produce(config_path, topic, source, demo, entities) -> None:
    """Append events to TOPIC: a JSON array or JSON lines from SOURCE (or stdin), or --demo N."""
    import msgspec

    from mlscale.streams.connect import broker_from_settings
    from mlscale.streams.ingest import ingest_events

    if demo is not None:
        now = time.time()
        events = [
            {
                "user": f"u{random.randrange(entities)}",
                "ts": now - random.random() * 5,
                "amount": round(random.random() * 100, 2),
                "item": f"i{random.randrange(50)}",
            }
            for _ in range(demo)
        ]
    else:
        raw = (source or sys.stdin.buffer).read().strip()
        if raw.startswith(b"[") or raw.startswith(b'{"events"'):
            events = raw
        else:
            try:
                events = [msgspec.json.decode(line) for line in raw.splitlines() if line.strip()]
            except msgspec.DecodeError as exc:
                raise InvalidInput(f"input is neither a JSON array nor JSON lines: {exc}") from None
    broker = broker_from_settings(_settings(config_path))
    try:
        result = ingest_events(broker, topic, events)
    finally:
        broker.close()
    click.echo(f"appended {result['accepted']} events to {topic}")


@stream.command()
@config_option
@click.option("--events", "events_path", required=True, help="Parquet events: a file, folder or glob.")
@click.option("--feature", "names", multiple=True, help="Only these features (default: all).")
@click.option("--online", is_flag=True, help="Also load the values into the online store.")
def backfill(config_path, events_path, names, online) -> None:
    """Compute [streams] features over historical events with DuckDB into the offline folder."""
    from mlscale.storage import open_store
    from mlscale.streams.batch import backfill as run_backfill

    settings = _settings(config_path)
    s = settings.streams
    features = [f for f in s.features if not names or f.name in names]
    unknown = set(names) - {f.name for f in s.features}
    if unknown:
        raise ConfigError(f"no such feature in [streams]: {', '.join(sorted(unknown))}")
    if not features:
        raise ConfigError("no [[streams.features]] in the configuration: nothing to backfill")
    store = open_store(s.online, root=settings.root) if online else None
    try:
        for f in features:
            out = run_backfill(f, events_path, settings.resolve(s.offline_dir), online=store)
            click.echo(f"{f.name}: {out}")
    finally:
        if store is not None:
            store.close()


@stream.command()
@config_option
@click.argument("topic")
@click.option("--out", "out_dir", default=None, help="Folder (default: <offline_dir>/events).")
def archive(config_path, topic, out_dir) -> None:
    """Copy TOPIC's new records to Parquet files (the offline events that backfill reads)."""
    from mlscale.streams.archive import archive_topic
    from mlscale.streams.connect import broker_from_settings

    settings = _settings(config_path)
    folder = Path(out_dir) if out_dir else settings.resolve(settings.streams.offline_dir) / "events"
    broker = broker_from_settings(settings)
    try:
        n = archive_topic(broker, topic, folder)
    finally:
        broker.close()
    click.echo(f"archived {n} records of {topic} to {folder / topic}")


@stream.command()
@config_option
@click.argument("topics", nargs=-1)
def lag(config_path, topics) -> None:
    """Records not yet processed by the group, per topic (all feature sources by default)."""
    from mlscale.streams.connect import broker_from_settings

    settings = _settings(config_path)
    topics = topics or sorted({f.source for f in settings.streams.features})
    if not topics:
        raise ConfigError("name a topic, or define [[streams.features]]")
    broker = broker_from_settings(settings)
    try:
        for t in topics:
            click.echo(f"{t}\t{broker.lag(t, settings.streams.group)}")
    finally:
        broker.close()
