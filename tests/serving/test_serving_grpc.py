"""The v2 gRPC protocol with real clients: tritonclient.grpc (sync and aio) and Triton's own generated
stubs (the independent oracle for typed contents), against a real two-worker `mlscale serve`."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from serving_support import DATATYPES
from sklearn.datasets import load_iris
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

IRIS = load_iris().data[:7]
NON_UTF8 = b"\xff\xfe\x00\x80"


@pytest.fixture()
def client(server):
    with triton.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture()
def stub(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _status(exc: InferenceServerException) -> str:
    return exc.status().removeprefix("StatusCode.")


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "mlscale"
    assert {"model_configuration", "statistics"} <= set(meta["extensions"])
    model = client.get_model_metadata("iris-onnx", as_json=True)
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert {o["name"] for o in model["outputs"]} == {"label", "probabilities"}
    assert client.get_model_metadata("iris").versions == ["1", "2"]
    assert client.is_model_ready("iris", "2")
    assert client.is_model_ready("iris", "production")
    with pytest.raises(InferenceServerException) as caught:
        client.is_model_ready("no-such-model")
    assert _status(caught.value) == "NOT_FOUND"


def test_iris_classification_matches_local_model(client, model_repository):
    local = joblib.load(model_repository / "iris" / "1" / "model.joblib")
    tensor = triton.InferInput("input", list(IRIS.shape), "FP64")
    tensor.set_data_from_numpy(IRIS)
    result = client.infer("iris", [tensor], model_version="1", request_id="r-17")
    np.testing.assert_array_equal(result.as_numpy("label"), local.predict(IRIS))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), local.predict_proba(IRIS))
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("iris", "1", "r-17")


def _value(datatype: str, rows: int) -> np.ndarray:
    rng = np.random.default_rng(len(datatype))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=(rows, 3)).astype(bool)
    if datatype == "BYTES":  # UTF-8, empty, and bytes that are not text at all
        cells = [f"r{r}c{c}-é".encode() for r in range(rows) for c in range(3)]
        cells[1], cells[2] = b"", NON_UTF8
        return np.array(cells, dtype=object).reshape(rows, 3)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        return rng.normal(size=(rows, 3)).astype(dtype)
    info = np.iinfo(dtype)  # the extremes of each integer type, not only small values
    values = rng.integers(max(info.min, -1000), min(info.max, 1000), size=(rows, 3)).astype(dtype)
    values[0, 0], values[0, 1] = info.min, info.max
    return values


def _check_equal(got: np.ndarray, value: np.ndarray, name: str) -> None:
    assert got.shape == value.shape, name
    if value.dtype == object:
        assert [bytes(v) for v in got.ravel()] == list(value.ravel()), name
    else:
        assert got.dtype == value.dtype, name
        np.testing.assert_array_equal(got, value, err_msg=name)


def _echo_inputs(module) -> tuple[list, dict]:
    inputs, expected = [], {}
    for datatype in DATATYPES:
        value = _value(datatype, rows=2)
        tensor = module.InferInput(f"in_{datatype}", [2, 3], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
        expected[f"out_{datatype}"] = value
    return inputs, expected


def test_every_datatype_round_trips_raw_sync(client):
    inputs, expected = _echo_inputs(triton)
    outputs = [triton.InferRequestedOutput(name) for name in expected]
    result = client.infer("echo", inputs, outputs=outputs)
    for name, value in expected.items():
        _check_equal(result.as_numpy(name), value, name)


def test_every_datatype_round_trips_raw_aio(server):
    async def scenario():
        async with triton_aio.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_ready()
            inputs, expected = _echo_inputs(triton_aio)
            results = await asyncio.gather(*(c.infer("echo", inputs) for _ in range(8)))  # batched together
            return results, expected

    results, expected = asyncio.run(scenario())
    for result in results:
        for name, value in expected.items():
            _check_equal(result.as_numpy(name), value, name)


_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _typed_request(datatypes: list[str], model: str = "echo-typed") -> tuple[service_pb2.ModelInferRequest, dict]:
    request = service_pb2.ModelInferRequest(model_name=model)
    expected = {}
    for datatype in datatypes:
        value = _value(datatype, rows=2)
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[2, 3])
        getattr(tensor.contents, _TYPED_FIELD[datatype]).extend(value.ravel().tolist())
        expected[f"out_{datatype}"] = value
    return request, expected


def test_typed_contents_of_every_datatype_come_back_typed(stub):
    """Triton's generated messages, not tritonclient's helpers: typed in, typed out, per the spec."""
    typed = [d for d in DATATYPES if d != "FP16"]  # FP16 has no typed field
    request, expected = _typed_request(typed)
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents
    by_name = {o.name: o for o in response.outputs}
    for name, value in expected.items():
        output = by_name[name]
        datatype = name.removeprefix("out_")
        assert output.datatype == datatype and list(output.shape) == [2, 3], name
        got = list(getattr(output.contents, _TYPED_FIELD[datatype]))
        assert got == value.ravel().tolist(), name


def test_fp16_travels_raw_only(stub):
    typed = [d for d in DATATYPES if d != "FP16"]
    request, expected = _typed_request(typed, model="echo")
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[2, 3])  # no typed field exists for it
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in_FP16" in caught.value.details() and "raw_input_contents" in caught.value.details()
    raw = service_pb2.ModelInferRequest(model_name="echo")
    expected["out_FP16"] = _value("FP16", rows=2)
    for datatype in DATATYPES:
        raw.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[2, 3])
        value = expected[f"out_{datatype}"]
        if datatype == "BYTES":
            raw.raw_input_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in value.ravel()))
        else:
            raw.raw_input_contents.append(value.tobytes())
    raw.outputs.add(name="out_FP16")
    response = stub.ModelInfer(raw)
    assert [o.name for o in response.outputs] == ["out_FP16"] and len(response.raw_output_contents) == 1
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float16).reshape(2, 3)
    np.testing.assert_array_equal(got, expected["out_FP16"])


def _infer_error(client, model: str, tensor, outputs=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor], outputs=outputs)
    return caught.value


def test_unknown_model_and_version_are_not_found(client):
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(IRIS[:1].astype(np.float32))
    error = _infer_error(client, "no-such-model", tensor)
    assert _status(error) == "NOT_FOUND" and "unknown model" in error.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris-onnx", [tensor], model_version="9")
    assert _status(caught.value) == "NOT_FOUND"
    assert client.is_server_live()


@pytest.mark.parametrize(
    ("datatype", "shape", "fragment"),
    [("FP64", [1, 4], "expects FP32"), ("FP32", [1, 3], "expects [-1, 4]")],
)
def test_input_the_model_does_not_take_is_invalid_argument(client, datatype, shape, fragment):
    tensor = triton.InferInput("input", shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=datatype.lower().replace("fp", "float")))
    error = _infer_error(client, "iris-onnx", tensor)
    assert _status(error) == "INVALID_ARGUMENT" and fragment in error.message()


def test_unknown_output_and_model_failure_are_invalid_argument(client):
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(IRIS[:1].astype(np.float32))
    error = _infer_error(client, "iris-onnx", tensor, [triton.InferRequestedOutput("nope")])
    assert _status(error) == "INVALID_ARGUMENT" and "nope" in error.message()
    negative = triton.InferInput("x", [1, 2], "FP64")
    negative.set_data_from_numpy(np.array([[1.0, -1.0]]))
    error = _infer_error(client, "picky", negative)
    assert _status(error) == "INVALID_ARGUMENT" and "negative values are not allowed" in error.message()


def test_malformed_messages_are_invalid_argument(stub):
    def error_of(request) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        return caught.value

    short = service_pb2.ModelInferRequest(model_name="iris-onnx")
    short.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    short.raw_input_contents.append(b"\0" * 16)  # 4 floats for a tensor of 8
    assert "needs 32 bytes" in error_of(short).details()
    missing = service_pb2.ModelInferRequest(model_name="iris-onnx")
    missing.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    missing.inputs.add(name="other", datatype="FP32", shape=[1, 4])
    missing.raw_input_contents.append(b"\0" * 16)
    assert "2 inputs" in error_of(missing).details()
    wrong_count = service_pb2.ModelInferRequest(model_name="iris-onnx")
    wrong_count.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0, 2.0])
    assert "needs 4 elements" in error_of(wrong_count).details()
    out_of_range = service_pb2.ModelInferRequest(model_name="echo")
    out_of_range.inputs.add(name="in_INT8", datatype="INT8", shape=[1, 3]).contents.int_contents.extend([1, 2, 300])
    assert "out of range for INT8" in error_of(out_of_range).details()
    unknown_type = service_pb2.ModelInferRequest(model_name="echo")
    unknown_type.inputs.add(name="in_INT8", datatype="INT3", shape=[1]).contents.int_contents.append(1)
    assert "unknown datatype 'INT3'" in error_of(unknown_type).details()
    assert "no inputs" in error_of(service_pb2.ModelInferRequest(model_name="echo")).details()


def _slow(ms: float, module=triton):
    tensor = module.InferInput("ms", [1], "FP32")
    tensor.set_data_from_numpy(np.array([ms], dtype=np.float32))
    return tensor


def test_a_full_queue_answers_unavailable_with_retry_after(server):
    """slow: one row per batch, at most 2 waiting; 8 concurrent calls on one connection (one worker)."""

    async def scenario():
        async with triton_aio.InferenceServerClient(server.grpc_url) as c:
            return await asyncio.gather(
                *(c.infer("slow", [_slow(300, triton_aio)]) for _ in range(8)), return_exceptions=True
            )

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and served, results
    assert {_status(r) for r in refused} == {"UNAVAILABLE"}, [r.message() for r in refused]
    # The refusal carries Retry-After as trailing metadata, as REST's 503 carries the header.
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="slow")
        request.inputs.add(name="ms", datatype="FP32", shape=[1]).contents.fp32_contents.append(300)
        calls = [stub.ModelInfer.future(request) for _ in range(6)]
        errors = [c.exception() for c in calls if c.exception() is not None]
    assert errors and all(e.code() == grpc.StatusCode.UNAVAILABLE for e in errors)
    assert all(int(dict(e.trailing_metadata())["retry-after"]) >= 1 for e in errors)


def test_deadlines_are_deadline_exceeded(client):
    # The server's own deadline (tritonclient's `timeout` parameter, microseconds).
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow", [_slow(400)], timeout=100_000)
    assert _status(caught.value) == "DEADLINE_EXCEEDED"
    assert "deadline passed" in caught.value.message()
    # The client's gRPC deadline: the server gives up on the call too.
    with pytest.raises(InferenceServerException) as caught:
        client.infer("slow", [_slow(400)], client_timeout=0.1)
    assert _status(caught.value) == "DEADLINE_EXCEEDED"
    assert client.is_model_ready("slow")


def test_aio_client_sees_the_same_error_statuses(server):
    async def status_of(call) -> str:
        with pytest.raises(InferenceServerException) as caught:
            await call
        return _status(caught.value)

    async def scenario():
        async with triton_aio.InferenceServerClient(server.grpc_url) as c:
            good = triton_aio.InferInput("input", [1, 4], "FP32")
            good.set_data_from_numpy(IRIS[:1].astype(np.float32))
            wrong = triton_aio.InferInput("input", [1, 4], "FP64")
            wrong.set_data_from_numpy(IRIS[:1])
            rows = triton_aio.InferInput("x", [1, 2], "FP64")
            rows.set_data_from_numpy(np.ones((1, 2)))
            return [
                await status_of(c.infer("no-such-model", [good])),
                await status_of(c.infer("iris-onnx", [wrong])),
                # picky waits up to 20 ms for a batch to fill: a 1 us deadline passes in its queue.
                await status_of(c.infer("picky", [rows], timeout=1)),
                await status_of(c.get_model_metadata("no-such-model")),
            ]

    assert asyncio.run(scenario()) == ["NOT_FOUND", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND"]


def test_grpc_and_rest_share_batches_metrics_and_statistics(server, client):
    """Triton's statistics extension over both transports, summed over both workers."""
    with triton_http.InferenceServerClient(server.url.removeprefix("http://")) as rest:
        before = rest.get_inference_statistics("picky", "1")["model_stats"][0]
        grpc_before = client.get_inference_statistics("picky", "1", as_json=True)["model_stats"][0]
        assert int(grpc_before.get("inference_count", 0)) == before["inference_count"]

        async def burst():
            async with triton_aio.InferenceServerClient(server.grpc_url) as c:
                tensor = triton_aio.InferInput("x", [3, 2], "FP64")
                tensor.set_data_from_numpy(np.ones((3, 2)))
                return await asyncio.gather(*(c.infer("picky", [tensor]) for _ in range(20)))

        results = asyncio.run(burst())
        assert all(r.as_numpy("y").tolist() == [[2.0, 2.0]] * 3 for r in results)
        for _ in range(5):
            body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
            assert httpx.post(server.url + "/v2/models/picky/infer", json=body).status_code == 200
        after = rest.get_inference_statistics("picky", "1")["model_stats"][0]
        grpc_after = client.get_inference_statistics("picky", as_json=True)["model_stats"][0]
        every = rest.get_inference_statistics()["model_stats"]
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert success == 25
    assert after["inference_count"] - before["inference_count"] == 20 * 3 + 5
    executions = after["execution_count"] - before["execution_count"]
    assert executions < 25  # the 20 concurrent gRPC calls shared batches (max_delay 20 ms)
    assert int(grpc_after["inference_count"]) == after["inference_count"]
    assert int(grpc_after["inference_stats"]["success"]["count"]) == after["inference_stats"]["success"]["count"]
    assert {("picky", "1"), ("iris", "1"), ("iris", "2")} <= {(s["name"], s["version"]) for s in every}
    metrics = httpx.get(server.url + "/metrics").text
    assert 'mlscale_requests_total{model="picky",outcome="success",version="1"}' in metrics


