"""``mlscale serve``: the model server on the command line."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec


@click.command()
@click.option(
    "--model-repository",
    "model_repository",
    type=click.Path(path_type=Path),
    help="Folder of models: <model>/<version>/model.{onnx,joblib,pt,py}.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A model from the MLflow registry: models:/<name>@<alias>, models:/<name>/<version> or "
    "models:/<name>, optionally as <served name>=models:/... (repeatable; adds to [server.mlflow] models).",
)
@click.option("--mlflow-tracking-uri", "tracking_uri", help="The MLflow registry (default: MLFLOW_TRACKING_URI).")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--grpc-port", "grpc_port", type=int, help="Port of the v2 gRPC protocol (default 8001; 0: off).")
@click.option("--workers", type=int, help="Worker processes sharing the port (default 1).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Project file mlscale.toml.")
def serve(
    model_repository: Path | None,
    models: tuple[str, ...],
    tracking_uri: str | None,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    config_path: Path | None,
) -> None:
    """Serve models over the Open Inference Protocol (v2) on HTTP and gRPC."""
    from mlscale.config import load_settings
    from mlscale.serving.mlflow_registry import model_sources
    from mlscale.serving.server import run_server

    settings = load_settings(config_path)
    server = settings.server
    if models or tracking_uri:
        registry = msgspec.structs.replace(
            server.mlflow,
            models={**server.mlflow.models, **model_sources(list(models))},
            tracking_uri=tracking_uri or server.mlflow.tracking_uri,
        )
        server = msgspec.structs.replace(server, mlflow=registry)
    overrides = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "model_repository": str(model_repository.resolve()) if model_repository else None,
    }
    server = msgspec.structs.replace(server, **{k: v for k, v in overrides.items() if v is not None})
    if model_repository is None:
        server = msgspec.structs.replace(server, model_repository=str(settings.resolve(server.model_repository)))
    grpc = f" and grpc://{server.host}:{server.grpc_port}" if server.grpc_port else ""
    registry = "".join(f" and {name} from {uri}" for name, uri in sorted(server.mlflow.models.items()))
    click.echo(
        f"mlscale: serving {server.model_repository}{registry} on {'https' if settings.tls.enabled else 'http'}://"
        f"{server.host}:{server.port}{grpc} "
        f"with {server.workers} worker(s)"
    )
    run_server(msgspec.structs.replace(settings, server=server))
