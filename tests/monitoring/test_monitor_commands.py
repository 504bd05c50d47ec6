"""`mlscale monitor report|profile|run` end to end, through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from mlscale.cli import main
from mlscale.config import load_settings
from mlscale.monitoring.monitors import MonitorService, load_latest
from mlscale.monitoring.payload_log import PayloadLog

MLSCALE = str(Path(sys.executable).parent / "mlscale")


@pytest.fixture
def _mlscale(capsys, monkeypatch):
    """Run the CLI's entry point in-process (same code path as the console script, without the
    interpreter start-up): returns the exit status and output."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["mlscale", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
def frames(tmp_path):
    rng = np.random.default_rng(0)
    ref = pa.table(
        {"a": rng.normal(0, 1, 3000), "b": rng.normal(5, 2, 3000), "city": rng.choice(["ams", "ber", "par"], 3000)}
    )
    cur = pa.table(
        {"a": rng.normal(0.8, 1, 1500), "b": rng.normal(5, 2, 1500), "city": rng.choice(["ams", "ber", "par"], 1500)}
    )
    pq.write_table(ref, tmp_path / "ref.parquet")
    _write_csv(cur, tmp_path / "cur.csv")
    return tmp_path


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, path)


def test_report_writes_self_contained_html_with_verdicts(frames, _mlscale):
    out = frames / "report.html"
    done = _mlscale("monitor", "report", str(frames / "ref.parquet"), str(frames / "cur.csv"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "1/3 columns drifted" in done.stdout
    page = out.read_text()
    assert (
        page.count("<svg") == 3
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "Wasserstein distance (normed)" in page and "Jensen-Shannon distance" in page
    assert page.count("<b>drift</b>") == 1 and page.count("<b>no drift</b>") == 2


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.parquet", "no such file"),
        (b"PAR1garbage", "broken.parquet", "cannot read as parquet"),
        (b"x,y\n1,2\n", "other.csv", "no column 'a'"),
        (b"a,b\n", "empty.csv", "has no rows"),
        (b"{}", "data.json", "unknown format"),
    ],
)
def test_report_rejects_bad_files_with_one_line_and_exit_2(frames, content, name, message, _mlscale):
    if content is not None:
        (frames / name).write_bytes(content)
    done = _mlscale("monitor", "report", str(frames / "ref.parquet"), str(frames / name), "-o", str(frames / "r.html"))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (frames / "r.html").exists()


def _project(tmp_path: Path, reference: str, hook_url: str) -> Path:
    (tmp_path / "mlscale.toml").write_text(f"""
[monitoring]
interval = 1
metrics_port = 0
[monitoring.payload_log]
directory = "logs"
[[monitoring.monitors]]
name = "iris-inputs"
model = "iris"
reference = "{reference}"
columns = ["a", "b"]
window_rows = 800
[[monitoring.alerts]]
name = "iris-drift"
metric = "drift_detected"
op = "=="
threshold = 1
match = {{ monitor = "iris-inputs" }}
[[monitoring.channels]]
type = "file"
path = "alerts.jsonl"
[[monitoring.channels]]
type = "webhook"
url = "{hook_url}"
""")
    rng = np.random.default_rng(1)
    log = PayloadLog(tmp_path / "logs", flush_interval=3600)
    for _ in range(10):
        log.record("iris", "1", {"a": rng.normal(0.8, 1, 100), "b": rng.normal(5, 2, 100)}, {"label": np.zeros(100)})
    log.close()
    return tmp_path / "mlscale.toml"


def test_monitor_run_once_reads_the_window_alerts_and_writes_state(frames, webhook_receiver, _mlscale):
    profile = _mlscale("monitor", "profile", str(frames / "ref.parquet"), "-o", str(frames / "ref.npz"))
    assert profile.returncode == 0, profile.stderr
    config = _project(frames, "ref.npz", webhook_receiver.url)
    # The real console script, once: what an operator runs.
    done = subprocess.run(
        [MLSCALE, "monitor", "run", "--config", str(config), "--once"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "iris-inputs: 1/2 drifted (share 0.50) a" in done.stdout
    state = load_latest(frames / "monitoring" / "latest.json")
    result = state["monitors"]["iris-inputs"]
    assert result["current_rows"] == 800
    a = result["columns"][0]
    assert a["column"] == "a" and a["test"] == "wasserstein" and a["drifted"] and a["threshold"] == 0.1
    assert len(a["reference"]["counts"]) == 20 and sum(a["current"]["counts"]) == 800
    alerts = [json.loads(x) for x in (frames / "alerts.jsonl").read_text().splitlines()]
    assert [(x["status"], x["labels"]["feature"]) for x in alerts] == [("firing", "a")]
    assert webhook_receiver.wait_for(1)[0]["labels"]["feature"] == "a"
    assert state["alerts"]["active"][0]["state"] == "firing"


def test_monitor_service_exports_prometheus_gauges(frames, webhook_receiver):
    config = _project(frames, "ref.parquet", webhook_receiver.url)
    settings = load_settings(config)
    service = MonitorService.from_settings(settings.monitoring, settings.resolve)
    state = service.run_once()
    service.close()
    assert service.latest() == state
    share = REGISTRY.get_sample_value("mlscale_dataset_drift_share", {"monitor": "iris-inputs"})
    assert share == 0.5
    assert REGISTRY.get_sample_value("mlscale_drift_detected", {"monitor": "iris-inputs", "feature": "a"}) == 1
    score = REGISTRY.get_sample_value(
        "mlscale_drift_score", {"monitor": "iris-inputs", "feature": "b", "test": "wasserstein"}
    )
    assert score == pytest.approx(state["monitors"]["iris-inputs"]["columns"][1]["value"])
    assert REGISTRY.get_sample_value("mlscale_alerts_firing", {"rule": "iris-drift"}) == 1


def test_monitor_run_without_monitors_is_a_config_error(tmp_path, _mlscale):
    (tmp_path / "mlscale.toml").write_text("[monitoring]\ninterval = 5\n")
    done = _mlscale("monitor", "run", "--once", cwd=tmp_path)
    assert done.returncode == 2 and "no monitors configured" in done.stderr
    (tmp_path / "mlscale.toml").write_text("[monitoring]\nintervall = 5\n")
    done = _mlscale("monitor", "run", "--once", cwd=tmp_path)
    assert done.returncode == 2 and "intervall" in done.stderr


def test_prediction_drift_is_a_monitor_over_output_columns(tmp_path):
    from mlscale.monitoring.monitors import Monitor
    from mlscale.monitoring.payload_reader import PayloadReader
    from mlscale.monitoring.settings import MonitorSettings

    rng = np.random.default_rng(2)
    log = PayloadLog(tmp_path, flush_interval=3600)
    log.record(
        "churn",
        "1",
        {"x": rng.normal(size=(600, 2))},
        {"label": rng.choice(["stay", "leave"], 600, p=[0.5, 0.5]).astype(object)},
    )
    log.close()
    reference = {"out_label": rng.choice(["stay", "leave"], 5000, p=[0.9, 0.1])}
    settings = MonitorSettings(
        name="churn-predictions",
        model="churn",
        reference="unused",
        columns=["out_label"],
        kinds={"out_label": "cat"},
        window_rows=600,
    )
    result = Monitor(settings, PayloadReader(tmp_path), reference).run()
    (col,) = result.columns
    assert col.column == "out_label" and col.kind == "cat" and col.test == "jensenshannon" and col.drifted
