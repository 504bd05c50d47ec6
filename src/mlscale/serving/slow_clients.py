"""uvicorn's HTTP protocol with a header timeout: a slow or silent client cannot hold a connection.

uvicorn bounds the idle time between two requests (``timeout_keep_alive``) but not the time a client
takes to send a request's headers, nor the time a fresh connection may stay silent: a slowloris client
(one header byte every few seconds) or thousands of idle sockets would each keep a connection open for
ever. This protocol arms a timer when the connection opens and when a request's first byte arrives,
disarms it when the headers are complete, and answers 408 and closes when it fires. The body read
timeout lives in the app (``InferenceApp._read_body``), where the request is known.

The timeout comes from the environment (``MLSCALE_HEADER_TIMEOUT``, set by ``run_server``) because
uvicorn builds protocols inside worker processes from a pickled config: a class attribute set in the
parent would not reach them.
"""

from __future__ import annotations

import asyncio
import os

from mlscale.auth.tls_protocol import PromptShutdownProtocol

HEADER_TIMEOUT_ENV = "MLSCALE_HEADER_TIMEOUT"
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class HeaderTimeoutProtocol(PromptShutdownProtocol):
    """uvicorn's httptools protocol plus a deadline on each request's headers (and on a new
    connection's silence); idle TLS connections are dropped at shutdown (see auth/tls_protocol.py)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, "10"))
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its body has its own timeout in the app
        body = b'{"error": "the request headers did not arrive within %g s"}' % self.header_timeout
        self.transport.write(_RESPONSE_408 % (len(body), body))
        self.transport.close()
