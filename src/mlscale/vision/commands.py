"""``mlscale vision``: run the cameras of a project, score the detector, render synthetic clips."""

from __future__ import annotations

import json
import math
import signal
import time

import click

from mlscale.errors import ConfigError


@click.group()
def vision() -> None:
    """Real-time video anomaly detection over many camera feeds."""


@vision.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default="mlscale.toml",
    show_default=True,
    help="Project file with a [vision] section.",
)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.option("--json", "as_json", is_flag=True, help="Print status snapshots as JSON lines.")
@click.option("--quiet", is_flag=True, help="No live table (under `mlscale up`): logs and status.json only.")
def run(config_path: str, duration: float | None, metrics_port: int | None, as_json: bool, quiet: bool) -> None:
    """Run every feed of [vision] until Ctrl-C or --duration; events go to the events folder,
    and a status snapshot to status.json beside them every second. With [vision] membership,
    run the share of the feeds this process gets among the live members (one per host or more)."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from mlscale.config import load_settings
    from mlscale.vision.pipeline import make_pipeline

    if quiet:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(config_path)
    sinks = []
    if settings.monitoring.channels:  # anomaly events go to the project's alert channels too
        from mlscale.monitoring.alerts import AlertManager
        from mlscale.monitoring.monitors import channels_from_settings
        from mlscale.vision.events import alert_sink

        sinks.append(alert_sink(AlertManager([], channels_from_settings(settings.monitoring, settings.resolve))))
    pipeline = make_pipeline(settings.vision, sinks=sinks, root=settings.root)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        pipeline.register_metrics()
        start_http_server(metrics_port, addr="127.0.0.1")

    def table() -> Table:
        status = pipeline.status()
        title = "mlscale vision"
        if "member" in status:  # one member of a group sharing the feeds (vision/hosts.py)
            title += (
                f": member {status['member']}, {len(status['cameras'])} of {len(settings.vision.feeds)} feeds,"
                f" {len(status['members'])} members" + ("" if status["lease_valid"] else " (LEASE LOST)")
            )
        t = Table(title=title)
        for col in (
            "camera",
            "fps in",
            "fps done",
            "dropped",
            "lag s",
            "p50 ms",
            "p99 ms",
            "events",
            "state",
        ):
            t.add_column(col)
        for c in status["cameras"]:
            state = "warm-up" if c["warming_up"] else ("ok" if c["connected"] else "DISCONNECTED")
            ms = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
            t.add_row(
                c["camera"],
                f"{c['fps_in']:.1f}",
                f"{c['fps_processed']:.1f}",
                str(c["dropped"]),
                f"{c['lag_seconds']:.2f}",
                ms(c["latency_p50"]),
                ms(c["latency_p99"]),
                str(sum(c["events"].values())),
                state,
            )
        return t

    status_file = pipeline.events.folder / "status.json"

    def publish() -> dict:
        # Another process (the dashboard under `mlscale up`) reads the latest snapshot from this file;
        # written aside and renamed so a reader never sees half of it.
        status = pipeline.status()
        tmp = status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(status_file)
        return status

    deadline = math.inf if duration is None else time.monotonic() + duration
    # SIGTERM (Kubernetes, `mlscale up`) stops like Ctrl-C: feeds closed, a member leaves its group
    # at once so the others take its cameras without waiting for its lease to run out.
    signal.signal(signal.SIGTERM, _interrupt)
    pipeline.start()
    try:
        if as_json or quiet:
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                status = publish()
                if as_json:
                    click.echo(json.dumps(status))
        else:
            with Live(table(), refresh_per_second=2, console=Console()) as live:
                while time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    publish()
                    live.update(table())
    except KeyboardInterrupt:
        pass
    finally:
        pipeline.stop()
    events = pipeline.events.read()
    # With --json, stdout carries JSON lines only (a consumer parses every line); the summary goes to stderr.
    click.echo(f"{len(events)} events logged to {pipeline.events.path}", err=as_json)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _clean(value):
    """NaN (no positive, or no event to judge) as null: --json output must be valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


