"""TLS plumbing: uvicorn's HTTPS options from ``[tls]`` and client contexts that verify peers."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from mlscale.auth.settings import TLSSettings
from mlscale.errors import ConfigError


def uvicorn_ssl_options(tls: TLSSettings, resolve: Callable[[str], Path] = Path) -> dict:
    """Keyword arguments for ``uvicorn.run`` (empty when TLS is off); files are checked up front so
    a wrong path is one clear line, not a stack trace from a worker."""
    if not tls.enabled:
        return {}
    certfile, keyfile = resolve(tls.certfile), resolve(tls.keyfile)
    for path in (certfile, keyfile):
        if not path.is_file():
            raise ConfigError(f"tls: {path} does not exist")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls: {certfile} and {keyfile} are not a usable certificate and key: {exc}") from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def client_context(ca_file: str = "", resolve: Callable[[str], Path] = Path) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name against ``ca_file`` (or the
    system's CAs when empty)."""
    if not ca_file:
        return ssl.create_default_context()
    path = resolve(ca_file)
    if not path.is_file():
        raise ConfigError(f"tls.ca_file: {path} does not exist")
    return ssl.create_default_context(cafile=str(path))
