"""The dashboard as a plain ASGI application: one page, its data API, and its static files.

Plain ASGI rather than a framework because the server that mounts it is itself a lean ASGI app and
the dashboard has four routes. Every URL inside the page is relative, so the app works under any
prefix: it routes on the path below ``scope["root_path"]`` and accepts both conventions servers use
(path with the prefix kept, as Starlette's ``Mount`` does, or with it stripped).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec

from mlscale.monitoring.dashboard.panels import alerts_panel, cameras_panel, drift_panel
from mlscale.monitoring.dashboard.sources import DashboardSources
from mlscale.monitoring.dashboard.summary import MetricsHistory

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _json_default(value: Any) -> Any:
    """Sources hand over NumPy scalars and arrays now and then: numbers stay numbers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


_JSON = msgspec.json.Encoder(enc_hook=_json_default)
_STATIC = resources.files("mlscale.monitoring.dashboard") / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.(jpe?g|png)")
_IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
# Plotly's URL carries its version, so browsers may keep it for a year without asking again.
_IMMUTABLE = "public, max-age=31536000, immutable"


def _plotly_asset() -> tuple[str, bytes]:
    import plotly

    data = (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return f"plotly-{plotly.__version__}.min.js", data


class _Asset:
    """A static file held in memory with its ETag and, compressed once on first need, its gzip form."""

    def __init__(self, body: bytes, content_type: str, cache_control: str) -> None:
        self.body = body
        self.content_type = content_type
        self.cache_control = cache_control
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self._gzipped


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any) -> None:
    await _respond(send, status, _JSON.encode(payload), "application/json", {"cache-control": "no-store"})


