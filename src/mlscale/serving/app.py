"""The server's ASGI application: Open Inference Protocol routes, repository API and /metrics.

Plain ASGI rather than a framework: the infer path is the hot path, and keeping it to a few
visible steps (read body, decode, resolve model, batch, encode) is what makes it fast. Errors
users can cause are typed (mlscale.errors) and turned into ``{"error": ...}`` here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

import mlscale
from mlscale import tracing
from mlscale.config import ServerSettings
from mlscale.errors import (
    Forbidden,
    InvalidInput,
    MlscaleError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
)
from mlscale.serving import metrics, triton
from mlscale.serving.control import WorkerControl
from mlscale.serving.inference import InferenceCore
from mlscale.serving.protocol import DecodedRequest, decode_request, encode_json, encode_response
from mlscale.serving.repository import ModelRepository, ModelVersion
from mlscale.serving.sources import ModelSource

log = logging.getLogger("mlscale.serving")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
# A JSON route: (decoded body or None, the path segment matched by a trailing "/{name}") -> JSON value.
JsonHandler = Callable[[Any, str | None], Awaitable[Any]]

JSON = b"application/json"
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "parameters",
    "metrics",
    "model_configuration",
    "statistics",
]


class Response:
    """A status, a body and extra headers; built by handlers, sent by the app."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, encode_json(value))


