"""Models from an MLflow model registry: the model store every host resolves.

``[server.mlflow] models`` maps mlscale names to ``models:/`` URIs. Registry versions become
mlscale versions and registry aliases become mlscale aliases; the repository polls this source and
loads a new version before any alias points at it, exactly as it does for a folder. Each version's
artifacts are downloaded once into ``cache_dir/<model>/<version>-<created>/``: a folder per version
(what the MLflow runtime loads), written under a temporary name and renamed, so the workers of one
host share one download and never load a half-written folder. Every poll touches the folders of
the versions it still serves; folders no poll has touched for ``keep_seconds`` (versions deleted or
no longer aliased, downloads a killed worker left half done) are removed, so a long-running host's
disk does not fill with every version ever registered.

The client is mlflow-skinny (``mlscale[mlflow]``); it talks to any MLflow tracking server and any
artifact store that server names (served artifacts, S3, GCS, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlscale.errors import ConfigError, ModelNotFound, ServiceUnavailable
from mlscale.serving.sources import Listing

SCHEME = "models:/"
_VERSION = re.compile(r"^[1-9][0-9]*$")
# Settings of the MLflow client read from the environment; a user's own values win.
# No retries inside one poll (the next poll retries), no progress bars in the server's log.
_CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@dataclass(frozen=True)
class RegistryRef:
    """A parsed ``models:/`` URI: a registered model and an alias, a version, or neither."""

    model: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{SCHEME}{self.model}@{self.alias}"
        return f"{SCHEME}{self.model}/{self.version}" if self.version else f"{SCHEME}{self.model}"


def parse_uri(uri: str) -> RegistryRef:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<name>``."""
    if not uri.startswith(SCHEME) or not uri[len(SCHEME) :].strip("/"):
        raise ConfigError(f"{uri!r} is not a registry model URI (models:/<name>@<alias> or models:/<name>/<version>)")
    rest = uri[len(SCHEME) :].strip("/")
    if "@" in rest:
        model, alias = rest.rsplit("@", 1)
        if model and alias and "/" not in alias:
            return RegistryRef(model, alias=alias)
    elif "/" in rest:
        model, version = rest.rsplit("/", 1)
        if model and _VERSION.match(version):
            return RegistryRef(model, version=version)
        raise ConfigError(
            f"{uri!r}: {version!r} is not a version number (stages are deprecated in MLflow: use an alias, "
            f"models:/{model}@<alias>)"
        )
    else:
        return RegistryRef(rest)
    raise ConfigError(f"{uri!r} is not a registry model URI (models:/<name>@<alias> or models:/<name>/<version>)")


def model_sources(entries: list[str]) -> dict[str, str]:
    """``--model`` values (``models:/iris@champion`` or ``name=models:/...``) as name -> URI; the
    mlscale name defaults to the registered model's."""
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, uri = entry.partition("=")
        if not sep:
            name, uri = parse_uri(entry).model, entry
        else:
            parse_uri(uri)
        if not name or name in found:
            raise ConfigError(f"--model {entry!r}: {'an empty' if not name else 'a second'} model name {name!r}")
        found[name] = uri
    return found


