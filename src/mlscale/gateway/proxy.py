"""The gateway: an ASGI reverse proxy over replicas with health checks, outlier ejection and retries.

The body is read once and kept, so a request refused by one replica (connection error, or 503
from a replica shedding load or draining) is sent to the next one; the client sees an error only
when every candidate refused. A request that failed after it was sent (the connection reset or
closed with no answer) is retried only where repeating it cannot apply a change twice
(``safe_to_retry``).

Health: each replica is probed every ``health_interval`` on a new connection (so a probe tests
that the host can still be reached, not an old pooled connection), and requests count too:
``unhealthy_after`` failures since its last successful probe, probes or requests, take a replica
out (outlier ejection); one successful probe brings it back, unless it was taken out again soon
after coming back: each ejection in a row keeps it out longer (``max_ejection_seconds`` at most).
When the failures say the replica cannot be reached at all
(refused or no answer to connecting), the tries still waiting on it are aborted and retried
elsewhere: a host that died or was cut off never answers them, and waiting for ``timeout`` would
turn its loss into client errors. A replica that answered 503 gets no new requests for its
Retry-After (at most ``shed_pause``), and when every replica is shedding the gateway answers 503
itself before reading the body, so an overloaded cluster is not also flooded by its gateway.
Answers pass through unchanged (status, headers, body), binary tensors included.

Auth is checked once: either each replica checks the forwarded Authorization header, or the
gateway terminates it (``guard`` given): keys, scopes and quotas are checked here, before the body
is read, and the header is not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from mlscale import tracing
from mlscale.errors import MlscaleError
from mlscale.gateway.balancing import Backend, ConsistentHash, PowerOfTwo
from mlscale.gateway.settings import GatewaySettings

log = logging.getLogger("mlscale.gateway")

_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"upgrade"}


def _error(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = msgspec.json.encode({"error": message})
    return status, [(b"content-type", b"application/json")], body


def route_key(path: str) -> str:
    """What consistent hashing hashes: the model name of /v2/models/<name>/..., else the path."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v2" and parts[2] == "models":
        return parts[3]
    return path