class InferenceApp:
    """Routes requests; owns the repository's lifecycle through ASGI lifespan events."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings | None = None,
        *,
        control: WorkerControl | None = None,
        mounts: dict[str, ASGIApp] | None = None,
        json_routes: dict[tuple[str, str], JsonHandler] | None = None,
        on_shutdown: list[Callable[[], Any]] | None = None,
        payload_log: Any = None,
        guard: Any = None,
        home: str | None = None,
        services: list[Any] | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings or ServerSettings()
        self.control = control
        self.mounts = mounts or {}
        self.json_routes = json_routes or {}
        # Routes ending in a "/{name}" segment, by (method, the path before it): (handler, route).
        self._tail_routes = {
            (method, route.rpartition("/")[0]): (handler, route)
            for (method, route), handler in self.json_routes.items()
            if route.endswith("}")
        }
        self.on_shutdown = on_shutdown or []
        # Sampled requests and responses for drift monitoring (mlscale.monitoring.PayloadLog), or None.
        self.payload_log = payload_log
        # The inference path REST shares with gRPC.
        self.core = InferenceCore(repository, payload_log)
        # Other listeners in this worker's loop (the gRPC server): ``start(app)`` once the models are
        # loaded, ``stop()`` before they are released.
        self.services = services or []
        if payload_log is not None:
            self.on_shutdown.append(payload_log.close)
        # The edge check (mlscale.auth.Guard: keys, scopes, quotas), or None when all are off.
        self.guard = guard
        # Where ``/`` redirects (the dashboard), or None.
        self.home = home
        self.ready = False
        self._tasks: list[asyncio.Task] = []
        self._purges_seen: dict[str, int] = {}

    # --- ASGI entry --------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        path: str = scope["path"]
        mounted = None
        try:
            # Before anything else, mounted apps included: admission and the body read come after.
            if self.guard is not None:
                principal = await self.guard.check(scope["method"], path, scope["headers"])
                if principal is not None and self.guard.enabled:  # tenants share model queues fairly
                    scope["mlscale.tenant"] = principal.tenant
            mounted = self._mounted(path)
            if mounted is None:
                response = await self._route(scope["method"], path, scope, receive)
        except MlscaleError as exc:
            mounted = None
            response = json_response({"error": str(exc)}, exc.status)
            if isinstance(exc, (Overloaded, RateLimited)):
                response.headers.append((b"retry-after", str(exc.retry_after).encode()))
            elif isinstance(exc, RequestTimeout):  # the rest of a stalled body is not worth waiting for
                response.headers.append((b"connection", b"close"))
            if isinstance(exc, Unauthorized):
                response.headers.append((b"www-authenticate", exc.challenge()))
            reason = _REFUSALS.get(type(exc))
            if reason is not None:
                metrics.EDGE_REFUSALS.labels(reason).inc()
        except Exception:
            mounted = None
            log.exception("unhandled error on %s %s", scope["method"], path)
            response = json_response({"error": "internal server error"}, 500)
        if mounted is not None:  # outside the try: a mounted app answers (and fails) on its own
            await mounted(scope, receive, send)
            return
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode()),
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _mounted(self, path: str) -> ASGIApp | None:
        for prefix, app in self.mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                return app
        return None

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Everything built so far (modules, models, runtimes) lives as long as the worker:
                # moved out of the collector's view, a full collection no longer walks it all. That
                # walk was the payload log's cost: buffered requests survive young collections,
                # trigger full ones, and each full one paused the worker for tens of milliseconds.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Load every model on disk (respecting API unloads other workers made), start watchers."""
        if self.control is not None:
            generation, unloaded = self.control.current()
            self.repository.unloaded = set(unloaded)
            self._purges_seen = self.control.purges()
        # Strict: a registry that cannot be read at startup fails the start with its reason.
        await self.repository.sync(strict=True)
        if self.control is not None:
            self.control.ack(generation)
            self._tasks.append(asyncio.create_task(self._follow_control()))
        if self.settings.poll_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll(self.repository.folder, self.settings.poll_interval)))
        registry = self.repository.registry
        if registry is not None and registry.poll_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll(registry, registry.poll_interval)))
        for service in self.services:
            await service.start(self)
        self.ready = True

    async def shutdown(self) -> None:
        """Stop watchers, then let queued requests finish before models are released."""
        self.ready = False
        for service in self.services:
            await service.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.repository.close()
        if self.guard is not None:
            await self.guard.aclose()
        if self.repository.caches is not None:
            self.repository.caches.close()
        for callback in self.on_shutdown:
            result = callback()
            if asyncio.iscoroutine(result):
                await result
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    async def _poll(self, source: ModelSource, interval: float) -> None:
        """Rescan one source (the folder, the registry) on its own timer: a slow registry never
        delays the folder's changes, nor the folder the registry's."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.repository.sync(source)
            except Exception:
                log.exception("rescanning the model repository failed")

    async def _apply_purges(self) -> None:
        assert self.control is not None
        purges = self.control.purges()
        caches = self.repository.caches
        for name, count in purges.items():
            if count > self._purges_seen.get(name, 0) and caches is not None:
                cache = caches.cached(name)
                if cache is not None:
                    cache.l1.purge_prefix(name.encode() + b"\0")
        self._purges_seen = purges

    async def _follow_control(self) -> None:
        assert self.control is not None
        while True:
            await asyncio.sleep(0.05)
            change = self.control.changed()
            if change is None:
                continue
            generation, unloaded = change
            await self._apply_purges()
            for name in unloaded - self.repository.unloaded:
                with contextlib.suppress(MlscaleError):
                    await self.repository.unload(name)
            for name in self.repository.unloaded - unloaded:
                try:
                    await self.repository.load(name)
                except MlscaleError as exc:
                    log.error("%s", exc)
            self.control.ack(generation)

    # --- routing -----------------------------------------------------------------------------
    async def _route(self, method: str, path: str, scope: dict, receive: Callable) -> Response:
        parts = path.strip("/").split("/")
        if parts[0] == "v2":
            return await self._v2(method, parts[1:], scope, receive)
        if path == "/" and self.home is not None:
            return Response(307, b"", b"text/plain", [(b"location", self.home.encode())])
        if path == "/metrics" and method == "GET":
            body, content_type = metrics.render_metrics()
            return Response(200, body, content_type.encode())
        if path == "/openapi.json" and method == "GET":
            return Response(200, self._openapi())
        handler, tail, route = self._json_handler(method, path)
        if handler is not None:
            call = self._json(handler, tail, scope, receive)
            if not tracing.enabled:
                return await call
            from mlscale.tracing import spans

            attributes = {"http.request.method": method, "url.path": path, "http.route": route}
            return await spans.serve(f"{method} {route}", scope["headers"], attributes, call, status=_status_of)
        raise NotFound(f"no route {method} {path}")

    def _openapi(self) -> bytes:
        from mlscale.serving.openapi import openapi_document

        routes = {path for _, path in self.json_routes}
        return encode_json(
            openapi_document(
                features="/v1/features" in routes,
                events="/v1/events/{topic}" in routes,
                dashboard=self.settings.dashboard,
            )
        )

    async def _json(self, handler: JsonHandler, tail: str | None, scope: dict, receive: Callable) -> Response:
        """A JSON route's answer: body read and decoded, then the handler (inside its span, when traced)."""
        body = await self._read_body(scope, receive)
        try:
            payload = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("malformed JSON: nested too deeply") from None
        return json_response(await handler(payload, tail))

    def _json_handler(self, method: str, path: str) -> tuple[JsonHandler | None, str | None, str]:
        """An exact route, or one ending in ``/{name}`` whose last segment is handed to the handler;
        with the route matched (a span's name: bounded, unlike the path)."""
        handler = self.json_routes.get((method, path))
        if handler is not None:
            return handler, None, path
        head, _, tail = path.rpartition("/")
        found = self._tail_routes.get((method, head))
        return (found[0], tail, found[1]) if found is not None and tail else (None, None, "")

    async def _v2(self, method: str, parts: list[str], scope: dict, receive: Callable) -> Response:
        count = len(parts)
        if count == 0 or parts == [""]:
            return json_response({"name": "mlscale", "version": mlscale.__version__, "extensions": EXTENSIONS})
        head = parts[0]
        if head == "models" and parts[1:] == ["stats"] and method == "GET":  # Triton: every model's
            return json_response(triton.model_statistics(self.repository))
        if head == "models" and count >= 2:
            name = parts[1]
            rest = parts[2:]
            version = None
            if len(rest) >= 2 and rest[0] == "versions":
                version = rest[1]
                rest = rest[2:]
            action = rest[0] if rest else ""
            if action == "infer" and method == "POST" and len(rest) == 1:
                return await self._infer(name, version, scope, receive)
            if action == "" and method == "GET":
                model = self.repository.resolve(name, version)
                return json_response(model.metadata(self.repository.versions_of(name)))
            if action == "ready" and method == "GET" and len(rest) == 1:
                self.repository.resolve(name, version)
                return json_response({"name": name, "ready": True})
            if action == "config" and method == "GET" and len(rest) == 1:
                return json_response(triton.model_config(self.repository.resolve(name, version)))
            if action == "stats" and method == "GET" and len(rest) == 1:
                return json_response(triton.model_statistics(self.repository, name, version or ""))
        elif head == "health" and count == 2 and method == "GET":
            if parts[1] == "live":
                return json_response({"live": True})
            if parts[1] == "ready":
                ready = self.ready and self.repository.all_ready()
                return json_response({"ready": ready}, 200 if ready else 503)
        elif head == "repository":
            if parts[1:] == ["index"] and method in ("GET", "POST"):
                await self._read_body(scope, receive)
                return json_response(self.repository.index())
            if count == 4 and parts[1] == "models" and method == "POST" and parts[3] in ("load", "unload"):
                await self._read_body(scope, receive)
                return await self._load_or_unload(parts[2], parts[3])
            if parts[1:2] == ["models"] and parts[3:] == ["cache", "purge"] and method == "POST":
                await self._read_body(scope, receive)
                return await self._purge(parts[2])
        raise NotFound(f"no route {method} /v2/{'/'.join(parts)}")

    async def _load_or_unload(self, name: str, action: str) -> Response:
        if action == "load":
            await self.repository.load(name)
        else:
            await self.repository.unload(name)
        if self.control is not None:
            generation = self.control.publish(self.repository.unloaded)
            self.control.ack(generation)
            if not await self.control.wait_applied(generation):
                log.warning("not every worker applied %s of model %s in time", action, name)
        return json_response({})

    async def _purge(self, name: str) -> Response:
        """Drop every cached answer of a model, in this worker, the shared tier and (through the
        control folder) every other worker's in-process tier."""
        caches = self.repository.caches
        cache = caches.cached(name) if caches is not None else None
        if cache is None:
            self.repository.resolve(name)  # 404 for an unknown model
            raise InvalidInput(f"model {name!r} has no prediction cache (enable it with [cache] in model.toml)")
        removed = await cache.apurge(name)
        if self.control is not None:
            generation = self.control.publish(self.repository.unloaded, purge=name)
            self._purges_seen = self.control.purges()
            self.control.ack(generation)
            await self.control.wait_applied(generation)
        return json_response({"model": name, "purged": removed})

    # --- inference ---------------------------------------------------------------------------
    async def _read_body(self, scope: dict, receive: Callable) -> bytes:
        limit = self.settings.max_body_bytes
        encoding = None
        for key, value in scope["headers"]:
            if key == b"content-length" and _int_header(key, value) > limit:
                raise PayloadTooLarge(f"the body of {int(value)} bytes exceeds the limit of {limit} bytes")
            if key == b"content-encoding":
                encoding = value.lower()
        chunks: list[bytes] = []
        size = 0
        pause = self.settings.body_timeout
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        while True:
            # A client that stops sending mid-body holds a connection and a request slot: the
            # longest pause between two pieces is bounded (nginx's client_body_timeout). A bare
            # timer per piece: asyncio.timeout / wait_for cost 10-20 us per request here, this 3.
            timer = loop.call_later(pause, expire)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not expired:
                    raise
                task.uncancel()
                raise RequestTimeout(f"the client sent nothing of the body for {pause:g} s") from None
            finally:
                timer.cancel()
            if message["type"] == "http.disconnect":
                raise InvalidInput("the client disconnected")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding in (b"gzip", b"deflate"):
            body = _decompress(body, encoding, limit)
        return body

    async def _infer(self, name: str, version: str | None, scope: dict, receive: Callable) -> Response:
        header_length = None
        timeout = self.settings.request_timeout
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = _int_header(key, value)
            elif key == b"x-request-timeout":
                timeout = _float_header(key, value)

        async def decode() -> DecodedRequest:
            return decode_request(await self._read_body(scope, receive), header_length)

        call = self.core.infer(name, version, decode, _encode_rest, timeout, scope.get("mlscale.tenant"))
        if not tracing.enabled:
            return await call
        from mlscale.tracing import spans

        attributes = {"http.request.method": "POST", "url.path": scope["path"], "mlscale.model": name}
        return await spans.serve(_INFER_ROUTE, scope["headers"], attributes, call, status=_status_of)


