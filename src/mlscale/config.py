"""The project file ``mlscale.toml`` parsed and validated into typed settings.

Every section has defaults that work embedded (no service to install), so an empty file, or none,
is a valid project. Relative paths are resolved against the file's folder, so a project can be
run from anywhere.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from mlscale.auth.settings import AuthSettings, QuotaSettings, TLSSettings
from mlscale.cache.settings import CacheSettings
from mlscale.errors import ConfigError
from mlscale.features.settings import FeaturesSettings
from mlscale.gateway.settings import GatewaySettings
from mlscale.monitoring.settings import MonitoringSettings
from mlscale.storage.settings import StorageSettings
from mlscale.streams.settings import StreamSettings
from mlscale.tracing.settings import TracingSettings
from mlscale.vision.settings import VisionSettings


class MlflowRegistrySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Models served from an MLflow model registry (``[server.mlflow]``): the repository every host
    resolves, beside (or instead of) the local folder."""

    # The MLflow tracking/registry server, e.g. "http://mlflow:5000"; "" takes MLFLOW_TRACKING_URI.
    tracking_uri: str = ""
    # mlscale model name -> "models:/<name>@<alias>" (follows the alias), "models:/<name>/<version>"
    # (pinned) or "models:/<name>" (every aliased version and the latest, with all aliases).
    models: dict[str, str] = msgspec.field(default_factory=dict)
    # How often the registry is asked for new versions and moved aliases (seconds; 0 = never).
    poll_interval: float = 5.0
    # Where each version's artifacts are downloaded (one folder per version, shared by workers).
    cache_dir: str = ".cache/mlflow-models"
    # A downloaded version no poll of this host has served for this long is deleted (seconds).
    keep_seconds: float = 3600.0
    # Seconds one registry or artifact request may take before it counts as failed.
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.poll_interval < 0:
            raise ValueError("server.mlflow.poll_interval must not be negative")
        if self.timeout <= 0:
            raise ValueError("server.mlflow.timeout must be positive seconds")
        if self.keep_seconds < 0:
            raise ValueError("server.mlflow.keep_seconds must not be negative")
        for name, uri in self.models.items():
            if not uri.startswith("models:/"):
                raise ValueError(f"server.mlflow.models.{name}: {uri!r} is not a models:/ URI")


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The model server: where it listens, how many processes, and its limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    # The Open Inference Protocol over gRPC (inference.GRPCInferenceService) on its own port, on the
    # same host and in every worker; 0 turns it off.
    grpc_port: int = 8001
    workers: int = 1
    model_repository: str = "models"
    # Largest request body accepted; larger ones are answered 413 before being read whole.
    max_body_bytes: int = 64 * 1024 * 1024
    # Default deadline for a request in seconds; None means none unless the request asks.
    request_timeout: float | None = None
    # Hard bound of each model's queue of waiting requests, a backstop behind queue-delay admission.
    max_queue_size: int = 1024
    # Requests that may wait at a model's door for room in its queue (bodies unread), per worker;
    # beyond it, 503 at once (see serving/batching.py for why it is far above max_queue_size).
    max_waiting: int = 65536
    # Admission by queue delay (per model in model.toml too): a model's queue holds what drains
    # within the target; other requests wait at the door (body unread), newest first once the
    # oldest waited past the target, and get 503 after max_queue_wait seconds without room.
    queue_delay_target: float = 0.05
    max_queue_wait: float = 1.0
    # How often the repository folder is scanned for new or removed versions (seconds; 0 = never).
    poll_interval: float = 2.0
    # Seconds SIGTERM waits for requests in flight before the process exits anyway.
    graceful_timeout: float = 30.0
    # Serve the live dashboard at /dashboard (and redirect / there).
    dashboard: bool = True
    # Slow clients: seconds a connection may take to send a request's headers (from its first byte,
    # or from connecting), and the longest pause while sending its body; past either it gets 408.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Models from an MLflow model registry (off while no models are listed).
    mlflow: MlflowRegistrySettings = msgspec.field(default_factory=MlflowRegistrySettings)

    def __post_init__(self) -> None:
        if min(self.queue_delay_target, self.max_queue_wait) <= 0:
            raise ValueError("queue_delay_target and max_queue_wait must be positive seconds")
        if min(self.max_queue_size, self.max_waiting) < 1:
            raise ValueError("max_queue_size and max_waiting must be at least 1")
        if min(self.header_timeout, self.body_timeout) <= 0:
            raise ValueError("header_timeout and body_timeout must be positive seconds")
        if not 0 <= self.grpc_port <= 65535:
            raise ValueError("grpc_port must be a port number (0 turns gRPC off)")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All of mlscale's settings, one section per part."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    features: FeaturesSettings = msgspec.field(default_factory=FeaturesSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    streams: StreamSettings = msgspec.field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = msgspec.field(default_factory=MonitoringSettings)
    vision: VisionSettings = msgspec.field(default_factory=VisionSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    quotas: QuotaSettings = msgspec.field(default_factory=QuotaSettings)
    tls: TLSSettings = msgspec.field(default_factory=TLSSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)
    # Folder of the project file; relative paths in the sections are resolved against it.
    root: str = "."

    def resolve(self, path: str) -> Path:
        """A path from the settings, made absolute against the project folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (Path(self.root) / candidate).resolve()


def parse_settings(data: dict, root: Path | str = ".", source: str = "mlscale.toml") -> Settings:
    """Validate a mapping (a parsed TOML document) into Settings, naming the bad field on error."""
    try:
        settings = msgspec.convert({**data, "root": str(root)}, Settings, strict=True)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return settings


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the project file; no path means embedded defaults rooted at the working folder."""
    if path is None:
        return Settings(root=str(Path.cwd()))
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_settings(data, root=path.resolve().parent, source=str(path))
