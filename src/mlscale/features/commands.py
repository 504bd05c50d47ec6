"""``mlscale features ...``: apply, list, describe, materialize, training-set, get."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from mlscale.errors import ConfigError, InvalidInput

_CONFIG = click.option(
    "-c",
    "--config",
    "config",
    default="mlscale.toml",
    show_default=True,
    help="Project file (missing: embedded defaults in the current folder).",
)


def _store(config: str):
    from mlscale.config import load_settings
    from mlscale.features.store import FeatureStore

    path = Path(config)
    settings = load_settings(path if path.exists() or config != "mlscale.toml" else None)
    return FeatureStore(settings)


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an ISO date or time (e.g. 2024-05-01T12:00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@click.group()
def features() -> None:
    """Feature store: definitions, training sets, materialization, online reads."""


@features.command()
@_CONFIG
def apply(config: str) -> None:
    """Validate the definitions against their sources and store them in the registry."""
    with _store(config) as store:
        result = store.apply()
        for label, names in (("added", result.added), ("updated", result.updated), ("removed", result.removed)):
            for name in names:
                click.echo(f"{label:8} {name}")
        click.echo(
            f"registry {store.registry.target}: {len(store.repo.views)} views, "
            f"{len(store.repo.entities)} entities, {len(store.repo.services)} services"
        )


@features.command("list")
@_CONFIG
def list_(config: str) -> None:
    """List applied entities, feature views and feature services."""
    with _store(config) as store:
        repo = store.repo
        for name, entity in sorted(repo.entities.items()):
            click.echo(f"entity   {name} (join key {entity.join_key}, {entity.dtype})")
        for name, view in sorted(repo.views.items()):
            watermark = store.registry.watermark(name)
            click.echo(
                f"view     {name} [{', '.join(view.entities)}] {len(view.features)} features, ttl {view.ttl:g}s, "
                f"materialized to {watermark.isoformat() if watermark else 'never'}"
            )
        for name, service in sorted(repo.services.items()):
            click.echo(f"service  {name}: {', '.join(service.features)}")


@features.command()
@click.argument("name")
@_CONFIG
def describe(name: str, config: str) -> None:
    """Show one entity, feature view or feature service as JSON."""
    with _store(config) as store:
        info = store.repo.describe(name)
        if info["kind"] == "feature view":
            watermark = store.registry.watermark(name)
            info["materialized_until"] = watermark.isoformat() if watermark else None
        click.echo(json.dumps(info, indent=2))


@features.command("materialize")
@click.option("--start", help="Start of the window (exclusive), ISO time, UTC if no zone.")
@click.option("--end", help="End of the window (inclusive); default now.")
@click.option("--incremental", is_flag=True, help="Start each view from its last watermark.")
@click.option("--view", "views", multiple=True, help="Only these views (repeatable).")
@_CONFIG
def materialize_(start: str | None, end: str | None, incremental: bool, views: tuple[str, ...], config: str) -> None:
    """Copy the newest offline row per entity into the online store."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if incremental and start:
        raise ConfigError("give --start or --incremental, not both")
    start_at, end_at = _when(start, "--start"), _when(end, "--end")
    with (
        _store(config) as store,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        ) as bar,
    ):
        tasks: dict[str, int] = {}

        def progress(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = bar.add_task(view, total=total)
            bar.update(tasks[view], completed=done, total=total)

        written = store.materialize(
            start=start_at, end=end_at, incremental=incremental, views=views or None, progress=progress
        )
    for view, rows in written.items():
        click.echo(f"{view}: {rows} rows materialized")


@features.command("training-set")
@click.option("--entities", "entities", required=True, help="Entity frame: a Parquet or CSV file.")
@click.option("--service", help="Feature service name.")
@click.option("--feature", "feature_refs", multiple=True, help='"view:feature" (repeatable).')
@click.option("--output", "-o", required=True, help="Output Parquet file.")
@click.option("--timestamp-field", default="event_timestamp", show_default=True)
@click.option("--full-feature-names", is_flag=True)
@_CONFIG
def training_set(
    entities: str,
    service: str | None,
    feature_refs: tuple[str, ...],
    output: str,
    timestamp_field: str,
    full_feature_names: bool,
    config: str,
) -> None:
    """Point-in-time-correct training set for an entity frame, written as Parquet."""
    import pyarrow.parquet as pq

    if bool(service) == bool(feature_refs):
        raise InvalidInput("give --service or --feature (not both)")
    with _store(config) as store:
        table = store.training_set(
            entities,
            service or list(feature_refs),
            timestamp_field=timestamp_field,
            full_feature_names=full_feature_names,
        )
    pq.write_table(table, output)
    click.echo(f"{output}: {table.num_rows} rows, columns {', '.join(table.column_names)}")


@features.command()
@click.option("--service", help="Feature service name.")
@click.option("--feature", "feature_refs", multiple=True, help='"view:feature" (repeatable).')
@click.option("--entity", "entity", required=True, help="join_key=id[,id...], e.g. driver_id=1001,1002")
@_CONFIG
def get(service: str | None, feature_refs: tuple[str, ...], entity: str, config: str) -> None:
    """Read online features (the same answer as POST /v1/features), printed as JSON."""
    from mlscale.features.serving import features_request

    key, sep, ids = entity.partition("=")
    if not sep or not ids:
        raise InvalidInput("--entity must look like driver_id=1001,1002")
    with _store(config) as store:
        types = {e.join_key: e.dtype for e in store.repo.entities.values()}
        values: list = ids.split(",")
        if types.get(key) == "int64":
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise InvalidInput(f"--entity: {key} ids must be integers") from None
        body: dict = {"entities": {key: values}}
        if service:
            body["feature_service"] = service
        else:
            body["features"] = list(feature_refs)
        click.echo(json.dumps(features_request(store.online, body), indent=2))
