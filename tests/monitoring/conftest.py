"""A real local HTTP receiver for webhook tests: records JSON bodies, can fail the first requests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = 0
        self.fail_status = 500
        self.received = threading.Condition()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        with self.received:
            self.received.wait_for(lambda: len(self.bodies) >= count, timeout)
        return list(self.bodies)


@pytest.fixture
def webhook_receiver():
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.received:
                receiver.attempts += 1
                failing = receiver.attempts <= receiver.fail_first
                if not failing:
                    receiver.bodies.append(json.loads(body))
                    receiver.received.notify_all()
            self.send_response(receiver.fail_status if failing else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield receiver
    server.shutdown()
    server.server_close()