class Gateway:
    """ASGI app; ``backends`` and health are shared by all requests of this process."""

    def __init__(self, settings: GatewaySettings, *, guard: Any = None, verify: ssl.SSLContext | bool = True) -> None:
        if not settings.backends:
            from mlscale.errors import ConfigError

            raise ConfigError("the gateway needs at least one backend (--backend URL or gateway.backends)")
        self.settings = settings
        self.backends = [Backend(url) for url in settings.backends]
        self.strategy = (
            ConsistentHash(self.backends, settings.hash_load_factor) if settings.strategy == "hash" else PowerOfTwo()
        )
        # mlscale.auth.Guard when the gateway terminates auth; None forwards it to the replicas.
        self.guard = guard
        # How https:// replicas are verified: an SSL context with the configured CA, or True.
        self.verify = verify
        self._client: httpx.AsyncClient | None = None
        self._probe_client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        refusal = await self._check(scope) if self.guard is not None else None
        if refusal is not None:
            status, headers, body = refusal
        elif scope["path"] == "/gateway/backends":
            status, headers, body = (
                200,
                [(b"content-type", b"application/json")],
                msgspec.json.encode(
                    [
                        {
                            "url": b.url,
                            "healthy": b.healthy,
                            "inflight": b.inflight,
                            "served": b.served,
                            "failures": b.failures,
                        }
                        for b in self.backends
                    ]
                ),
            )
        elif tracing.enabled:
            status, headers, body = await self._forward_traced(scope, receive)
        else:
            status, headers, body = await self._forward(scope, receive)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _check(self, scope: dict) -> tuple[int, list, bytes] | None:
        """The guard's refusal as a response, or None to go on."""
        try:
            await self.guard.check(scope["method"], scope["path"], scope["headers"])
        except MlscaleError as exc:
            status, headers, body = _error(exc.status, str(exc))
            retry = getattr(exc, "retry_after", None)
            if retry is not None:
                headers.append((b"retry-after", str(retry).encode()))
            challenge = getattr(exc, "challenge", None)
            if challenge is not None:
                headers.append((b"www-authenticate", challenge()))
            return status, headers, body
        return None

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        timeout = httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, verify=self.verify)
        self._probe_client = httpx.AsyncClient(
            timeout=self.settings.health_timeout,
            limits=httpx.Limits(max_keepalive_connections=0),  # every probe connects anew
            verify=self.verify,
        )
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for client in (self._client, self._probe_client):
            if client is not None:
                await client.aclose()
        if self.guard is not None:
            await self.guard.aclose()
        if tracing.enabled:  # uvicorn re-raises SIGTERM once the app stopped: export the last spans now
            await asyncio.to_thread(tracing.flush)

    async def _health_loop(self) -> None:
        """A probe loop per replica: one that does not answer must not delay the others' probes."""
        await asyncio.gather(*(self._probe_loop(b) for b in self.backends))

    async def _probe_loop(self, backend: Backend) -> None:
        """A probe every ``health_interval`` from the start of the last, however long it took:
        a replica that does not answer its probes is found out in about ``unhealthy_after``
        intervals, not that many intervals plus timeouts."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.settings.health_interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self.settings.health_interval
            await self.probe(backend)

    async def check_health(self) -> None:
        """Probe every replica once (at start, and for tests)."""
        await asyncio.gather(*(self.probe(b) for b in self.backends))

    async def probe(self, backend: Backend) -> None:
        """Ask ``backend`` /v2/health/ready: a 200 brings it back, anything else counts as a failure."""
        assert self._probe_client is not None
        unreachable = False
        try:
            response = await self._probe_client.get(backend.url + "/v2/health/ready")
            ok = response.status_code == 200
        except httpx.HTTPError as exc:
            ok, unreachable = False, isinstance(exc, _UNREACHABLE)
        if ok:
            if backend.recovered(time.monotonic()):
                log.info("backend %s is healthy again", backend.url)
        elif backend.failed(self.settings.unhealthy_after, unreachable=unreachable):
            self._ejected(backend, "unreachable" if unreachable else "not ready")

    def _ejected(self, backend: Backend, why: str) -> None:
        wait = backend.eject(time.monotonic(), self.settings.health_interval, self.settings.max_ejection_seconds)
        log.warning("backend %s is unhealthy (%s); out for at least %.1f s", backend.url, why, wait)

    async def _read_body(self, receive: Callable) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.settings.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _all_shedding(self, key: str) -> tuple[int, list, bytes] | None:
        """A 503 to send at once when every healthy replica is shedding ``key``'s load, else None."""
        now = time.monotonic()
        healthy = [b for b in self.backends if b.healthy]
        until = [b.shedding_until.get(key, 0.0) for b in healthy]
        if not healthy or min(until) <= now:
            return None
        wait = min(until) - now
        status, headers, body = _error(503, "every replica is shedding load; retry later")
        return status, [*headers, (b"retry-after", str(max(1, math.ceil(wait))).encode())], body

    async def _forward(self, scope: dict, receive: Callable) -> tuple[int, list, bytes]:
        assert self._client is not None
        key = route_key(scope["path"])
        refusal = self._all_shedding(key)
        if refusal is not None:
            return refusal
        body = await self._read_body(receive)
        if body is None:
            return _error(413, f"the body exceeds the gateway's limit of {self.settings.max_body_bytes} bytes")
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
        drop = _HOP_BY_HOP | {b"authorization"} if self.guard is not None and self.guard.enabled else _HOP_BY_HOP
        headers = [(k, v) for k, v in scope["headers"] if k not in drop]
        candidates = self.strategy.order(self.backends, key)[: self.settings.retries + 1]
        last_error = "no healthy backend"
        for backend in candidates:
            try:
                response = await self._try(backend, scope["method"], backend.url + path, body, headers)
            except _TryFailed as failure:
                last_error = failure.reason
                if backend.failed(self.settings.unhealthy_after, unreachable=failure.unreachable):
                    self._ejected(backend, failure.reason)
                if failure.sent and not safe_to_retry(scope["method"], scope["path"]):
                    # The replica may have applied it (events appended): another try could repeat it.
                    return _error(502, f"{failure.reason}; not retried")
                continue
            if response.status_code == 503:
                backend.shedding_until[key] = time.monotonic() + _pause(response, self.settings.shed_pause)
                if backend is not candidates[-1]:
                    last_error = f"{backend.url}: 503"
                    continue
            backend.served += 1
            out_headers = [
                (k.encode(), v.encode())
                for k, v in response.headers.items()
                if k.encode() not in _HOP_BY_HOP and k != "content-encoding"
            ]
            return response.status_code, out_headers, response.content
        return _error(502, f"every backend refused the request (last: {last_error})")

    async def _try(self, backend: Backend, method: str, url: str, body: bytes, headers: list) -> httpx.Response:
        """One try at one replica, registered with it so that ``Backend.abort`` can cancel it;
        any failure (aborted included) is raised as ``_TryFailed``."""
        assert self._client is not None
        task = asyncio.current_task()
        backend.inflight += 1
        backend.tries.add(task)
        try:
            if tracing.enabled:
                return await self._send_traced(method, url, body, headers)
            return await self._client.request(method, url, content=body, headers=headers)
        except asyncio.CancelledError:
            # Our own abort is this try's failure; a cancellation from anyone else goes on up.
            if task in backend.aborted:
                backend.aborted.discard(task)
                if task.uncancel() == 0:
                    lost = f"{backend.url} became unreachable with the request in flight"
                    raise _TryFailed(lost, True, True) from None
            raise
        except httpx.HTTPError as exc:
            raise _TryFailed(
                f"{backend.url}: {exc!r}", not isinstance(exc, _NOT_SENT), isinstance(exc, _UNREACHABLE)
            ) from None
        finally:
            backend.inflight -= 1
            backend.tries.discard(task)
            if task in backend.aborted:  # the cancellation was swallowed on the way: the answer stands
                backend.aborted.discard(task)
                task.uncancel()

    async def _forward_traced(self, scope: dict, receive: Callable) -> tuple[int, list, bytes]:
        """``_forward`` in a SERVER span continuing the client's trace (its ``traceparent``)."""
        from mlscale.tracing import spans

        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        return await spans.serve(
            f"gateway {scope['method']}", scope["headers"], attributes, self._forward(scope, receive), status=_status
        )

    async def _send_traced(self, method: str, url: str, body: bytes, headers: list) -> httpx.Response:
        """One try at one replica in a CLIENT span whose ``traceparent`` the replica continues."""
        from mlscale.tracing import spans

        attributes = {"http.request.method": method, "url.full": url}
        with spans.client("gateway forward", attributes, headers) as (span, outgoing):
            response = await self._client.request(method, url, content=body, headers=outgoing)
            span.set_attribute("http.response.status_code", response.status_code)
            return response


# Failures where the replica never received the request: a retry elsewhere cannot repeat anything.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures that say the replica cannot be reached at all (nothing listens, or no answer to connecting).
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)


class _TryFailed(Exception):
    """One try at a replica failed: why, whether the request may have reached it, and whether
    the replica could not be reached at all."""

    def __init__(self, reason: str, sent: bool, unreachable: bool) -> None:
        super().__init__(reason)
        self.reason, self.sent, self.unreachable = reason, sent, unreachable


def safe_to_retry(method: str, path: str) -> bool:
    """Whether a request may go to another replica after one failed mid-way (sent, no answer).

    Reads and inference are: a model call changes nothing. Event ingestion (/v1/events/...) is not:
    the first replica may have appended the events. Repository and cache control calls are
    idempotent (load, unload, purge twice = once). A 503 is always retried: the server refuses
    before doing anything."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return True
    return not path.startswith("/v1/events")


def _status(answer: tuple[int, list, bytes]) -> int:
    return answer[0]


def _pause(response: httpx.Response, limit: float) -> float:
    """How long to spare a replica that answered 503: its Retry-After, at most ``limit`` seconds."""
    try:
        return min(limit, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return min(limit, 1.0)
