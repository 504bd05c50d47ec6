"""Outlier ejection in the gateway: a replica that cannot be reached is taken out, the tries waiting
on it are retried elsewhere (only where that is safe), and it is taken back once it answers again.

The replicas here are tiny HTTP servers in the test's event loop, so the test controls exactly when
one goes quiet and when it stops accepting connections; the gateway runs in the same loop behind
httpx's ASGI transport. tests/cluster/test_cluster_serving.py does the same with real servers on
namespace hosts killed under load.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence

import httpx
import msgspec
import pytest

from mlscale.gateway.balancing import Backend
from mlscale.gateway.proxy import Gateway
from mlscale.gateway.settings import GatewaySettings

WAIT = 5.0  # seconds any step may take before the test fails (every wait is bounded)


class TinyReplica:
    """An HTTP/1.1 server on 127.0.0.1 that answers 200 ``{"replica": name}``; while ``quiet``, it reads
    requests other than health probes and never answers them (a model call that never returns, as
    on a host that died with the connection open). ``refuse()`` stops accepting connections (the
    accepted ones stay open and silent); ``accept()`` listens on the same port again."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.answered = 0
        self.held: list[asyncio.StreamWriter] = []
        self.held_changed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def accept(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        assert self._server is not None
        self._server.close()  # the listening socket only: connections already accepted stay

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split()[1]
                length = next(
                    (int(v) for k, _, v in (ln.partition(":") for ln in lines) if k.lower() == "content-length"), 0
                )
                await reader.readexactly(length)
                if self.quiet and not path.startswith("/v2/health"):
                    self.held.append(writer)
                    self.held_changed.set()
                    await reader.read()  # until the gateway gives up on the connection
                    return
                body = msgspec.json.encode({"replica": self.name})
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
                if not path.startswith("/v2/health"):
                    self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def wait_held(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.held) < count:
                self.held_changed.clear()
                await self.held_changed.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self.held:
            writer.close()


class InOrder:
    """The strategy for these tests: the replicas in the order given, usable ones first."""

    def order(self, backends: Sequence[Backend], key: str) -> list[Backend]:
        return sorted(backends, key=lambda b: not b.usable(key))


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def test_a_replica_is_taken_out_after_the_threshold_and_its_tries_aborted_only_when_unreachable():
    async def scenario() -> None:
        backend = Backend("http://replica")
        waiting = asyncio.create_task(asyncio.sleep(60))
        backend.tries.add(waiting)
        assert not backend.failed(2, unreachable=False)
        assert backend.failed(2, unreachable=False)  # the second failure takes it out
        assert not backend.healthy
        await asyncio.sleep(0)
        assert not waiting.done(), "a replica that answers slowly keeps its tries in flight"
        assert not backend.failed(2, unreachable=True)  # already out: not taken out twice...
        await asyncio.sleep(0)
        assert waiting.cancelled(), "...but what waits on an unreachable replica is aborted"

    asyncio.run(scenario())


def test_requests_waiting_on_a_replica_that_became_unreachable_are_retried_elsewhere_and_it_rejoins():
    async def scenario() -> None:
        lost, spare = TinyReplica("lost", quiet=True), TinyReplica("spare")
        await lost.accept()
        await spare.accept()
        settings = GatewaySettings(
            backends=[lost.url, spare.url], health_interval=0.05, health_timeout=0.5, timeout=30.0
        )
        gateway = Gateway(settings)
        gateway.strategy = InOrder()
        await gateway.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
        try:
            row = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
            infers = [asyncio.create_task(client.post("/v2/models/m/infer", json=row)) for _ in range(2)]
            event = asyncio.create_task(client.post("/v1/events/trips", json=[{"id": 1}]))
            await lost.wait_held(3)  # all three sent to the first replica, which never answers
            assert gateway.backends[0].inflight == 3
            cut = time.monotonic()
            lost.refuse()  # the host is gone: new connections (the probes) fail
            async with asyncio.timeout(WAIT):
                answers = await asyncio.gather(*infers)
                refused = await event
            took = time.monotonic() - cut
            assert [a.status_code for a in answers] == [200, 200]
            assert {a.json()["replica"] for a in answers} == {"spare"}
            # Inference repeats nothing: retried. An event append might have happened: not retried.
            assert refused.status_code == 502 and "not retried" in refused.json()["error"]
            assert spare.answered == 2
            assert took < 2.0, f"the tries waited {took:.1f}s, not aborted when the replica was found unreachable"
            assert not gateway.backends[0].healthy and gateway.backends[0].inflight == 0
            assert (await client.post("/v2/models/m/infer", json=row)).json()["replica"] == "spare"

            lost.quiet = False
            await lost.accept()  # back on the same address: the probes take it back
            await _until(lambda: gateway.backends[0].healthy, "the replica did not rejoin")
            assert (await client.post("/v2/models/m/infer", json=row)).json()["replica"] == "lost"
            listed = (await client.get("/gateway/backends")).json()
            assert [(b["healthy"], b["failures"]) for b in listed] == [(True, 0), (True, 0)]
        finally:
            await client.aclose()
            await gateway.stop()
            await lost.close()
            await spare.close()

    asyncio.run(scenario())


def test_a_client_cancelling_its_request_is_not_mistaken_for_an_abort():
    async def scenario() -> None:
        quiet = TinyReplica("quiet", quiet=True)
        await quiet.accept()
        gateway = Gateway(GatewaySettings(backends=[quiet.url], health_interval=60.0))
        await gateway.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gateway")
        try:
            request = asyncio.create_task(client.post("/v2/models/m/infer", json={}))
            await quiet.wait_held(1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            backend = gateway.backends[0]
            assert (backend.inflight, backend.tries, backend.failures, backend.healthy) == (0, set(), 0, True)
        finally:
            await client.aclose()
            await gateway.stop()
            await quiet.close()

    asyncio.run(scenario())


def test_gateway_timeouts_must_be_positive():
    with pytest.raises(ValueError, match=r"gateway\.connect_timeout must be a positive"):
        GatewaySettings(backends=["http://a"], connect_timeout=0)
    with pytest.raises(ValueError, match=r"gateway\.health_timeout must be a positive"):
        GatewaySettings(backends=["http://a"], health_timeout=-1)


def test_gateway_with_a_zero_connect_timeout_exits_with_one_line(tmp_path):
    config = tmp_path / "mlscale.toml"
    config.write_text('[gateway]\nbackends = ["http://127.0.0.1:9"]\nconnect_timeout = 0\n')
    result = subprocess.run(
        [sys.executable, "-m", "mlscale", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "gateway.connect_timeout must be a positive number of seconds" in result.stderr


def test_a_flapping_replica_stays_out_longer_each_time_and_is_forgiven_after_a_stable_spell():
    """Ejected right after each return: out 0, 1, 3 intervals (capped); a good probe before that
    does not bring it back; after ``longest`` seconds in service the count starts again."""
    backend = Backend("http://replica")
    interval, longest, now = 1.0, 5.0, 100.0
    waits = []
    for _ in range(5):
        assert backend.failed(1, unreachable=False)
        waits.append(backend.eject(now, interval, longest))
        assert not backend.recovered(now + waits[-1] - 0.01) or waits[-1] == 0.0
        now += waits[-1]
        assert backend.recovered(now), "a good probe after the wait brings it back"
        assert backend.healthy
        now += 0.5  # fails again half a second after coming back
    assert waits == [0.0, 1.0, 3.0, 5.0, 5.0]
    # In service for ``longest`` seconds: the next ejection is forgiven like a first one.
    now += longest
    assert backend.failed(1, unreachable=False)
    assert backend.eject(now, interval, longest) == 0.0
