"""Hostile clients against a real `mlscale serve`: the OpenAPI document fuzzed by schemathesis,
decompression bombs, fuzzed bodies, slow and idle connections. Every bad input is a 4xx with a
message, nothing is a 5xx, and the server keeps serving others throughout."""

from __future__ import annotations

import json
import resource
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hostile_support import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_BODY,
    connect,
    gzip_bomb,
    peak_rss_kib,
    read_until_closed,
    start_hostile_server,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_support import RunningServer

MODELS = ["picky", "text", "vector"]
PICKY_REQUEST = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1.0, 2.0], [3.0, 4.0]]}]}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_hostile_server(tmp_path_factory.mktemp("hostile"))
    yield running
    running.stop()


def assert_serving(server: RunningServer, within: float = 2.0) -> None:
    """The server still answers a real inference correctly, within ``within`` seconds."""
    started = time.monotonic()
    response = httpx.post(server.url + "/v2/models/picky/infer", json=PICKY_REQUEST, timeout=within)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    assert time.monotonic() - started < within


def test_openapi_document_lists_every_route(hostile: RunningServer) -> None:
    document = httpx.get(hostile.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    expected = {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/versions/{model_version}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/{model_name}/load",
        "/v2/repository/models/{model_name}/unload",
        "/v2/repository/models/{model_name}/cache/purge",
        "/v1/features",
        "/v1/events/{topic}",
        "/metrics",
        "/openapi.json",
        "/dashboard/",
        "/dashboard/api/summary",
    }
    assert expected <= set(paths)
    # Every GET route without parameters is really there (a route the document invents would 404).
    for path, operations in paths.items():
        if "get" in operations and "{" not in path:
            assert httpx.get(hostile.url + path).status_code == 200, path


def reload_models(server: RunningServer, within: float = 30.0) -> None:
    """Load every test model again and wait until each answers ready (later tests need them all)."""
    deadline = time.monotonic() + within
    for name in MODELS:
        while True:
            loaded = httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=10)
            ready = httpx.get(f"{server.url}/v2/models/{name}/ready", timeout=10)
            if loaded.status_code == 200 and ready.status_code == 200:
                break
            assert time.monotonic() < deadline, f"model {name} not back: load {loaded.status_code} {loaded.text}"
            time.sleep(0.2)


def _fuzz_operation(operation, url: str, budget: float, failures: list[str]) -> int:
    """Bounded schemathesis examples of one operation; returns how many requests were sent."""
    sent = 0
    names = st.sampled_from(MODELS) | st.text(min_size=1, max_size=12)
    ready_probe = operation.path == "/v2/health/ready"  # 503 there means "not ready": documented

    @given(case=operation.as_strategy(), name=names)
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case, name) -> None:
        nonlocal sent
        if time.monotonic() > budget:
            return
        if case.path_parameters and "model_name" in case.path_parameters:
            case.path_parameters["model_name"] = name
        response = case.call(base_url=url, timeout=10)
        sent += 1
        if response.status_code >= 500 and not (ready_probe and response.status_code == 503):
            failures.append(f"{response.status_code} {response.text[:200]}\n{case.as_curl_command()}")
        elif response.status_code >= 400 and response.headers.get("content-type") == "application/json":
            assert response.json()["error"], "an error must say what is wrong"

    check()
    return sent


