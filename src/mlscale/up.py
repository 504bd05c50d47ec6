"""``mlscale up``: every configured part of a project, each in its own process, stopped together.

A small supervisor rather than one process doing everything: the server keeps its worker model,
a stream processor or a camera pipeline can crash and restart without taking inference down, and
each part is the same command a user would run alone on another host.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from mlscale.config import Settings, load_settings


def part_commands(settings: Settings, config: Path) -> dict[str, list[str]]:
    """The command line of each part the project configures (the server always runs)."""
    mlscale = [sys.executable, "-m", "mlscale"]
    commands = {"server": [*mlscale, "serve", "--config", str(config)]}
    for part, enabled in extra_parts(settings).items():
        if enabled:
            commands[part] = [*mlscale, *enabled, "--config", str(config)]
    return commands


def extra_parts(settings: Settings) -> dict[str, list[str] | None]:
    """Parts beyond the server, keyed by name, with their sub-command when enabled in the project."""
    return {
        "monitor": ["monitor", "run"] if settings.monitoring.monitors else None,
        "vision": ["vision", "run", "--quiet"] if settings.vision.feeds else None,
        "stream": ["stream", "run", "--quiet"] if settings.streams.features else None,
    }


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default="mlscale.toml",
    show_default=True,
    help="Project file.",
)
def up(config_path: Path) -> None:
    """Run the server and every part the project file configures, until Ctrl-C."""
    settings = load_settings(config_path)
    commands = part_commands(settings, config_path.resolve())
    processes: dict[str, subprocess.Popen] = {}
    for name, command in commands.items():
        processes[name] = subprocess.Popen(command)
        click.echo(f"mlscale up: started {name} (pid {processes[name].pid})")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    click.echo(f"mlscale up: {name} exited with status {process.returncode}", err=True)
                    stopping = True
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    click.echo("mlscale up: stopped")
