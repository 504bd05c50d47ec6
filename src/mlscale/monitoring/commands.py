"""``mlscale monitor``: drift reports, reference profiles, and the scheduled monitor loop."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlscale.errors import InvalidInput

if TYPE_CHECKING:
    from mlscale.monitoring.drift import ReferenceProfile


@click.group()
def monitor() -> None:
    """Drift reports and monitors over the payload log."""


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _kinds(values: tuple[str, ...]) -> dict[str, str]:
    """``--kind col=cat,other=num`` (repeatable) as column -> kind."""
    kinds = {}
    for item in (part for value in values for part in _split(value)):
        column, sep, kind = item.partition("=")
        if not sep or not column.strip() or kind.strip() not in ("num", "cat", "text", "datetime"):
            raise InvalidInput(f"--kind {item!r}: write COLUMN=KIND with KIND one of num, cat, text, datetime")
        kinds[column.strip()] = kind.strip()
    return kinds


KIND_HELP = (
    "COLUMN=KIND (num, cat, text, datetime), comma-separated or repeated: overrides the inferred kind "
    "(floats num; integers with at most 10 distinct values cat, more num; booleans cat; strings cat, "
    "or text when more than half are distinct)."
)


@monitor.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("current", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True)
@click.option("--categorical", help="Comma-separated columns to treat as categorical.")
@click.option("--kind", "kind", multiple=True, help=KIND_HELP)
@click.option("--columns", help="Comma-separated columns to compare (default: all of the reference).")
@click.option("--test", "test_name", help="One test for every column (ks, wasserstein, psi, ...).")
@click.option("--threshold", type=float, help="One threshold for every column.")
@click.option("--drift-share", type=float, default=0.5, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    help="Also write the per-column results and the dataset verdict to this JSON file.",
)
def report(
    reference: Path,
    current: Path,
    output: Path,
    categorical: str | None,
    kind: tuple[str, ...],
    columns: str | None,
    test_name: str | None,
    threshold: float | None,
    drift_share: float,
    json_path: Path | None,
) -> None:
    """Write a self-contained HTML drift report of CURRENT against REFERENCE (Parquet or CSV)."""
    import json

    # Only what the report needs: monitors (alerts, httpx, pandas) stay out of this command's start-up.
    from mlscale.monitoring.drift import DriftDetector, ReferenceProfile, as_columns
    from mlscale.monitoring.report import render_report
    from mlscale.monitoring.tables import read_table

    ref = ReferenceProfile.load(reference) if reference.suffix == ".npz" else as_columns(read_table(reference))
    cur = as_columns(read_table(current))
    detector = DriftDetector(
        columns=_split(columns) or None,
        categorical=_split(categorical),
        kinds=_kinds(kind),
        test=test_name,
        threshold=threshold,
        drift_share=drift_share,
    )
    try:
        detector.fit(ref)
    except InvalidInput as exc:
        raise InvalidInput(f"{reference}: {exc}") from None
    try:
        result = detector.score(cur)
    except InvalidInput as exc:
        raise InvalidInput(f"{current}: {exc}") from None
    output.write_text(render_report(result, reference.name, current.name))
    if json_path is not None:
        json_path.write_text(json.dumps(result.verdict(), indent=2) + "\n")
    if result.empty_columns:
        click.echo(
            f"warning: empty column{'s' if len(result.empty_columns) > 1 else ''} (all null) left out of the "
            f"dataset share: {', '.join(result.empty_columns)}",
            err=True,
        )
    click.echo(
        f"{result.drifted_columns}/{len(result.scored_columns)} columns drifted"
        f"{' (dataset drift)' if result.drifted else ''}; report written to {output}"
        + (f", results to {json_path}" if json_path is not None else "")
    )


@monitor.command()
@click.argument("reference")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Profile file (.npz).")
@click.option("--categorical", help="Comma-separated columns to treat as categorical.")
@click.option("--kind", "kind", multiple=True, help=KIND_HELP)
@click.option(
    "--max-sample",
    type=int,
    default=100_000,
    show_default=True,
    help="Columns longer than this keep a quantile sketch of this size (approximate tests).",
)
@click.option(
    "--batch-rows",
    type=int,
    default=0,
    help="Read a Parquet reference this many rows at a time, in memory bounded whatever its length "
    "(kinds not given are inferred from the first batch).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="spark: compute the profile on Spark; REFERENCE is then a Parquet file, folder, glob or URL, "
    "or table:NAME (a catalog table).",
)
@click.option(
    "--spark-master",
    help="Spark master for --engine spark (default: [features] spark_master of --config, else local[2]).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Project file whose [features] spark_master and spark_config --engine spark uses "
    "(default: ./mlscale.toml when present).",
)
def profile(
    reference: str,
    output: Path,
    categorical: str | None,
    kind: tuple[str, ...],
    max_sample: int,
    batch_rows: int,
    engine: str,
    spark_master: str | None,
    config_path: Path | None,
) -> None:
    """Compute a reference profile from training data once, so monitors need not keep the rows."""
    from mlscale.monitoring.drift import ReferenceProfile, as_columns
    from mlscale.monitoring.tables import read_table

    if output.suffix != ".npz":
        raise InvalidInput(f"{output}: a profile file must end in .npz")
    if batch_rows < 0:
        raise InvalidInput("--batch-rows must be a positive number of rows")
    if engine == "spark":
        if batch_rows:
            raise InvalidInput("--batch-rows reads with Arrow on this host; --engine spark needs no batches")
        prof = _spark_profile(reference, _split(categorical), max_sample, _kinds(kind), spark_master, config_path)
    elif batch_rows:
        from mlscale.monitoring.drift.streaming import profile_parquet

        if Path(reference).suffix.lower() not in (".parquet", ".pq"):
            raise InvalidInput(f"{reference}: --batch-rows reads Parquet files (.parquet)")
        prof = profile_parquet(reference, _split(categorical), max_sample, _kinds(kind), batch_rows)
    else:
        prof = ReferenceProfile.fit(
            as_columns(read_table(Path(reference))), _split(categorical), max_sample, _kinds(kind)
        )
    prof.save(output)
    exact = sum(c.exact for c in prof.columns.values())
    click.echo(f"profiled {len(prof.columns)} columns ({exact} exact) into {output}")


def _spark_profile(
    reference: str,
    categorical: list[str],
    max_sample: int,
    kinds: dict[str, str],
    master: str | None,
    config_path: Path | None,
) -> ReferenceProfile:
    """The profile computed on Spark, on the master given or the project's ``[features]`` one."""
    from mlscale.config import load_settings
    from mlscale.monitoring.drift.spark_profile import profile_spark

    if config_path is None and Path("mlscale.toml").is_file():
        config_path = Path("mlscale.toml")
    features = load_settings(config_path).features
    return profile_spark(
        reference,
        categorical,
        max_sample,
        kinds,
        master=master or features.spark_master,
        config=features.spark_config,
    )


