"""``mlscale gateway``: a load balancer in front of server replicas."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec


@click.command()
@click.option("--backend", "backends", multiple=True, help="Base URL of a replica (repeat for each).")
@click.option("--strategy", type=click.Choice(["p2c", "hash"]), help="Balancing strategy (default p2c).")
@click.option("--host", help="Address to listen on.")
@click.option("--port", type=int, help="Port to listen on (default 9000).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Project file mlscale.toml.")
def gateway(
    backends: tuple[str, ...], strategy: str | None, host: str | None, port: int | None, config_path: Path | None
) -> None:
    """Balance requests over server replicas, with health checks and retries."""
    import uvicorn

    from mlscale.auth.tls import client_context, uvicorn_ssl_options
    from mlscale.config import load_settings
    from mlscale.gateway.proxy import Gateway

    project = load_settings(config_path)
    settings = project.gateway
    overrides = {"backends": list(backends) or None, "strategy": strategy, "host": host, "port": port}
    settings = msgspec.structs.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    guard = None
    if settings.auth == "terminate":
        from mlscale.auth.guard import guard_from_settings

        guard = guard_from_settings(project)
    ssl_options = uvicorn_ssl_options(project.tls, project.resolve)
    verify = client_context(project.tls.ca_file, project.resolve)
    app = Gateway(settings, guard=guard, verify=verify)
    scheme = "https" if ssl_options else "http"
    click.echo(
        f"mlscale gateway: {scheme}://{settings.host}:{settings.port} -> {', '.join(settings.backends)} "
        f"({settings.strategy})"
    )
    from mlscale import tracing

    tracing.configure(project.tracing, "mlscale-gateway")
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="mlscale.auth.tls_protocol:PromptShutdownProtocol",  # stops at once over TLS too
            access_log=False,
            proxy_headers=False,  # unused here, and costly per request (see serving/server.py)
            log_level="warning",
            lifespan="on",
            **ssl_options,
        )
    finally:
        tracing.shutdown()  # exports the spans still buffered