class RegistrySource:
    """The ``ModelSource`` of an MLflow registry (see serving/sources.py)."""

    def __init__(
        self,
        models: dict[str, str],
        tracking_uri: str,
        cache_dir: Path,
        *,
        poll_interval: float = 5.0,
        timeout: float = 10.0,
        keep_seconds: float = 3600.0,
    ) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            raise ConfigError(
                "[server.mlflow] lists models but names no registry: set tracking_uri or MLFLOW_TRACKING_URI"
            )
        self.refs = {name: parse_uri(source) for name, source in models.items()}
        self.tracking_uri = uri
        # What errors and logs name: the URI without a user or password (``https://user:token@host``).
        parts = urlsplit(uri)
        self._where = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])) if parts.netloc else uri
        self.cache_dir = Path(cache_dir)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.keep_seconds = keep_seconds
        self._client: Any = None

    def names(self) -> list[str]:
        return sorted(self.refs)

    async def listing(self, name: str) -> Listing:
        return await asyncio.to_thread(self.fetch, name)

    def check(self) -> None:
        """Resolve (and download) every model once, raising the first error: the server refuses
        to start on a registry it cannot reach or a model or alias that does not exist."""
        for name in self.names():
            self.fetch(name)

    # --- blocking work (on a thread) ---------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            from mlscale.serving.runtimes.base import require

            require("mlflow", "mlflow", "models from an MLflow registry")
            seconds = str(math.ceil(self.timeout))  # the client reads whole seconds
            for variable, value in {**_CLIENT_ENVIRONMENT, "MLFLOW_HTTP_REQUEST_TIMEOUT": seconds}.items():
                os.environ.setdefault(variable, value)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def fetch(self, name: str) -> Listing:
        """The versions ``name`` serves now, downloaded; registry errors become typed errors."""
        ref = self.refs[name]
        try:
            return self._fetch(name, ref)
        except Exception as exc:
            raise self._translate(exc, ref) from None

    def _fetch(self, name: str, ref: RegistryRef) -> Listing:
        client = self.client()
        if ref.alias:
            found = [client.get_model_version_by_alias(ref.model, ref.alias)]
            aliases, default = {ref.alias: str(found[0].version)}, ref.alias
        elif ref.version:
            found = [client.get_model_version(ref.model, ref.version)]
            aliases, default = {}, None
        else:
            # Raises when the model does not exist; search results carry no aliases, this does.
            aliases = {alias: str(v) for alias, v in client.get_registered_model(ref.model).aliases.items()}
            quoted = ref.model.replace("'", "\\'")
            every = [mv for mv in client.search_model_versions(f"name = '{quoted}'") if _ready(mv)]
            if not every:
                raise ModelNotFound(f"{ref}: registered model {ref.model!r} has no READY version")
            latest = max(every, key=lambda mv: int(mv.version))
            wanted = {*aliases.values(), str(latest.version)}
            found = [mv for mv in every if str(mv.version) in wanted]
            default = None
        pending = [str(mv.version) for mv in found if not _ready(mv)]
        if pending:  # still being registered (or failed to): nothing to download yet
            raise ServiceUnavailable(f"{ref}: version(s) {', '.join(pending)} of {ref.model!r} are not READY")
        versions = {}
        for mv in found:
            folder = self._download(name, ref.model, str(mv.version), int(mv.creation_timestamp or 0))
            versions[str(mv.version)] = (folder, (mv.source, mv.creation_timestamp))
        prune_cache(self.cache_dir / name, [folder for folder, _ in versions.values()], self.keep_seconds)
        return Listing(versions, aliases, default)

    def _download(self, name: str, model: str, version: str, created: int) -> Path:
        """The version's artifacts in the cache, downloading them unless a worker already did."""
        target = self.cache_dir / name / f"{version}-{created}"
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            import mlflow.artifacts

            # The version's own artifact location, downloaded through the tracking server (a
            # models:/ URI here would resolve the registry from the global default, not ours).
            location = self.client().get_model_version_download_uri(model, version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(scratch / "download"), tracking_uri=self.tracking_uri
            )
            try:
                os.rename(local, target)
            except OSError:
                if not target.is_dir():  # not another worker's download landing first
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def _translate(self, exc: Exception, ref: RegistryRef) -> Exception:
        if isinstance(exc, (ConfigError, ModelNotFound, ServiceUnavailable)):
            return exc
        code = getattr(exc, "error_code", "")
        text = str(exc).replace(self.tracking_uri, self._where)  # MLflow's messages repeat the whole URL
        # A missing alias is INVALID_PARAMETER_VALUE "alias ... not found"; a plain 404 (a URL that
        # is no MLflow server) is not a missing model.
        if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in text.lower()):
            what = f"alias {ref.alias!r}" if ref.alias else f"version {ref.version}" if ref.version else "model"
            first = text.splitlines()[0] if text else type(exc).__name__
            return ModelNotFound(
                f"{ref}: the MLflow registry at {self._where} has no such {what} "
                f"of registered model {ref.model!r} ({first})"
            )
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        return ServiceUnavailable(f"{ref}: cannot use the MLflow registry at {self._where}: {first}")


def _ready(version: Any) -> bool:
    """Registered and its artifacts in place (stores that register asynchronously say PENDING first)."""
    return (version.status or "READY") == "READY"


def prune_cache(folder: Path, served: list[Path], keep_seconds: float) -> list[Path]:
    """Touch the served versions' folders; remove the others untouched for ``keep_seconds``.

    Why by age and not at once: the workers of a host share the cache and poll at their own moments,
    so a version one worker stopped serving may still be loading or draining in another; a
    version every worker dropped an hour ago is no one's. Returns what was removed.
    """
    now = time.time()
    for path in served:
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))
    keep = {path.name for path in served}
    removed = []
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            try:
                stale = path.name not in keep and now - path.stat().st_mtime > keep_seconds
            except OSError:  # removed meanwhile by another worker
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def registry_from_settings(settings: Any, resolve: Any) -> RegistrySource | None:
    """The registry source of ``[server.mlflow]`` (``resolve`` makes paths absolute), or None."""
    mlflow = settings.mlflow
    if not mlflow.models:
        return None
    return RegistrySource(
        mlflow.models,
        mlflow.tracking_uri,
        resolve(mlflow.cache_dir),
        poll_interval=mlflow.poll_interval,
        timeout=mlflow.timeout,
        keep_seconds=mlflow.keep_seconds,
    )