def _encode_rest(model: ModelVersion, request: DecodedRequest, outputs: dict, parameters: dict | None) -> Response:
    payload, json_length = encode_response(model.model, model.version, request, outputs, parameters)
    if json_length is None:
        return Response(200, payload)
    return Response(
        200, payload, b"application/octet-stream", [(b"inference-header-content-length", str(json_length).encode())]
    )


# The REST server span's name: the route, not the path (a name per model would be unbounded).
_INFER_ROUTE = "POST /v2/models/{model}/infer"


def _status_of(response: Response) -> int:
    return response.status


_REFUSALS = {Unauthorized: "unauthorized", Forbidden: "forbidden", RateLimited: "rate_limited"}


def _int_header(key: bytes, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:  # latin-1: header bytes need not be UTF-8, the message must still render
        name, text = key.decode("latin-1"), value.decode("latin-1")
        raise InvalidInput(f"header {name} must be an integer, got {text!r}") from None


def _float_header(key: bytes, value: bytes) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1
    if not 0 <= number < math.inf:  # also refuses nan and inf
        raise InvalidInput(f"header {key.decode('latin-1')} must be a non-negative number of seconds")
    return number


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == b"gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {encoding.decode()}: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not decompressor.eof:  # a cut-off stream inflates to a prefix of the body without complaint
        raise InvalidInput(f"the body is not valid {encoding.decode()}: the compressed stream is truncated")
    return out