def test_model_configuration_over_rest_and_grpc_agree(server, client):
    with triton_http.InferenceServerClient(server.url.removeprefix("http://")) as rest:
        config = rest.get_model_config("iris-onnx")
        unbatched = rest.get_model_config("slow")
        with pytest.raises(InferenceServerException, match="unknown model"):
            rest.get_model_config("no-such-model")
    assert config["max_batch_size"] == 64  # the default of model.toml
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]} in config["output"]
    assert config["platform"] == "onnxruntime_onnx"
    assert unbatched["max_batch_size"] == 0 and unbatched["input"][0]["dims"] == [-1]  # max_batch_size = 1
    over_grpc = client.get_model_config("iris-onnx", as_json=True)["config"]
    assert over_grpc["max_batch_size"] == 64
    assert over_grpc["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert client.get_model_config("iris-onnx").config.output[1].dims == [3]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("no-such-model")
    assert _status(caught.value) == "NOT_FOUND"


WHOAMI_MODEL = '''
import os
import numpy as np

class Model:
    """Answers with the id of the worker process that ran it."""
    def predict(self, inputs):
        return {"pid": np.full(len(inputs["x"]), os.getpid(), dtype=np.int64)}
'''

CACHED_MODEL = '''
class Model:
    """Adds one; cached, so repeats are answered from the worker's L1."""
    def predict(self, inputs):
        return {"y": inputs["x"] + 1}
'''


def _toml(output: str, output_type: str, extra: str = "") -> str:
    return (
        f'execution = "thread"\n{extra}[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 2]\n'
        f'[[outputs]]\nname = "{output}"\ndatatype = "{output_type}"\nshape = [-1{", 2" if output == "y" else ""}]\n'
    )


def test_workers_share_the_grpc_port_with_cache_and_payload_log(tmp_path):
    """Two workers each serve gRPC on one port; the prediction cache and the payload log see gRPC calls."""
    from pyarrow import parquet
    from serving_support import RunningServer, write_python_model

    from mlscale.monitoring.payload_reader import PayloadReader

    repository = tmp_path / "models"
    write_python_model(repository, "whoami", WHOAMI_MODEL, _toml("pid", "INT64"))
    write_python_model(repository, "cached", CACHED_MODEL, _toml("y", "FP32", "[cache]\nenabled = true\n"))
    config = tmp_path / "mlscale.toml"
    config.write_text('[monitoring.payload_log]\nenabled = true\ndirectory = "payload"\nsample_rate = 1.0\n')
    server = RunningServer(repository, workers=2, config=config)
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    try:
        # A new connection each time; the kernel spreads them over the workers that listen. The server
        # is ready as soon as one worker is, so the other may join a little later: bounded attempts.
        pids = set()
        for _ in range(200):
            with grpc.insecure_channel(server.grpc_url, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                request = service_pb2.ModelInferRequest(model_name="whoami")
                request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1, 2])
                response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
                pids.add(response.outputs[0].contents.int64_contents[0])
            if len(pids) == 2:
                break
        assert len(pids) == 2
        with triton.InferenceServerClient(server.grpc_url) as client:  # one connection: one worker's L1
            tensor = triton.InferInput("x", [1, 2], "FP32")
            tensor.set_data_from_numpy(x)
            sources = []
            for _ in range(2):
                result = client.infer("cached", [tensor])
                np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
                sources.append(result.get_response().parameters["cache"].string_param)
        assert sources == ["miss", "l1"]
    finally:
        assert server.stop() == 0
    files = PayloadReader(tmp_path / "payload").files("cached")
    assert sum(parquet.read_table(f).num_rows for f in files) == 2


