"""``mlscale stream``: run the processor, produce events, backfill with DuckDB, show lag."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import click

from mlscale.config import load_settings
from mlscale.errors import ConfigError, InvalidInput

log = logging.getLogger("mlscale.streams")

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
    from mlscale.streams.checkpoint import open_checkpoints
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
        open_checkpoints(s.checkpoint or settings.resolve(s.checkpoint_dir) / "checkpoints.db", root=settings.root),
        group=s.group,
        consumer=consumer,
        batch_size=s.batch_size,
        checkpoint_interval=s.checkpoint_interval,
        flush_interval=s.flush_interval,
    )
    totals = {"processed": 0, "dead": 0, "written": 0, "duplicates": 0, "failed": 0}
    started = time.monotonic()
    last_lag = [0.0, {}]
    warned = [False]

    def failing() -> str | None:
        """A warning when most records went to the dead letters (a wrong event_time format, say)."""
        n, bad = totals["processed"], totals["failed"]
        if n == 0 or bad * 2 <= n:
            return None
        topics = ", ".join(proc.by_topic)
        return (
            f"WARNING: {bad} of {n} events ({bad / n:.0%}) were dead letters (malformed or late): "
            f"see `mlscale stream dead-letters {topics}`"
        )

    def table() -> Table:
        t = Table(title=f"mlscale stream run ({proc.consumer})", caption=failing(), caption_style="bold red")
        for col in ("topic", "partitions", "events", "events/s", "duplicates", "dead letters", "online writes", "lag"):
            t.add_column(col)
        rate = totals["processed"] / max(time.monotonic() - started, 1e-9)
        for topic in proc.by_topic:
            t.add_row(
                topic,
                str(sorted(proc.parts[topic])),
                str(totals["processed"]),
                f"{rate:,.0f}",
                str(totals["duplicates"]),
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
        totals["duplicates"] += res.duplicates
        totals["failed"] += res.failed
        if time.monotonic() - last_lag[0] >= 1.0:
            last_lag[0], last_lag[1] = time.monotonic(), proc.lag()
            if live is not None:
                live.update(table())
        warning = failing()
        if warning and not warned[0] and totals["processed"] >= 100:
            warned[0] = True
            log.warning(warning)

    live = None
    # Ctrl-C / SIGTERM stop the loop between batches, so the last checkpoint is a consistent one.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        if quiet:
            proc.run(stop=stopping.is_set, on_step=on_step, idle_exit=idle_exit)
            last_lag[1] = proc.lag()
        else:
            with Live(table(), console=console, refresh_per_second=2) as live:
                proc.run(stop=stopping.is_set, on_step=on_step, idle_exit=idle_exit)
                # The lag measured during the run predates the final checkpoint (the group's
                # offsets move only at checkpoints): measure again, as `mlscale stream lag` would now.
                last_lag[1] = proc.lag()
                live.update(table())
    finally:
        proc.close()
        broker.close()
        online.close()
    lags = ", ".join(f"{t}={n}" for t, n in last_lag[1].items())
    click.echo(
        f"processed {totals['processed']} events, {totals['dead']} dead letters, "
        f"{totals['duplicates']} duplicates dropped; lag {lags}",
        err=True,
    )
    warning = failing()
    if warning:
        if not warned[0]:
            log.warning(warning)
        click.echo(warning, err=True)
    if idle_exit is not None and totals["processed"] and totals["failed"] == totals["processed"]:
        click.echo(f"error: every one of the {totals['processed']} events failed; nothing was computed", err=True)
        sys.exit(1)


@stream.command()
@config_option
@click.argument("topic")
@click.argument("source", required=False, type=click.File("rb"))
@click.option("--demo", type=int, default=None, help="Append N generated order events instead.")
@click.option("--entities", type=int, default=1000, help="Distinct users in --demo events.")
def produce(config_path, topic, source, demo, entities) -> None:
    """Append events to TOPIC: JSON lines (any size, streamed) or a JSON array from SOURCE (or stdin),
    or --demo N."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from mlscale.streams.connect import broker_from_settings
    from mlscale.streams.ingest import check_topic
    from mlscale.streams.produce import CHUNK, ProduceError
    from mlscale.streams.produce import produce as produce_events

    broker = broker_from_settings(_settings(config_path))
    try:
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
            check_topic(topic)
            for start in range(0, len(events), CHUNK):  # any N: appended in chunks, as files are
                broker.append(topic, events[start : start + CHUNK])
            n = len(events)
        else:
            stream_in = source or sys.stdin.buffer
            try:
                size = os.fstat(stream_in.fileno()).st_size or None
            except (OSError, ValueError, AttributeError):
                size = None
            console = Console(stderr=True)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=not console.is_terminal,
                transient=True,
            ) as bar:
                task = bar.add_task(f"producing to {topic}", total=size)
                try:
                    n = produce_events(
                        broker, topic, stream_in, on_progress=lambda done: bar.update(task, completed=done)
                    )
                except ProduceError as exc:
                    raise InvalidInput(str(exc)) from None
    finally:
        broker.close()
    click.echo(f"appended {n} events to {topic}")