@monitor.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Project file (default: ./mlscale.toml when present).",
)
@click.option("--once", is_flag=True, help="Run every monitor once, print the results and exit.")
def run(config_path: Path | None, once: bool) -> None:
    """Evaluate the configured monitors on a schedule and export the results as Prometheus metrics."""
    from mlscale.config import load_settings
    from mlscale.monitoring.monitors import MonitorService

    if config_path is None and Path("mlscale.toml").is_file():
        config_path = Path("mlscale.toml")
    settings = load_settings(config_path)
    service = MonitorService.from_settings(settings.monitoring, settings.resolve)
    if once:
        state = service.run_once()
        for name, result in state["monitors"].items():
            if "share" in result:
                drifted = [c["column"] for c in result["columns"] if c["drifted"]]
                click.echo(
                    f"{name}: {result['drifted_columns']}/{len(result['columns'])} drifted "
                    f"(share {result['share']:.2f}) {', '.join(drifted)}"
                )
            else:
                click.echo(f"{name}: {result.get('error') or 'no rows in the window yet'}")
        service.close()
        return
    port = settings.monitoring.metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")
        click.echo(f"metrics on http://127.0.0.1:{port}/metrics")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"running {len(service.monitors)} monitors every {settings.monitoring.interval}s")
    service.serve(settings.monitoring.interval, stop)
    service.close()


@monitor.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Project file (default: ./mlscale.toml when present).",
)
@click.option("--once", is_flag=True, help="Archive what the topic holds now and exit.")
@click.option("--interval", type=float, default=5.0, show_default=True, help="Seconds between passes.")
def archive(config_path: Path | None, once: bool, interval: float) -> None:
    """Write the payload log topic (every replica's rows) into the payload folder as Parquet.

    `monitor run` does this before each evaluation; run it alone when something else reads the folder.
    """
    from mlscale.config import load_settings
    from mlscale.errors import ConfigError
    from mlscale.monitoring.monitors import payload_archiver

    if config_path is None and Path("mlscale.toml").is_file():
        config_path = Path("mlscale.toml")
    settings = load_settings(config_path)
    archiver = payload_archiver(settings.monitoring.payload_log, settings.resolve)
    if archiver is None:
        raise ConfigError("[monitoring.payload_log] broker is not set: the payload log is written as files already")
    stop = threading.Event()
    if not once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while True:
            rows = archiver.archive()
            click.echo(f"archived {rows} rows into {archiver.directory}")
            if once or stop.wait(interval):
                return
    finally:
        archiver.close()
