"""The server's own cost per request, with no HTTP: the ASGI app called in-process in a loop.

Uses the model repository and request bodies `bench/serving/run.py` builds (run it, or --quick,
once first). Prints microseconds per request; ``--profile`` adds cProfile's top functions. This is
where the gap to the hello-world floor lives, since uvicorn's HTTP work is the same for both.

    .venv/bin/python bench/serving/inprocess.py [--model iris|mlp] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".cache" / "bench" / "serving"
sys.path.insert(0, str(ROOT / "src"))

from mlscale.config import Settings  # noqa: E402

# Benchmark name -> the name run.py gives the model in mlscale's repository.
MODEL_NAMES = {"iris": "iris", "mlp": "mlp-onnx"}
from mlscale.serving.server import build_app  # noqa: E402


async def run(model: str, requests: int, profile: bool) -> None:
    repository = WORK / "mlscale-models"
    body_file = WORK / f"{model}-mlscale.json"
    if not repository.exists() or not body_file.exists():
        raise SystemExit("run bench/serving/run.py --quick first: it builds the models and request bodies")
    settings = msgspec.convert(
        {"server": {"model_repository": str(repository), "poll_interval": 0, "grpc_port": 0}}, Settings
    )
    app = build_app(settings)
    lifespan: asyncio.Queue = asyncio.Queue()
    await lifespan.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def lifespan_send(message: dict) -> None:
        if message["type"] == "lifespan.startup.failed":
            raise SystemExit(f"startup failed: {message}")
        started.set()

    lifespan_task = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, lifespan_send))
    await started.wait()
    body = body_file.read_bytes()
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/v2/models/{MODEL_NAMES[model]}/infer",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def many(n: int) -> None:
        for _ in range(n):
            await app(scope, receive, send)

    await many(2_000)  # warm-up
    if set(statuses) != {200}:
        raise SystemExit(f"the server answered {sorted(set(statuses))}")
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        await many(requests)
        timings.append((time.perf_counter() - start) / requests * 1e6)
    print(f"{model}: {sorted(timings)[1]:.1f} us per request in-process (median of 3 x {requests:,})")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await many(requests)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    await lifespan.put({"type": "lifespan.shutdown"})
    await lifespan_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iris", choices=["iris", "mlp"])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.model, args.requests, args.profile))


if __name__ == "__main__":
    main()
