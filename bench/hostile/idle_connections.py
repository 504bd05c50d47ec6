"""Hold N idle connections open against a running `mlscale serve` and time a normal request meanwhile.

    python bench/hostile/idle_connections.py --url http://127.0.0.1:8000 --connections 5000

The server needs file descriptors for N connections too (`ulimit -n` above N in the shell that starts
it). Prints one JSON line: how many connections were held, how long opening them took, and the
latency of /v2/health/ready and of one inference (``--model``, optional) while they were held.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from urllib.parse import urlparse

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--model", help="also POST --body to /v2/models/MODEL/infer while connections are held")
    parser.add_argument("--body", help="the JSON inference request for --model")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        print(f"the hard file descriptor limit {hard} is below {wanted}: raise it (ulimit -Hn)", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    target = urlparse(args.url)
    sockets = []
    started = time.monotonic()
    try:
        for _ in range(args.connections):
            sockets.append(socket.create_connection((target.hostname, target.port or 80), timeout=10))
        opened = time.monotonic() - started
        result = {"connections": len(sockets), "open_seconds": round(opened, 3)}
        with httpx.Client(base_url=args.url, timeout=10) as client:
            begin = time.monotonic()
            result["ready_status"] = client.get("/v2/health/ready").status_code
            result["ready_seconds"] = round(time.monotonic() - begin, 4)
            if args.model:
                begin = time.monotonic()
                response = client.post(f"/v2/models/{args.model}/infer", content=args.body or "{}")
                result["infer_status"] = response.status_code
                result["infer_seconds"] = round(time.monotonic() - begin, 4)
        print(json.dumps(result))
        return 0 if result["ready_status"] == 200 else 1
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