def test_schemathesis_finds_no_server_error(hostile: RunningServer) -> None:
    """Every operation of /openapi.json, bounded examples each, real model names mixed in."""
    schema = schemathesis.openapi.from_url(hostile.url + "/openapi.json")
    failures: list[str] = []
    budget = time.monotonic() + 60
    sent = sum(_fuzz_operation(r.ok(), hostile.url, budget, failures) for r in schema.get_all_operations())
    reload_models(hostile)  # schemathesis may have unloaded them
    assert not failures, "\n\n".join(failures[:5])
    assert sent >= 50, "the time budget ran out before schemathesis tried much"
    assert httpx.get(hostile.url + "/v2/health/live").status_code == 200
    assert_serving(hostile)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_decompression_bomb_is_refused_fast_in_bounded_memory(hostile: RunningServer, encoding: str) -> None:
    bomb = gzip_bomb(1024**3, encoding)  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 2 * 1024 * 1024
    peak_before = peak_rss_kib(hostile.process.pid)
    started = time.monotonic()
    response = httpx.post(
        hostile.url + "/v2/models/picky/infer",
        content=bomb,
        headers={"content-encoding": encoding, "content-type": "application/json"},
        timeout=10,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 413, response.text
    assert f"exceeds the limit of {MAX_BODY} bytes" in response.json()["error"]
    assert elapsed < 2.0
    # Inflating stops one byte past the limit: peak memory grows by a bounded amount, far from 1 GiB
    # (the margin over the 8 MiB limit covers what else the process allocates meanwhile: its payload
    # log's Arrow pool, for one, grew the peak by up to 40 MB on a busy machine).
    assert peak_rss_kib(hostile.process.pid) - peak_before < 16 * MAX_BODY // 1024
    assert_serving(hostile)


def test_corrupt_and_truncated_compressed_bodies_are_400(hostile: RunningServer) -> None:
    import gzip

    whole = gzip.compress(json.dumps(PICKY_REQUEST).encode())
    for body, words in [(b"not gzip at all", "not valid gzip"), (whole[: len(whole) // 2], "truncated")]:
        response = httpx.post(
            hostile.url + "/v2/models/picky/infer", content=body, headers={"content-encoding": "gzip"}
        )
        assert response.status_code == 400 and words in response.json()["error"]
    response = httpx.post(hostile.url + "/v2/models/picky/infer", content=whole, headers={"content-encoding": "gzip"})
    assert response.status_code == 200


@given(
    header=st.binary(max_size=120)
    | st.builds(
        lambda shape, datatype, size: json.dumps(
            {"inputs": [{"name": "in_FP32", "shape": shape, "datatype": datatype, "parameters": size}]}
        ).encode(),
        st.lists(st.integers(min_value=-2, max_value=2**63), max_size=4),
        st.sampled_from(["FP32", "BYTES", "BOOL", "INT64", "nope"]),
        st.dictionaries(st.just("binary_data_size"), st.integers(min_value=-1, max_value=40) | st.text(max_size=3)),
    ),
    tail=st.binary(max_size=48),
    length=st.none()
    | st.integers(min_value=-3, max_value=200)
    | st.text(alphabet="0123456789-+.x", min_size=1, max_size=4),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_fuzzed_bodies_through_the_app_are_never_5xx(hostile: RunningServer, header, tail, length) -> None:
    headers = {"content-type": "application/octet-stream"}
    if length is not None:
        headers["inference-header-content-length"] = str(len(header) if length == 0 else length)
    response = httpx.post(hostile.url + "/v2/models/vector/infer", content=header + tail, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"], response.text


def test_non_utf8_bytes_round_trip_in_binary_and_are_replaced_in_json(hostile: RunningServer) -> None:
    values = [b"\xff\xfe", b"ok", b"\x00\x80\xc3"]
    raw = b"".join(struct.pack("<I", len(v)) + v for v in values)
    for binary in (True, False):
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "in_BYTES",
                        "shape": [1, 3],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": binary},
            }
        ).encode()
        response = httpx.post(
            hostile.url + "/v2/models/text/infer",
            content=header + raw,
            headers={"inference-header-content-length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        if binary:
            length = int(response.headers["inference-header-content-length"])
            assert response.content[length:] == raw
        else:
            assert response.json()["outputs"][0]["data"] == [v.decode("utf-8", "replace") for v in values]


def test_deep_json_and_bad_headers_are_400(hostile: RunningServer) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    infer = b'{"inputs":[{"name":"x","shape":[1, 2],"datatype":"FP64","data":' + deep + b"}]}"
    for path, body in [("/v2/models/picky/infer", infer), ("/v1/events/hostile-deep", deep), ("/v1/features", deep)]:
        response = httpx.post(hostile.url + path, content=body)
        assert response.status_code == 400 and "nested too deeply" in response.json()["error"], (path, response.text)
    for value in ("nan", "inf", "-1", "soon"):
        response = httpx.post(
            hostile.url + "/v2/models/picky/infer", json=PICKY_REQUEST, headers={"x-request-timeout": value}
        )
        assert response.status_code == 400 and "x-request-timeout" in response.json()["error"]
    response = httpx.post(
        hostile.url + "/v2/models/picky/infer",
        json=PICKY_REQUEST,
        headers={"inference-header-content-length": b"\xff\xfe"},
    )
    assert response.status_code == 400 and "must be an integer" in response.json()["error"]


def test_unknown_model_names_do_not_grow_metrics(hostile: RunningServer) -> None:
    names = [f"made-up-{i}" for i in range(20)]
    for name in names:
        assert httpx.post(f"{hostile.url}/v2/models/{name}/infer", json=PICKY_REQUEST).status_code == 404
    text = httpx.get(hostile.url + "/metrics").text
    assert not any(name in text for name in names)
    assert 'model="(unknown)"' in text


def test_a_stalled_body_gets_408_and_the_connection_closes(hostile: RunningServer) -> None:
    with connect(hostile.port) as sock:
        sock.sendall(
            b"POST /v2/models/picky/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b'{"inputs": ['
        )
        reply, elapsed = read_until_closed(sock, within=BODY_TIMEOUT + 5)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"sent nothing of the body" in reply
    assert BODY_TIMEOUT - 0.2 < elapsed < BODY_TIMEOUT + 3
    assert_serving(hostile)


@pytest.mark.parametrize("sent", [b"", b"POST /v2/models/picky/infer HTTP/1.1\r\nhost: x\r\ncontent-le"])
def test_slow_or_silent_headers_get_408_and_the_connection_closes(hostile: RunningServer, sent: bytes) -> None:
    with connect(hostile.port) as sock:
        sock.sendall(sent)
        reply, elapsed = read_until_closed(sock, within=HEADER_TIMEOUT + 5)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"headers did not arrive" in reply
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 3
    assert_serving(hostile)


def test_a_slowloris_dripping_headers_is_cut_off(hostile: RunningServer) -> None:
    """One header byte every 0.2 s never finishes: the deadline counts from the first byte."""
    started = time.monotonic()
    reply = None
    with connect(hostile.port) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        sock.setblocking(False)
        for _ in range(int((HEADER_TIMEOUT + 3) / 0.2)):
            try:
                reply = sock.recv(4096)  # the 408, or b"" once closed
                break
            except BlockingIOError:
                pass
            except OSError:
                reply = b""
                break
            try:
                sock.send(b"x")
            except OSError:
                reply = b""
                break
            time.sleep(0.2)  # the client's pace is what is tested, not a wait for an event
    elapsed = time.monotonic() - started
    assert reply is not None, "the server kept a dripping connection open"
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408")
    assert HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 3


IDLE_CONNECTIONS = 1500


def test_idle_connections_do_not_stop_others_being_served(hostile: RunningServer) -> None:
    """1,500 silent connections held open (5,000 in a manual run: docs/operations.md)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, IDLE_CONNECTIONS + 512)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    fds_before = len(list(Path(f"/proc/{hostile.process.pid}/fd").iterdir()))
    sockets: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(IDLE_CONNECTIONS):
            sockets.append(socket.create_connection(("127.0.0.1", hostile.port), timeout=5))
        opened = time.monotonic() - started
        assert opened < HEADER_TIMEOUT - 1, f"opening took {opened:.1f} s: the server would already reap them"
        # The server accepted them (each holds a descriptor there), not merely the kernel's backlog.
        deadline = time.monotonic() + HEADER_TIMEOUT - opened - 0.5
        while len(list(Path(f"/proc/{hostile.process.pid}/fd").iterdir())) < fds_before + IDLE_CONNECTIONS:
            assert time.monotonic() < deadline, "the server did not accept the idle connections"
            time.sleep(0.02)
        assert_serving(hostile, within=1.0)
        assert httpx.get(hostile.url + "/v2/health/live", timeout=1).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_malformed_bodies_do_not_use_up_a_models_queue(hostile: RunningServer) -> None:
    """Was a lock-out: each request let in at the door but refused on its body (malformed, too large,
    too slow) kept its room in the queue until the next batch; with no batch coming, enough of them
    left every later request waiting at the door until 503, for good."""
    with httpx.Client(base_url=hostile.url, timeout=10) as client:
        for _ in range(300):  # more than the queue's room (max_batch_size 64)
            assert client.post("/v2/models/picky/infer", content=b"{not json").status_code == 400
    assert_serving(hostile, within=1.0)
