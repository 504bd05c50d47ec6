"""A private PostgreSQL server with ``ssl = on`` and a certificate from the test's own CA.

The machine's PostgreSQL runs with ssl off, so the libpq TLS options that mlscale passes through its
``postgresql://`` URLs are exercised against a server of our own: initdb into a temporary folder (run
as the ``postgres`` user, as initdb refuses root), ``hostssl`` lines only in pg_hba.conf (a client
without TLS is refused), listening on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tls_support import Certs, make_certs

from mlscale.storage.localredis import free_port
from mlscale.testing.netcluster import postgres_bindir


def unavailable_reason() -> str | None:
    """Why this fixture cannot run here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL server binaries are not installed"
    if os.geteuid() != 0:
        return "starting a private PostgreSQL needs root (to run initdb as the postgres user)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres system user"
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


@contextmanager
def tls_postgres(folder: Path, timeout: float = 60.0) -> Iterator[tuple[int, Certs]]:
    """Yield (port, certs) of a running TLS-only PostgreSQL; stop it and remove its files after."""
    bindir = postgres_bindir()
    assert bindir is not None
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    certs = make_certs(folder / "certs", "pg")
    data = folder / "data"
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres", "postgres")
    done = subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr[-500:]}")
    # The server reads its key only if the postgres user owns it and nobody else can read it.
    for source, name in ((certs.cert, "server.crt"), (certs.key, "server.key")):
        target = data / name
        shutil.copyfile(source, target)
        shutil.chown(target, "postgres", "postgres")
        os.chmod(target, 0o600)
    (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    port = free_port()
    server = subprocess.Popen(
        _as_postgres([
            str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
            "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-c", "fsync=off", "-c", "shared_buffers=16MB",
        ]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _await_sessions(port, certs, server, time.monotonic() + timeout)
        yield port, certs
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def dsn(port: int, certs: Certs | None, **options: str) -> str:
    query = {"connect_timeout": "3"} | options
    if certs is not None:
        query |= {"sslmode": "verify-full", "sslrootcert": str(certs.ca)}
    return f"postgresql://postgres@127.0.0.1:{port}/postgres?" + "&".join(f"{k}={v}" for k, v in query.items())


def _await_sessions(port: int, certs: Certs, server: subprocess.Popen, deadline: float) -> None:
    """The port opens before the database accepts sessions: try until one works or the deadline."""
    import psycopg

    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited: {server.stderr.read().decode(errors='replace')[-500:]}")
        try:
            with psycopg.connect(dsn(port, certs), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
