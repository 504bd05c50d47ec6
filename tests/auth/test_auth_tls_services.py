"""TLS to the backing services, against real servers started here with certificates from our own
CA: Redis (quotas and the key-value store over rediss://) and NATS JetStream (tls:// with a private
CA) and PostgreSQL (a private TLS-only server: stream checkpoints and the feature registry with
sslmode=verify-full)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postgres_tls import dsn as pg_dsn
from postgres_tls import tls_postgres, unavailable_reason
from tls_support import make_certs

from mlscale.auth.quotas import RedisBuckets
from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.features.registry import Registry
from mlscale.storage.localredis import LocalRedis, free_port
from mlscale.streams.checkpoint import open_checkpoints


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


@pytest.fixture(scope="module")
def tls_pg():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    with tls_postgres(Path(tempfile.mkdtemp(prefix="mlscale-pgtls-"))) as (port, certs):
        yield port, certs


def test_stream_checkpoints_and_feature_registry_work_over_verified_tls(tls_pg):
    import psycopg

    port, certs = tls_pg
    url = pg_dsn(port, certs)
    with psycopg.connect(url) as conn:  # the link really is encrypted, by the server's own account
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True
    with open_checkpoints(url) as store:
        epoch, _offset, _state = store.acquire("tls-proc", 0)
        assert store.commit("tls-proc", {0: (epoch, 42, {"f": b"state"})}) == []  # none fenced
        assert store.offsets("tls-proc") == {0: 42}
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with Registry(url) as registry:
        registry.set_watermark("orders", when)
    with Registry(url) as registry:
        assert registry.watermark("orders") == when


def test_postgres_refuses_plain_links_and_an_unknown_ca_with_a_clear_error(tls_pg, tmp_path):
    port, _certs = tls_pg
    with pytest.raises(ServiceUnavailable, match=r"no encryption|SSL off|pg_hba"):
        open_checkpoints(pg_dsn(port, None, sslmode="disable"))
    stranger = make_certs(tmp_path / "other", "stranger")
    with pytest.raises(ServiceUnavailable, match="certificate verify failed") as refused:
        open_checkpoints(pg_dsn(port, stranger))
    assert "postgres@" not in str(refused.value)
    with pytest.raises(ConfigError, match="certificate verify failed") as refused:
        Registry(pg_dsn(port, stranger).replace("postgres@", "postgres:s3cret@"))
    assert "s3cret" not in str(refused.value)