@stream.command()
@config_option
@click.option("--events", "events_path", required=True, help="Parquet events: a file, folder or glob.")
@click.option("--feature", "names", multiple=True, help="Only these features (default: all).")
@click.option("--online", is_flag=True, help="Also load the values into the online store.")
def backfill(config_path, events_path, names, online) -> None:
    """Compute [streams] features over historical events into the offline folder, with DuckDB or,
    when [features] offline_engine = "spark", with Spark on [features] spark_master."""
    from mlscale.features.online import OnlineTarget
    from mlscale.streams.batch import backfill as run_backfill

    settings = _settings(config_path)
    s = settings.streams
    features = [f for f in s.features if not names or f.name in names]
    unknown = set(names) - {f.name for f in s.features}
    if unknown:
        raise ConfigError(f"no such feature in [streams]: {', '.join(sorted(unknown))}")
    if not features:
        raise ConfigError("no [[streams.features]] in the configuration: nothing to backfill")
    spark = None
    if settings.features.offline_engine == "spark":
        from mlscale.features.spark import spark_session

        spark = spark_session(settings.features.spark_master, settings.features.spark_config)
    # Spark's executors open the online store themselves, from where it lives.
    target = OnlineTarget(s.online, str(settings.root)) if online else None
    store = target.open_kv() if target is not None and spark is None else None
    try:
        for f in features:
            out = run_backfill(
                f, events_path, settings.resolve(s.offline_dir), online=store or target, spark=spark
            )
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


def _feature(settings, name: str):
    for f in settings.streams.features:
        if f.name == name:
            return f
    known = ", ".join(f.name for f in settings.streams.features) or "none defined"
    raise ConfigError(f"no such feature in [streams]: {name} (known: {known})")


def _write_rows(rows: list[dict], out: str) -> None:
    """Rows to ``out``: .parquet (Arrow types from the values) or .jsonl (one object a line)."""
    path = Path(out)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix in (".jsonl", ".ndjson"):
        import msgspec

        enc = msgspec.json.Encoder()
        with path.open("wb") as fh:
            for row in rows:
                fh.write(enc.encode(row) + b"\n")
    else:
        raise InvalidInput(f"-o {out}: write .parquet or .jsonl")


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@stream.command("read")
@config_option
@click.argument("feature")
@click.option("--entity", default=None, help="Only this entity's windows.")
@click.option("-o", "--output", default=None, help="Write every row to out.parquet or out.jsonl instead.")
@click.option("--limit", type=int, default=50, show_default=True, help="Rows shown on screen.")
def read_feature(config_path, feature, entity, output, limit) -> None:
    """The windows of FEATURE the processor wrote to the online store: entity, window_start,
    window_end (epoch ms; shown as UTC times on screen) and every aggregation."""
    from rich.console import Console
    from rich.table import Table

    from mlscale.storage import open_store
    from mlscale.streams.online import window_rows

    settings = _settings(config_path)
    f = _feature(settings, feature)
    store = open_store(settings.streams.online, root=settings.root)
    try:
        rows = window_rows(store, f, entity)
    finally:
        store.close()
    if output:
        _write_rows(rows, output)
        click.echo(f"wrote {len(rows)} windows of {feature} to {output}")
        return
    if not rows:
        click.echo(f"no windows of {feature}" + (f" for entity {entity}" if entity else "") + " in the online store")
        return
    t = Table(title=f"{feature}: {len(rows)} windows")
    for col in rows[0]:
        t.add_column(col, justify="left" if col == f.entity_key else "right")
    for row in rows[:limit]:
        t.add_row(*(_iso(v) if k in ("window_start", "window_end") else str(v) for k, v in row.items()))
    Console(width=200).print(t)
    if len(rows) > limit:
        click.echo(f"... {len(rows) - limit} more rows (--limit, or -o out.parquet for all)")


@stream.command("dead-letters")
@config_option
@click.argument("topic")
@click.option("-o", "--output", default=None, help="Write every dead letter to out.jsonl or out.parquet instead.")
@click.option("--limit", type=int, default=50, show_default=True, help="Dead letters shown on screen.")
def dead_letters_cmd(config_path, topic, output, limit) -> None:
    """Records of TOPIC the processor set aside (malformed or late), with where they were and why."""
    from collections import Counter

    import msgspec
    from rich.console import Console
    from rich.table import Table

    from mlscale.streams.connect import broker_from_settings
    from mlscale.streams.dead_letters import dead_letters

    broker = broker_from_settings(_settings(config_path))
    try:
        letters = list(dead_letters(broker, topic))
    finally:
        broker.close()
    if output:
        _write_rows(letters, output)
        click.echo(f"wrote {len(letters)} dead letters of {topic} to {output}")
        return
    if not letters:
        click.echo(f"no dead letters for {topic}")
        return
    kinds = Counter(d.get("kind", "?") for d in letters)
    t = Table(title=f"{topic}: {len(letters)} dead letters (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")
    for col in ("partition", "offset", "feature", "kind", "reason", "record"):
        t.add_column(col, overflow="fold")
    for d in letters[:limit]:
        record = d.get("record")
        text = record if isinstance(record, str) else msgspec.json.encode(record).decode()
        t.add_row(
            str(d.get("partition", "")),
            str(d.get("offset", "")),
            str(d.get("feature", "")),
            str(d.get("kind", "")),
            str(d.get("reason", ""))[:200],
            text[:200],
        )
    Console(width=200).print(t)
    if len(letters) > limit:
        click.echo(f"... {len(letters) - limit} more (--limit, or -o out.jsonl for all)")
