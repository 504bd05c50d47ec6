"""uvicorn's HTTP protocol (httptools) with a shutdown that does not wait on idle TLS clients.

Closing a TLS connection sends a close_notify and waits (30 s in asyncio and uvloop) for the
client's. A client holding an idle keep-alive connection in its pool (a gateway in front of the
server, a load balancer, any HTTP client library) sends nothing until it next uses the connection,
so a server or gateway serving HTTPS took 30 s to stop. At shutdown an idle connection has nothing
in flight and nothing left to write: it is dropped instead. Shared by ``mlscale serve`` and
``mlscale gateway``, which both run uvicorn with ``[tls]``.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class PromptShutdownProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose graceful shutdown drops idle TLS connections at once."""

    def shutdown(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        super().shutdown()
        transport = self.transport
        if idle and transport.get_extra_info("ssl_object") is not None and transport.get_write_buffer_size() == 0:
            transport.abort()
