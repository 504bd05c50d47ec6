"""`make demo`: train the demo models locally, then run every part of the demo project until Ctrl-C."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import build_repository  # noqa: E402

CURL = """
Try it:
  curl -s localhost:8000/v2/models/iris
  curl -s -X POST localhost:8000/v2/models/iris/infer \\
       -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'
  curl -s -X POST localhost:8000/v2/models/iris/versions/canary/infer \\
       -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[6.7,3.0,5.2,2.3]}]}'
  curl -s localhost:8000/v2/repository/index
  curl -s localhost:8000/metrics | grep mlscale_requests_total
Stop with Ctrl-C.
"""


def main() -> None:
    repository = HERE / ".work" / "models"
    if not (repository / "iris").is_dir():
        print("mlscale demo: training the demo models (iris, iris-onnx, diabetes, mlp-onnx)...", flush=True)
        build_repository(repository)
    print("mlscale demo: models in", repository.relative_to(Path.cwd()) if repository.is_relative_to(Path.cwd())
          else repository)
    print("  server:    http://127.0.0.1:8000/v2")
    print(CURL, flush=True)
    command = [sys.executable, "-m", "mlscale", "up", "--config", str(HERE / "mlscale.toml")]
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
