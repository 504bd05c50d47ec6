"""The one entry point, ``mlscale``: each sub-command lives in its part and is imported lazily,
so ``mlscale --help`` stays fast and a part's heavy imports load only when used."""

from __future__ import annotations

import importlib
import sys

import click

from mlscale.errors import MlscaleError

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "auth": "mlscale.auth.commands:auth",
    "features": "mlscale.features.commands:features",
    "gateway": "mlscale.gateway.commands:gateway",
    "monitor": "mlscale.monitoring.commands:monitor",
    "serve": "mlscale.serving.commands:serve",
    "storage": "mlscale.storage.commands:storage",
    "up": "mlscale.up:up",
    "stream": "mlscale.streams.commands:stream",
    "vision": "mlscale.vision.commands:vision",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup)
@click.version_option(package_name="mlscale")
def cli() -> None:
    """mlscale: serve models, cache, features, streams, monitoring and video at scale."""


def main() -> None:
    """Run the CLI; errors a user caused end with one line on stderr and exit status 2."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MlscaleError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
