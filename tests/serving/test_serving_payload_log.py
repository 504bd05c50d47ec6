"""The server samples requests and responses into the payload log; SIGTERM loses none of them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from serving_support import RunningServer, build_test_repository

from mlscale.monitoring.payload_reader import PayloadReader


def test_every_answered_request_reaches_the_payload_log_after_sigterm(tmp_path: Path):
    repository = build_test_repository(tmp_path / "models")
    config = tmp_path / "mlscale.toml"
    config.write_text(
        '[monitoring.payload_log]\nenabled = true\ndirectory = "payload"\nsample_rate = 1.0\n'
        'sample_rates = { "iris-onnx" = 0.0 }\n'
    )
    server = RunningServer(repository, workers=2, config=config)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    try:
        for i in range(30):
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": rows[i % 3]}]}
            assert httpx.post(server.url + "/v2/models/iris/versions/1/infer", json=body).status_code == 200
            onnx = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": rows[i % 3]}]}
            assert httpx.post(server.url + "/v2/models/iris-onnx/infer", json=onnx).status_code == 200
    finally:
        server.stop()
    files = PayloadReader(tmp_path / "payload").files("iris")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.num_rows == 30
    assert sorted(set(table.column("input_0").to_pylist())) == [5.1, 5.9, 6.7]
    assert "out_label" in table.column_names
    assert PayloadReader(tmp_path / "payload").files("iris-onnx") == []
