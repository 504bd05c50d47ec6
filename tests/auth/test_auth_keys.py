"""API keys: stored only as hashes, verified by the hash, revocable; the CLI shows a key once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlscale.auth.guard import Guard, bearer
from mlscale.auth.keys import KeyStore, add_key, revoke_key
from mlscale.auth.scopes import required_scope
from mlscale.auth.settings import AuthSettings
from mlscale.errors import ConfigError, Forbidden, Unauthorized

REPO = Path(__file__).resolve().parents[2]


def test_the_keys_file_holds_the_hash_and_never_the_key(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", ["infer", "read"], tenant="team-a", rate=5)
    text = path.read_text()
    assert key not in text and key.split(".", 1)[1] not in text
    record = json.loads(text)["keys"][0]
    assert record["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert record["scopes"] == ["infer", "read"] and record["tenant"] == "team-a"
    assert os.stat(path).st_mode & 0o077 == 0  # owner only

    store = KeyStore(path)
    principal = store.verify(key)
    assert (principal.name, principal.tenant, principal.scopes, principal.rate) == (
        "alice",
        "team-a",
        frozenset({"infer", "read"}),
        5,
    )


def test_wrong_keys_do_not_verify(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", ["read"])
    other = add_key(path, "bob", ["read"])
    store = KeyStore(path)
    key_id, secret = key.split(".", 1)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (
        key_id + "." + flipped,
        key_id + "." + other.split(".", 1)[1],
        key + "x",
        "mls_ffffffffffff.x",
        "",
        "x",
    ):
        assert store.verify(wrong) is None, wrong
    assert store.verify(key).name == "alice" and store.verify(other).name == "bob"


def test_revoked_keys_stop_working_without_a_restart(tmp_path):
    path = tmp_path / "keys.json"
    key = add_key(path, "alice", ["read"])
    store = KeyStore(path)
    assert store.verify(key) is not None
    revoke_key(path, "alice")
    store._checked = 0.0  # the store looks at the file at most once a second
    os.utime(path, (time.time() + 2, time.time() + 2))  # a coarse mtime clock must still see the change
    assert store.verify(key) is None
    with pytest.raises(ConfigError, match="no key named"):
        revoke_key(path, "alice")


def test_keys_from_an_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    key = add_key(path, "ci", ["infer"])
    monkeypatch.setenv("TEST_MLSCALE_KEYS", path.read_text())
    guard = Guard(AuthSettings(enabled=True, keys_env="TEST_MLSCALE_KEYS", keys_file="/nonexistent"))
    assert guard.authenticate([(b"authorization", f"Bearer {key}".encode())]).name == "ci"
    monkeypatch.delenv("TEST_MLSCALE_KEYS")
    with pytest.raises(ConfigError, match="TEST_MLSCALE_KEYS"):
        Guard(AuthSettings(enabled=True, keys_env="TEST_MLSCALE_KEYS"))


def test_bad_scopes_and_duplicate_names_are_clear_errors(tmp_path):
    path = tmp_path / "keys.json"
    with pytest.raises(ConfigError, match="scopes must be some of infer, read, admin"):
        add_key(path, "x", ["write"])
    add_key(path, "x", ["read"])
    with pytest.raises(ConfigError, match="exists already"):
        add_key(path, "x", ["read"])


async def test_guard_answers_401_403_and_lets_open_routes_through(tmp_path):
    path = tmp_path / "keys.json"
    reader = add_key(path, "reader", ["read"])
    guard = Guard(AuthSettings(enabled=True, keys_file=str(path)))

    def auth(value: str) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", value.encode())]

    assert await guard.check("GET", "/v2/health/ready", []) is None
    with pytest.raises(Unauthorized) as missing:
        await guard.check("GET", "/metrics", [])
    assert missing.value.challenge() == b'Bearer realm="mlscale"'
    with pytest.raises(Unauthorized) as wrong:
        await guard.check("GET", "/metrics", auth("Bearer " + reader + "0"))
    assert b'error="invalid_token"' in wrong.value.challenge()
    assert reader not in str(wrong.value)
    with pytest.raises(Unauthorized):
        await guard.check("GET", "/metrics", auth("Basic " + reader))
    assert (await guard.check("GET", "/metrics", auth("bearer  " + reader))).name == "reader"
    with pytest.raises(Forbidden, match="'infer'"):
        await guard.check("POST", "/v2/models/iris/infer", auth("Bearer " + reader))
    with pytest.raises(Forbidden, match="'admin'"):
        await guard.check("POST", "/v2/repository/models/iris/unload", auth("Bearer " + reader))


def test_bearer_parsing():
    assert bearer([(b"authorization", b"Bearer abc")]) == "abc"
    assert bearer([(b"authorization", b"Bearer ")]) is None
    assert bearer([(b"authorization", b"Token abc")]) is None
    assert bearer([]) is None


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("POST", "/v2/models/iris/infer", "infer"),
        ("POST", "/v2/models/iris/versions/2/infer", "infer"),
        ("POST", "/v1/features", "infer"),
        ("POST", "/v1/events/orders", "infer"),
        ("GET", "/v2", "read"),
        ("GET", "/v2/models/iris", "read"),
        ("GET", "/v2/models/iris/ready", "read"),
        ("POST", "/v2/repository/index", "read"),
        ("GET", "/metrics", "read"),
        ("GET", "/dashboard/api/summary", "read"),
        ("GET", "/dashboard/snapshots/a.png", "read"),
        ("GET", "/dashboard/", None),
        ("GET", "/dashboard/static/dashboard.js", None),
        ("POST", "/v2/repository/models/iris/load", "admin"),
        ("POST", "/v2/repository/models/iris/unload", "admin"),
        ("POST", "/v2/repository/models/iris/cache/purge", "admin"),
        ("GET", "/gateway/backends", "read"),
        ("GET", "/anything/else", "read"),
    ],
)
def test_every_route_needs_its_scope(method, path, scope):
    assert required_scope(method, path) == scope


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "mlscale", "auth", *args], capture_output=True, text=True, env=env)


def test_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    path = tmp_path / "keys.json"
    done = _cli("add-key", "alice", "--scopes", "infer,read", "--tenant", "t1", "--keys-file", str(path))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("mls_") and key not in path.read_text() and key not in done.stderr
    assert KeyStore(path).verify(key).scopes == frozenset({"infer", "read"})
    listing = _cli("list", "--keys-file", str(path))
    assert "alice" in listing.stdout and "tenant=t1" in listing.stdout and key not in listing.stdout
    bad = _cli("add-key", "bob", "--scopes", "infer,write", "--keys-file", str(path))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "write" in bad.stderr
    assert _cli("revoke", "alice", "--keys-file", str(path)).returncode == 0
    assert KeyStore(path).verify(key) is None