class DashboardApp:
    """ASGI app: ``/`` the page, ``/api/summary`` its data, ``/static/*`` its scripts and styles.

    ``window`` is the default span (seconds) of the headline numbers; ``refresh_ms`` how often the
    page polls. The history of metric snapshots lives in this object, one per process.
    """

    def __init__(
        self,
        sources: DashboardSources,
        *,
        window: float = 30.0,
        refresh_ms: int = 1000,
        history: MetricsHistory | None = None,
        title: str = "mlscale",
        prefix: str = "",
        snapshots_dir: str | Path | None = None,
        auth: bool = False,
    ) -> None:
        self.sources = sources
        # The page asks for an API key and sends it with every data request; the server that
        # mounts the dashboard checks it (the page shell and scripts hold no data).
        self.auth = auth
        self.snapshots_dir = Path(snapshots_dir) if snapshots_dir is not None else None
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.window = window
        self.refresh_ms = refresh_ms
        self.history = history or MetricsHistory()
        self.title = title
        self._lock = asyncio.Lock()
        plotly_name, plotly_body = _plotly_asset()
        self.assets: dict[str, _Asset] = {
            plotly_name: _Asset(plotly_body, _TYPES[".js"], _IMMUTABLE),
        }
        for name in ("dashboard.js", "dashboard.css"):
            body = (_STATIC / name).read_bytes()
            self.assets[name] = _Asset(body, _TYPES["." + name.rsplit(".", 1)[1]], "no-cache")
        page = (_STATIC / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{PLOTLY}}", plotly_name).replace("{{TITLE}}", title)
        page = page.replace("{{REFRESH_MS}}", str(int(refresh_ms))).replace("{{AUTH}}", "1" if auth else "0")
        page = page.replace("{{ASSET_VERSION}}", self.assets["dashboard.js"].etag.strip('"')[:12])
        self.page = page.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        route = path[len(root) :] if root and path.startswith(root) else path
        # A server that dispatches on the prefix without setting root_path: strip it ourselves.
        if self.prefix and (route == self.prefix or route.startswith(self.prefix + "/")):
            route, root = route[len(self.prefix) :], root + self.prefix
        method = scope["method"]
        if route == "":
            await _respond(send, 307, b"", "text/plain", {"location": root + "/"})
            return
        if method not in ("GET", "HEAD"):
            await _json(send, 405, {"error": f"method {method} not allowed; the dashboard is read-only"})
            return
        if route in ("/", "/index.html"):
            await _respond(send, 200, self.page, "text/html; charset=utf-8", {"cache-control": "no-cache"})
        elif route == "/api/summary":
            await self._summary(scope, send)
        elif route.startswith("/static/") and route[len("/static/") :] in self.assets:
            await self._asset(scope, send, self.assets[route[len("/static/") :]])
        elif route.startswith("/snapshots/") and self.snapshots_dir is not None:
            await self._snapshot(send, route[len("/snapshots/") :])
        else:
            await _json(send, 404, {"error": f"no dashboard resource at {route}"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _asset(self, scope: Scope, send: Send, asset: _Asset) -> None:
        headers = _headers(scope)
        extra = {"etag": asset.etag, "cache-control": asset.cache_control, "vary": "accept-encoding"}
        if asset.etag in headers.get("if-none-match", ""):
            await send(
                {
                    "type": "http.response.start",
                    "status": 304,
                    "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = asset.body
        if "gzip" in headers.get("accept-encoding", "") and len(body) > 1024:
            body = await asyncio.to_thread(asset.gzipped)
            extra["content-encoding"] = "gzip"
        await _respond(send, 200, body, asset.content_type, extra)

    async def _snapshot(self, send: Send, name: str) -> None:
        """An anomaly event's picture from the events folder; only plain image names, never a path."""
        match = _SNAPSHOT_NAME.fullmatch(name)
        path = self.snapshots_dir / name if match else None
        if path is None or not path.is_file():
            await _json(send, 404, {"error": f"no snapshot named {name!r}"})
            return
        body = await asyncio.to_thread(path.read_bytes)
        # Event snapshots are written once under a unique name and never change.
        extra = {"cache-control": "public, max-age=86400"}
        await _respond(send, 200, body, _IMAGE_TYPES[match.group(1).lower()], extra)

    def _window(self, scope: Scope) -> float:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "window" not in query:
            return self.window
        raw = query["window"][-1]
        try:
            window = float(raw)
        except ValueError:
            raise ValueError(f"window must be a number of seconds, got {raw!r}") from None
        if not math.isfinite(window) or not 1.0 <= window <= self.history.max_age:
            raise ValueError(f"window must be between 1 and {self.history.max_age:g} seconds, got {raw}")
        return window

    async def _summary(self, scope: Scope, send: Send) -> None:
        try:
            window = self._window(scope)
        except ValueError as exc:
            await _json(send, 400, {"error": str(exc)})
            return
        await _json(send, 200, await self.summary(window))

    async def summary(self, window: float | None = None) -> dict[str, Any]:
        """Everything the page draws, as one JSON-able dict (also handy for tests and other clients)."""
        window = self.window if window is None else window
        metrics = await self._metrics(window)
        return {
            "time": time.time(),
            "title": self.title,
            "window_seconds": window,
            "refresh_ms": self.refresh_ms,
            "metrics": metrics,
            "models": await self._panel(self.sources.models, None),
            "drift": await self._panel(self.sources.drift, drift_panel),
            "alerts": await self._panel(self.sources.alerts, alerts_panel),
            "cameras": await self._panel(
                self.sources.cameras, partial(cameras_panel, snapshots=self.snapshots_dir is not None)
            ),
        }

    async def _metrics(self, window: float) -> dict[str, Any]:
        source = self.sources.metrics_text
        if source is None:
            return {"status": "not configured"}
        # Scraping, parsing and the arithmetic run in a thread: with many models the text has
        # thousands of lines, and the event loop beside us is serving inference.
        async with self._lock:
            return await asyncio.to_thread(self._scrape, source, window, time.time())

    def _scrape(self, source: Callable[[], str | None], window: float, now: float) -> dict[str, Any]:
        error = None
        if self.history.due(now):
            try:
                text = source()
                if text is None:
                    return {"status": "not configured"}
                self.history.add(text, now)
            except Exception as exc:  # a broken source must not take the page down
                log.warning("dashboard metrics source failed: %s", exc)
                error = f"{type(exc).__name__}: {exc}"
        return {"status": "error" if error else "ok", "error": error, **self.history.summary(window)}

    async def _panel(self, source: Callable[[], Any] | None, shape: Callable[[Any], Any] | None) -> dict[str, Any]:
        if source is None:
            return {"status": "not configured", "data": None}
        try:
            data = await asyncio.to_thread(source)
            if data is None:
                return {"status": "not configured", "data": None}
            return {"status": "ok", "data": shape(data) if shape else data}
        except Exception as exc:  # one failing panel shows its error; the others still draw
            log.warning("dashboard source %s failed: %s", getattr(source, "__name__", source), exc)
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "data": None}


def create_dashboard_app(
    sources: DashboardSources,
    *,
    window: float = 30.0,
    refresh_ms: int = 1000,
    title: str = "mlscale",
    prefix: str = "",
    snapshots_dir: str | Path | None = None,
    auth: bool = False,
) -> DashboardApp:
    """Build the dashboard ASGI app.

    Mount it with :func:`mount_dashboard`, or under any router that sets ``root_path``; a router
    that passes the full path without ``root_path`` (a plain prefix dispatch) needs ``prefix`` set to
    the same prefix. ``snapshots_dir`` is the vision events' ``snapshots`` folder, served at
    ``snapshots/<name>`` so camera events show their pictures. ``auth`` makes the page ask for an
    API key and send it (the mounting server checks it).
    """
    return DashboardApp(
        sources,
        window=window,
        refresh_ms=refresh_ms,
        title=title,
        prefix=prefix,
        snapshots_dir=snapshots_dir,
        auth=auth,
    )


def mount_dashboard(app: ASGIApp, dashboard: ASGIApp, prefix: str = "/dashboard") -> ASGIApp:
    """Wrap ``app`` so ``prefix`` goes to the dashboard and ``/`` redirects there; the rest is ``app``'s.

    The dashboard gets ``root_path`` extended by the prefix and the path unchanged (ASGI's convention,
    as Starlette's ``Mount``); lifespan events go to ``app`` only.
    """
    prefix = "/" + prefix.strip("/")

    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            path = scope["path"]
            route = path[len(root) :] if root and path.startswith(root) else path
            if route == "/" and scope["type"] == "http":
                await _respond(send, 307, b"", "text/plain", {"location": root + prefix + "/"})
                return
            if route == prefix or route.startswith(prefix + "/"):
                await dashboard({**scope, "root_path": root + prefix}, receive, send)
                return
        await app(scope, receive, send)

    return mounted
