"""Model repositories and running `mlscale serve` processes for tests (real processes, real HTTP)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "examples" / "demo"))

import models as demo_models  # noqa: E402

DATATYPES = [
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

ECHO_MODEL = '''
class Model:
    """Returns every input unchanged, as the output of the same datatype."""
    def predict(self, inputs):
        return {"out_" + name[3:]: value for name, value in inputs.items()}
'''

SLOW_MODEL = '''
import time
from pathlib import Path
import numpy as np

class Model:
    """Sleeps as many milliseconds as its input says; touches a marker file when it starts."""
    def load(self, path):
        self.marker = Path(path).parent / "started"
    def predict(self, inputs):
        self.marker.touch()
        time.sleep(float(inputs["ms"].max()) / 1000)
        return {"ms_out": inputs["ms"] * 1}
'''

PICKY_MODEL = '''
import numpy as np

class Model:
    """Fails on negative input; otherwise returns 2x, and counts its calls and batch sizes."""
    calls = []
    def predict(self, inputs):
        x = inputs["x"]
        Model.calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative values are not allowed")
        return {"y": x * 2}
'''


def write_python_model(repository: Path, name: str, source: str, toml: str, version: str = "1") -> Path:
    folder = repository / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    (folder / "model.toml").write_text(toml)
    return folder


def echo_toml(datatypes: list[str] = DATATYPES) -> str:
    lines = []
    for kind in ("inputs", "outputs"):
        prefix = "in_" if kind == "inputs" else "out_"
        for datatype in datatypes:
            lines.append(f'[[{kind}]]\nname = "{prefix}{datatype}"\ndatatype = "{datatype}"\nshape = [-1, 3]\n')
    return "\n".join(lines)


def build_test_repository(root: Path) -> Path:
    demo_models.train_iris(root, versions=("1", "2"), trees=5)
    (root / "iris" / "model.toml").write_text(
        'aliases = { production = "1", canary = "2" }\ntraffic = { production = 90, canary = 10 }\n'
    )
    demo_models.train_iris_onnx(root)
    write_python_model(root, "echo", ECHO_MODEL, echo_toml())
    # Every datatype gRPC can carry as typed contents (FP16 travels raw only).
    write_python_model(root, "echo-typed", ECHO_MODEL, echo_toml([d for d in DATATYPES if d != "FP16"]))
    write_python_model(
        root,
        "slow",
        SLOW_MODEL,
        'max_batch_size = 1\nmax_queue_size = 2\nmax_waiting = 2\nexecution = "thread"\n'
        '[[inputs]]\nname = "ms"\ndatatype = "FP32"\nshape = [-1]\n'
        '[[outputs]]\nname = "ms_out"\ndatatype = "FP32"\nshape = [-1]\n',
    )
    write_python_model(
        root,
        "picky",
        PICKY_MODEL,
        'max_batch_size = 256\nmax_delay = 0.02\nexecution = "thread"\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP64"\nshape = [-1, 2]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP64"\nshape = [-1, 2]\n',
    )
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """A real `mlscale serve` process and its base URL."""

    def __init__(
        self,
        repository: Path,
        workers: int = 2,
        extra: list[str] | None = None,
        config: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Always a free gRPC port: the default (8001) would be shared between servers through SO_REUSEPORT.
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        command = [
            str(Path(sys.executable).parent / "mlscale"),
            "serve",
            "--model-repository",
            str(repository),
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--grpc-port",
            str(self.grpc_port),
            *(extra or []),
        ]
        if config is not None:
            command += ["--config", str(config)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            self.wait_ready(ready_timeout)
        except BaseException:  # a server that never became ready must not outlive the test
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