@vision.command(name="eval")
@click.option("--clip", type=click.Path(dir_okay=False), default=None, help="A video file to score.")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="LABELS.json of the clip.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Project file.")
@click.option("--feed", "feed_name", default=None, help="Use this feed's settings from --config.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Without --clip: seeds per anomaly kind.")
@click.option("--detect-fps", type=float, default=5.0, show_default=True, help="Without --clip.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(
    clip: str | None,
    labels: str | None,
    config_path: str | None,
    feed_name: str | None,
    seeds: int,
    detect_fps: float,
    as_json: bool,
) -> None:
    """Score the detector: on a labelled video file (--clip and --labels), or without --clip on the
    built-in synthetic suite. Event precision/recall/F1, kind accuracy, time to detection, false
    alarms, frame ROC AUC."""
    if clip is not None or labels is not None:
        _eval_clip(clip, labels, config_path, feed_name, as_json)
        return
    from mlscale.vision.evaluate import evaluate

    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    summary, results = evaluate(seeds=seeds, detect_fps=detect_fps)
    if as_json:
        click.echo(json.dumps(_clean(summary)))
        return
    for r in results:
        truth = ", ".join(f"{a.kind}@{a.start:.1f}s" for a in r.labels) or "normal"
        fired = ", ".join(f"{k}@{t:.1f}s" for t, k in r.events) or "-"
        click.echo(f"{r.name:20s} truth: {truth:28s} events: {fired}")
    click.echo(
        f"\nclips {summary['clips']}  anomalies {summary['anomalies']}  found {summary['found']}  "
        f"events {summary['events']}  false {summary['false_events']}\n"
        f"event precision {summary['precision']:.3f}  recall {summary['recall']:.3f}  "
        f"F1 {summary['f1']:.3f}  "
        f"kind accuracy {_fmt(summary['kind_accuracy'])}  frame ROC AUC {_fmt(summary['roc_auc'])}"
    )


def _eval_clip(clip: str | None, labels: str | None, config_path: str | None, feed_name: str | None, as_json: bool):
    from mlscale.vision.evaluate import load_labels, score_clip
    from mlscale.vision.settings import VisionSettings

    if clip is None or labels is None:
        raise ConfigError("--clip and --labels go together")
    if feed_name is not None and config_path is None:
        raise ConfigError("--feed needs --config")
    vision, feed = VisionSettings(), None
    if config_path is not None:
        from mlscale.config import load_settings

        vision = load_settings(config_path).vision
        if feed_name is not None:
            feed = next((f for f in vision.feeds if f.name == feed_name), None)
            if feed is None:
                names = ", ".join(f.name for f in vision.feeds) or "none"
                raise ConfigError(f"no feed {feed_name!r} in {config_path} (feeds: {names})")
        elif len(vision.feeds) == 1:
            feed = vision.feeds[0]
        elif vision.feeds:
            raise ConfigError(f"{config_path} has {len(vision.feeds)} feeds: say which with --feed")
    summary = score_clip(clip, load_labels(labels), feed, vision)
    if as_json:
        click.echo(json.dumps(_clean(summary)))
        return
    for e in summary["events"]:
        click.echo(f"  event {e['kind']:16s} at {e['time_s']:8.2f} s  score {e['score']:.2f}")
    for d in summary["detections"]:
        found = (
            f"found as {d['detected_kind']} after {d['time_to_detection_s']:.2f} s" if d["detected_kind"] else "MISSED"
        )
        click.echo(f"  anomaly {d['kind']:16s} {d['start_s']:7.2f}-{d['end_s']:7.2f} s: {found}")
    per_hour = summary["false_alarms_per_hour"]
    click.echo(
        f"\n{summary['clip']}: {summary['duration_s']:.1f} s, {summary['frames_judged']} frames judged\n"
        f"anomalies {summary['anomalies']}  found {summary['found']}  events {summary['event_count']}  "
        f"false alarms {summary['false_alarms']}"
        + (f" ({per_hour:.1f} per camera-hour)" if per_hour is not None else "")
        + f"\nevent precision {summary['precision']:.3f}  recall {summary['recall']:.3f}  F1 {summary['f1']:.3f}  "
        f"kind accuracy {_fmt(summary['kind_accuracy'])}  frame ROC AUC {_fmt(summary['roc_auc'])}"
    )


@vision.command()
@click.option(
    "--scenario",
    default="mixed",
    show_default=True,
    help="normal, mixed, or an anomaly kind (restricted_zone, wrong_way, loitering, crowd, ...).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seconds", type=float, default=30.0, show_default=True)
@click.option("--fps", type=float, default=15.0, show_default=True)
@click.option("--size", default="320x240", show_default=True, help="WIDTHxHEIGHT")
@click.argument("output", type=click.Path(dir_okay=False))
def render(scenario: str, seed: int, seconds: float, fps: float, size: str, output: str) -> None:
    """Write a synthetic clip to a video file (H.264 MP4), e.g. to feed `vision run` a real file."""
    from mlscale.vision.synthetic import SyntheticScene
    from mlscale.vision.video import write_video

    try:
        width, height = (int(v) for v in size.lower().split("x"))
        scene = SyntheticScene((width, height), seed=seed, scenario=scenario)
    except ValueError as exc:
        raise ConfigError(f"bad --size or --scenario: {exc}") from None
    count = write_video(output, (frame for _, frame in scene.frames(fps, seconds)), fps)
    click.echo(f"wrote {count} frames to {output}")