def test_serve_refuses_a_grpc_port_it_cannot_have(tmp_path, model_repository):
    import socket
    import subprocess
    import sys

    from serving_support import free_port

    mlscale = [sys.executable, "-m", "mlscale", "serve", "--model-repository", str(model_repository)]
    port = free_port()
    same = subprocess.run([*mlscale, "--port", str(port), "--grpc-port", str(port)], capture_output=True, text=True)
    assert same.returncode != 0 and "is also the HTTP --port" in same.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = subprocess.run(
            [*mlscale, "--port", str(free_port()), "--grpc-port", str(busy)], capture_output=True, text=True
        )
    assert result.returncode != 0 and f"cannot listen for gRPC on 127.0.0.1:{busy}" in result.stderr


def test_sigterm_drains_grpc_calls_in_flight(tmp_path):
    import time

    from serving_support import SLOW_MODEL, RunningServer, write_python_model

    repository = tmp_path / "models"
    write_python_model(
        repository,
        "slow",
        SLOW_MODEL,
        'max_batch_size = 1\nexecution = "thread"\n[[inputs]]\nname = "ms"\ndatatype = "FP32"\nshape = [-1]\n'
        '[[outputs]]\nname = "ms_out"\ndatatype = "FP32"\nshape = [-1]\n',
    )
    running = RunningServer(repository, workers=1)
    marker = repository / "slow" / "started"
    with grpc.insecure_channel(running.grpc_url) as channel:
        request = service_pb2.ModelInferRequest(model_name="slow")
        request.inputs.add(name="ms", datatype="FP32", shape=[1]).contents.fp32_contents.append(800)
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request, timeout=30)
        until = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < until:  # the model touches it when it starts
            time.sleep(0.02)
        assert marker.exists(), "the slow call never started"
        assert running.stop() in (0, -15)  # uvicorn re-raises SIGTERM after draining
        response = call.result()
    assert list(response.outputs[0].contents.fp32_contents) == [800.0]
