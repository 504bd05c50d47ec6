"""TLS to the backing services, against real servers started here with certificates from our own
CA: Redis (quotas and the key-value store over rediss://) and NATS JetStream (tls:// with a private
CA). PostgreSQL takes libpq's sslmode/sslrootcert in its URL; tested only when the local server
has ssl on."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest
from tls_support import make_certs

from mlscale.auth.quotas import RedisBuckets
from mlscale.errors import ServiceUnavailable
from mlscale.storage.localredis import LocalRedis, free_port


def _redis_has_tls() -> bool:
    binary = shutil.which("redis-server")
    if binary is None:
        return False
    return b"libssl" in subprocess.run(["ldd", binary], capture_output=True).stdout


@pytest.fixture
def tls_redis(tmp_path):
    if not _redis_has_tls():
        pytest.skip("redis-server is missing or built without TLS")
    certs = make_certs(tmp_path / "redis")
    tls_port = free_port()
    args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    with LocalRedis(args=args) as server:
        yield server, tls_port, certs


async def test_quotas_reach_redis_over_tls_and_refuse_an_unknown_ca(tls_redis, tmp_path):
    _server, port, certs = tls_redis
    prefix = f"q-{uuid.uuid4().hex}:"
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}&ssl_cert_reqs=required"
    buckets = RedisBuckets(url, prefix=prefix)
    try:
        assert [await buckets.atake("t", 1.0, 2.0, now_us=10**6) == 0.0 for _ in range(3)] == [True, True, False]
    finally:
        await buckets.aclose()
    stranger = make_certs(tmp_path / "other", "other")
    wrong = RedisBuckets(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={stranger.ca}&ssl_cert_reqs=required")
    with pytest.raises(ServiceUnavailable):
        await wrong.atake("t", 1.0, 2.0)
    await wrong.aclose()


def test_the_key_value_store_works_over_rediss(tls_redis):
    from mlscale.storage import open_store

    _server, port, certs = tls_redis
    store = open_store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs.ca}&prefix=t{uuid.uuid4().hex[:6]}:")
    try:
        store.set_many({b"a": b"1", b"b": b"2"})
        assert store.get_many([b"a", b"b", b"c"]) == [b"1", b"2", None]
    finally:
        store.close()


@pytest.fixture
def tls_nats(tmp_path):
    if shutil.which("nats-server") is None:
        pytest.skip("nats-server is not installed")
    certs = make_certs(tmp_path / "nats")
    port = free_port()
    process = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"),
         "--tls", "--tlscert", str(certs.cert), "--tlskey", str(certs.key)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, certs
    finally:
        process.kill()
        process.wait(timeout=10)


def test_nats_broker_over_tls_with_a_private_ca(tls_nats):
    from mlscale.streams.connect import open_broker

    port, certs = tls_nats
    broker = open_broker(f"tls://127.0.0.1:{port}?tls_ca={certs.ca}", partitions=1, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        offsets = broker.append("orders", [{"id": 1, "user": "u1"}, {"id": 2, "user": "u2"}])
        assert len(offsets) == 2
    finally:
        broker.close()
    # (A wrong CA is refused too, but nats-py retries the handshake until the broker's 30 s timeout.)


def test_postgres_takes_libpq_tls_options_in_its_url(postgres_dsn):
    import psycopg

    with psycopg.connect(postgres_dsn, connect_timeout=3) as conn:
        ssl_on = conn.execute("show ssl").fetchone()[0] == "on"
    if not ssl_on:
        pytest.skip("the local PostgreSQL runs with ssl = off: sslmode=verify-full cannot be exercised here")
    with psycopg.connect(postgres_dsn + "?sslmode=require", connect_timeout=3) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]
