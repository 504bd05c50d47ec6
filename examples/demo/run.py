"""`make demo`: train the demo models locally, then run every part of the demo project until Ctrl-C."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from features_data import train_driver_risk, write_driver_profiles, write_driver_stats  # noqa: E402
from models import build_repository, write_iris_reference  # noqa: E402
from semantic_search import QUERIES, add_text_model, search  # noqa: E402
from traffic import run_traffic  # noqa: E402

CURL = """
Try it:
  curl -s localhost:8000/v2/models/iris
  curl -s -X POST localhost:8000/v2/models/iris/infer \\
       -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'
  curl -s -X POST localhost:8000/v2/models/iris/versions/canary/infer \\
       -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[6.7,3.0,5.2,2.3]}]}'
  curl -s -X POST localhost:8000/v1/features \\
       -d '{"feature_service":"driver_risk","entities":{"driver_id":[1001,1002]}}'
  curl -s -X POST localhost:8000/v1/features \
       -d '{"features":["driver_profile:*"],"entities":{"driver_id":[1001]}}'
  curl -s -X POST localhost:8000/v2/models/driver-risk/infer \\
       -d '{"inputs":[{"name":"driver_id","shape":[2],"datatype":"INT64","data":[1001,1002]}]}'
  curl -s -X POST localhost:8000/v1/events/trips -d '[{"driver_id":1001,"ts":1767225600,"fare":12.5}]'
  .venv/bin/mlscale stream lag --config examples/demo/mlscale.toml
  curl -s localhost:8000/v2/repository/index
  curl -s localhost:8000/metrics | grep mlscale_requests_total
Stop with Ctrl-C.
"""


def mlscale(*args: str) -> None:
    """Run one mlscale command of the demo project; stop the demo if it fails."""
    subprocess.run(
        [sys.executable, "-m", "mlscale", *args, "--config", str(HERE / "mlscale.toml")], check=True, cwd=HERE
    )


def show_semantic_search(base_url: str, stop: threading.Event) -> None:
    """Once the text model is ready, run the sample queries through the server and print the hits."""
    import httpx

    for _ in range(600):  # up to ~5 minutes while the workers load the model
        if stop.wait(0.5):
            return
        try:
            if httpx.get(f"{base_url}/v2/models/minilm/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
    else:
        return
    try:
        results = search(base_url, list(QUERIES)[:3], top=2)
    except httpx.HTTPError as exc:
        print(f"mlscale demo: semantic search failed: {exc}", flush=True)
        return
    lines = ["\nmlscale demo: semantic search over 288 sentences embedded by the minilm model:"]
    for query, hits in results.items():
        lines.append(f"  {query!r}: " + " | ".join(f"{score:.2f} {sentence}" for score, sentence in hits))
    lines.append('  try: .venv/bin/python examples/demo/semantic_search.py "my train was late"\n')
    print("\n".join(lines), flush=True)


def main() -> None:
    repository = HERE / ".work" / "models"
    if not (repository / "iris").is_dir():
        print("mlscale demo: training the demo models (iris, iris-onnx, diabetes, mlp-onnx)...", flush=True)
        build_repository(repository)
        write_iris_reference(HERE / ".work" / "data" / "iris_reference.parquet")
    if not (repository / "driver-risk").is_dir():
        print("mlscale demo: generating driver statistics and the driver-risk model...", flush=True)
        frame = write_driver_stats(HERE / ".work" / "data" / "driver_stats.parquet")
        train_driver_risk(repository, frame)
    text_model = add_text_model(repository)
    if not (HERE / ".work" / "data" / "driver_profiles.parquet").exists():
        write_driver_profiles(HERE / ".work" / "data" / "driver_profiles.parquet")
    print("mlscale demo: applying feature definitions and materializing them online...", flush=True)
    mlscale("features", "apply")
    mlscale("features", "materialize")
    print(
        "mlscale demo: models in",
        repository.relative_to(Path.cwd()) if repository.is_relative_to(Path.cwd()) else repository,
    )
    print("  server:    http://127.0.0.1:8000/v2")
    print("  dashboard: http://127.0.0.1:8000/dashboard/  (requests, latency, batches, cache, drift, alerts, cameras)")
    print(CURL, flush=True)
    command = [sys.executable, "-m", "mlscale", "up", "--config", str(HERE / "mlscale.toml")]
    stop = threading.Event()
    traffic = threading.Thread(target=run_traffic, args=("http://127.0.0.1:8000", stop), daemon=True)
    traffic.start()
    if text_model:
        threading.Thread(target=show_semantic_search, args=("http://127.0.0.1:8000", stop), daemon=True).start()
    print("  traffic:   20 iris + driver-risk requests/s; iris inputs drift after 90 s (watch the alert)\n")
    status = 0
    with contextlib.suppress(KeyboardInterrupt):
        status = subprocess.call(command)
    stop.set()
    sys.exit(status)


if __name__ == "__main__":
    main()
