"""API keys: generated once, shown once, stored only as hashes, verified in constant time.

A key reads ``mls_<id>.<secret>``: the id (public, 12 hex characters) finds the record, the
secret (256 random bits) proves possession. Only SHA-256 of the whole key is stored. A slow
password hash (scrypt, argon2) protects low-entropy passwords; for 256-bit random secrets it adds
nothing but tens of milliseconds to every request, which would itself be a denial-of-service lever.
The stored hash is compared with ``hmac.compare_digest``, so the time taken does not depend on
how many leading bytes of a guess were right.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mlscale.auth.settings import SCOPES
from mlscale.errors import ConfigError

PREFIX = "mls_"


class KeyRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One key as stored: never the key itself."""

    id: str
    name: str
    sha256: str
    scopes: list[str]
    # Quota identity: keys of one tenant share a bucket. Defaults to the key's name.
    tenant: str = ""
    # Per-key quota overrides (requests/s, bucket size); None: the [quotas] defaults.
    rate: float | None = None
    burst: float | None = None
    created: float = 0.0


class KeyFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    keys: list[KeyRecord] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the edge established it (no secret in here)."""

    name: str
    tenant: str
    scopes: frozenset[str]
    rate: float | None = None
    burst: float | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh ``(id, key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    return sorted(set(scopes))


def parse_keys(text: str, source: str) -> KeyFile:
    try:
        keys = msgspec.json.decode(text, type=KeyFile)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not a valid keys file: {exc}") from None
    for record in keys.keys:
        check_scopes(record.scopes)
    return keys


class KeyStore:
    """Hashed keys by id, from a file (re-read when it changes, checked at most once a second)
    or from an environment variable holding the same JSON."""

    def __init__(self, path: Path | None = None, env: str = "") -> None:
        self.path = path
        self.env = env
        self._by_id: dict[str, KeyRecord] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        if self.env:
            text = os.environ.get(self.env)
            if text is None:
                raise ConfigError(f"auth.keys_env names ${self.env}, which is not set")
            records = parse_keys(text, f"${self.env}").keys
        elif self.path is not None and self.path.exists():
            self._mtime = self.path.stat().st_mtime
            records = parse_keys(self.path.read_text(), str(self.path)).keys
        else:
            records = []
        self._by_id = {r.id: r for r in records}

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.env or self.path is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            # A half-written file: keep the keys we have, try again later.
            with contextlib.suppress(ConfigError):
                self.reload()

    def verify(self, key: str) -> Principal | None:
        """The key's principal, or None when it is not a key of this store."""
        self._maybe_reload()
        if not key.startswith(PREFIX):
            return None
        key_id = key[len(PREFIX) :].split(".", 1)[0]
        record = self._by_id.get(key_id)
        # Compare against some hash even for an unknown id, so both paths cost the same.
        expected = record.sha256 if record is not None else "0" * 64
        if not hmac.compare_digest(hash_key(key), expected) or record is None:
            return None
        return Principal(record.name, record.tenant or record.name, frozenset(record.scopes), record.rate, record.burst)


def add_key(
    path: Path,
    name: str,
    scopes: list[str],
    *,
    tenant: str = "",
    rate: float | None = None,
    burst: float | None = None,
) -> str:
    """Create a key named ``name`` in the keys file and return it (the only time it is seen)."""
    scopes = check_scopes(scopes)
    keys = parse_keys(path.read_text(), str(path)) if path.exists() else KeyFile()
    if any(r.name == name for r in keys.keys):
        raise ConfigError(f"a key named {name!r} exists already (revoke it first)")
    key_id, key = new_key()
    keys.keys.append(
        KeyRecord(
            id=key_id,
            name=name,
            sha256=hash_key(key),
            scopes=scopes,
            tenant=tenant,
            rate=rate,
            burst=burst,
            created=round(time.time(), 3),
        )
    )
    _write(path, keys)
    return key


def revoke_key(path: Path, name: str) -> None:
    keys = parse_keys(path.read_text(), str(path)) if path.exists() else KeyFile()
    kept = [r for r in keys.keys if r.name != name]
    if len(kept) == len(keys.keys):
        raise ConfigError(f"no key named {name!r} in {path}")
    _write(path, KeyFile(keys=kept))


def _write(path: Path, keys: KeyFile) -> None:
    """Atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(msgspec.to_builtins(keys), indent=2) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(data)
    os.replace(tmp, path)
