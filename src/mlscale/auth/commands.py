"""``mlscale auth``: create, list and revoke API keys in the project's keys file."""

from __future__ import annotations

from pathlib import Path

import click

CONFIG = click.option("--config", "config_path", type=click.Path(path_type=Path), help="Project file mlscale.toml.")
KEYS = click.option(
    "--keys-file", "keys_file", type=click.Path(path_type=Path), help="Keys file (default: auth.keys_file)."
)


def _keys_path(config_path: Path | None, keys_file: Path | None) -> Path:
    if keys_file is not None:
        return keys_file
    from mlscale.config import load_settings

    settings = load_settings(config_path)
    return settings.resolve(settings.auth.keys_file)


@click.group()
def auth() -> None:
    """API keys: the file holds only their hashes."""


@auth.command("add-key")
@click.argument("name")
@click.option("--scopes", default="infer,read", show_default=True, help="Comma-separated: infer, read, admin.")
@click.option("--tenant", default="", help="Quota group shared by keys (default: the key's name).")
@click.option("--rate", type=float, help="Requests per second for this key's tenant (default: [quotas] rate).")
@click.option("--burst", type=float, help="Bucket size for this key's tenant (default: [quotas] burst).")
@CONFIG
@KEYS
def add_key_command(
    name: str,
    scopes: str,
    tenant: str,
    rate: float | None,
    burst: float | None,
    config_path: Path | None,
    keys_file: Path | None,
) -> None:
    """Create a key and print it once; only its SHA-256 is stored."""
    from mlscale.auth.keys import add_key
    from mlscale.errors import ConfigError

    if (rate is not None and rate <= 0) or (burst is not None and burst < 1):
        raise ConfigError("--rate must be positive and --burst at least 1")
    path = _keys_path(config_path, keys_file)
    key = add_key(
        path, name, [s.strip() for s in scopes.split(",") if s.strip()], tenant=tenant, rate=rate, burst=burst
    )
    click.echo(key)
    click.echo(f"key {name!r} added to {path}; it is shown only now, store it safely", err=True)


@auth.command("list")
@CONFIG
@KEYS
def list_keys(config_path: Path | None, keys_file: Path | None) -> None:
    """Names, ids, scopes and tenants of the keys (never a key)."""
    from mlscale.auth.keys import KeyFile, parse_keys

    path = _keys_path(config_path, keys_file)
    keys = parse_keys(path.read_text(), str(path)) if path.exists() else KeyFile()
    for r in keys.keys:
        limits = f" rate={r.rate:g}" if r.rate else ""
        limits += f" burst={r.burst:g}" if r.burst else ""
        click.echo(f"{r.name}\tmls_{r.id}\t{','.join(r.scopes)}\ttenant={r.tenant or r.name}{limits}")


@auth.command("revoke")
@click.argument("name")
@CONFIG
@KEYS
def revoke(name: str, config_path: Path | None, keys_file: Path | None) -> None:
    """Remove a key; running servers stop accepting it within a second or two."""
    from mlscale.auth.keys import revoke_key

    path = _keys_path(config_path, keys_file)
    revoke_key(path, name)
    click.echo(f"key {name!r} revoked in {path}")
