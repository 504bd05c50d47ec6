"""The report renders for every column kind and null pattern, and says why a column is not scored."""

from __future__ import annotations

import html
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.errors import InvalidInput
from mlscale.monitoring.drift import DriftDetector
from mlscale.monitoring.report import render_report

KINDS = ["float", "int_few", "int_many", "flag", "bool", "str5", "str30", "text", "const", "dates"]
NULLS = ["none", "some", "all"]


def _column(kind: str, rows: int, rng: np.random.Generator, nulls: str) -> pa.Array:
    values = {
        "float": lambda: rng.normal(0, 1, rows),
        "int_few": lambda: rng.integers(0, 8, rows),
        "int_many": lambda: rng.integers(0, 500, rows),
        "flag": lambda: rng.integers(0, 2, rows),
        "bool": lambda: rng.random(rows) < 0.4,
        "str5": lambda: rng.choice(list("abcde"), rows),
        "str30": lambda: rng.choice([f"c{i}" for i in range(30)], rows),
        "text": lambda: np.array([f"note {i} {rng.integers(1e9)}" for i in range(rows)]),
        "const": lambda: np.full(rows, 7.0),
        "dates": lambda: np.datetime64("2026-01-01") + rng.integers(0, 300, rows).astype("timedelta64[D]"),
    }[kind]()
    if nulls == "none":
        return pa.array(values)
    mask = np.ones(rows, bool) if nulls == "all" else rng.random(rows) < 0.1
    return pa.array(values, mask=mask)


@st.composite
def table_pairs(draw):
    n_cols = draw(st.integers(1, 6))
    specs = [
        (draw(st.sampled_from(KINDS)), draw(st.sampled_from(NULLS)), draw(st.sampled_from(NULLS)))
        for _ in range(n_cols)
    ]
    ref_rows, cur_rows = draw(st.sampled_from([5, 60, 1200])), draw(st.sampled_from([3, 40, 900]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ref = pa.table({f"c{i}_{k}": _column(k, ref_rows, rng, rn) for i, (k, rn, _) in enumerate(specs)})
    cur = pa.table({f"c{i}_{k}": _column(k, cur_rows, rng, cn) for i, (k, _, cn) in enumerate(specs)})
    return ref, cur, specs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_pairs())
def test_report_renders_for_any_kinds_and_null_patterns(pair):
    ref, cur, specs = pair
    result = DriftDetector().fit(ref).score(cur)
    page = render_report(result, "ref.parquet", "cur.parquet")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    json.dumps(result.verdict(), allow_nan=False)  # the --json content is valid JSON
    for col, (_kind, ref_nulls, cur_nulls) in zip(result.columns, specs, strict=True):
        all_null = "all" in (ref_nulls, cur_nulls)
        if col.scored:
            assert np.isfinite(col.value) and not all_null, col
        else:  # the row says why, and the column has no verdict
            assert col.reason and not col.drifted and html.escape(col.reason) in page
        assert col.empty == (all_null and col.kind in ("num", "cat")), col
    scored = [c for c in result.columns if c.scored]
    assert result.share == (sum(c.drifted for c in scored) / len(scored) if scored else 0.0)


def test_kinds_follow_evidently_and_can_be_overridden():
    rng = np.random.default_rng(0)
    ref = {
        "count10": rng.integers(0, 10, 2000),  # 10 distinct: categorical
        "count11": rng.integers(0, 11, 2000),  # 11 distinct: numeric
        "flag": rng.integers(0, 2, 2000),
        "ok": rng.random(2000) < 0.5,
        "city": rng.choice(["a", "b"], 2000),
        "note": np.array([f"n{i}" for i in range(2000)]),  # all distinct: text
        "x": rng.normal(size=2000),
    }
    kinds = {c.name: c.kind for c in DriftDetector().fit(ref).profile_.columns.values()}
    assert kinds == {
        "count10": "cat", "count11": "num", "flag": "cat", "ok": "cat", "city": "cat", "note": "text", "x": "num"
    }  # fmt: skip
    detector = DriftDetector(kinds={"count10": "num", "note": "cat", "x": "cat"}).fit(ref)
    result = {c.column: c for c in detector.score(ref).columns}
    assert result["count10"].kind == "num" and result["count10"].test == "wasserstein"
    assert result["note"].kind == "cat" and result["note"].scored
    assert result["x"].kind == "cat"
    with pytest.raises(InvalidInput, match="not numbers"):
        DriftDetector(kinds={"city": "num"}).fit(ref)
    with pytest.raises(InvalidInput, match="does not have"):
        DriftDetector(kinds={"nope": "num"}).fit(ref)


def test_a_count_with_nulls_in_current_keeps_its_categories():
    """An int column turns float in a file where it has nulls: 3 and 3.0 are the same category."""
    rng = np.random.default_rng(1)
    ref = pa.table({"n": rng.integers(0, 5, 3000)})
    cur_values = rng.integers(0, 5, 3000)
    cur = pa.table({"n": pa.array(cur_values, mask=rng.random(3000) < 0.1)})
    col = DriftDetector().fit(ref).score(cur).columns[0]
    assert col.kind == "cat" and not col.drifted and col.value < 0.05
    assert sorted(col.current["bins"]) == ["0", "1", "2", "3", "4"]


def test_cli_kind_override_and_bad_kind(tmp_path):
    from click.testing import CliRunner

    from mlscale.monitoring.commands import monitor

    rng = np.random.default_rng(2)
    pq.write_table(pa.table({"n": rng.integers(0, 4, 500), "x": rng.normal(size=500)}), tmp_path / "r.parquet")
    pq.write_table(pa.table({"n": rng.integers(0, 4, 400), "x": rng.normal(size=400)}), tmp_path / "c.parquet")
    args = ["report", str(tmp_path / "r.parquet"), str(tmp_path / "c.parquet"), "-o", str(tmp_path / "o.html")]
    done = CliRunner().invoke(monitor, [*args, "--kind", "n=num", "--json", str(tmp_path / "v.json")])
    assert done.exit_code == 0, done.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert [(c["column"], c["kind"], c["test"]) for c in verdict["columns"]] == [
        ("n", "num", "chisquare"),
        ("x", "num", "ks"),
    ]
    done = CliRunner().invoke(monitor, [*args, "--kind", "n=integer"])
    assert done.exit_code != 0 and "COLUMN=KIND" in str(done.exception or done.output)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_pairs(), st.integers(0, 7), st.integers(1, 3))
def test_arrow_columns_read_without_pandas_equal_to_numpy(pair, start, chunks):
    """Sliced and chunked columns of every kind read as pyarrow's to_numpy reads them."""
    from mlscale.monitoring.drift.arrow_columns import column_to_numpy

    table = pa.concat_tables([pair[0]] * chunks).slice(min(start, pair[0].num_rows - 1))
    for name in table.column_names:
        column = table.column(name)
        ours, theirs = column_to_numpy(column), column.to_numpy(zero_copy_only=False)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
        if ours.dtype.kind == "f":
            np.testing.assert_array_equal(ours, theirs)
        else:
            assert ours.tolist() == theirs.tolist(), name


def test_arrow_columns_of_every_width_read_as_to_numpy():
    from mlscale.monitoring.drift.arrow_columns import column_to_numpy

    mask = np.array([False, True, False, False, True, False, False, False, False, True])
    for kind in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint32(), pa.uint64(), pa.float32(), pa.float64()):
        values = np.arange(10) % 7
        for array in (pa.array(values, type=kind), pa.array(values, type=kind, mask=mask)):
            for piece in (array, array.slice(3), pa.chunked_array([array.slice(1, 4), array.slice(6)])):
                ours, theirs = column_to_numpy(piece), piece.to_numpy(zero_copy_only=False)
                assert ours.dtype == theirs.dtype, kind
                np.testing.assert_array_equal(ours, theirs)


def test_a_column_whose_type_changed_says_why_in_its_row():
    rng = np.random.default_rng(3)
    ref = {"x": rng.normal(size=300), "y": rng.normal(size=300)}
    cur = {"x": np.array(["n/a", "1.5"] * 100, dtype=object), "y": rng.normal(size=200)}
    result = DriftDetector().fit(ref).score(cur)
    x, y = result.columns
    assert not x.scored and not x.empty and "not numbers in current" in x.reason
    assert y.scored and result.share == float(y.drifted)
    assert "not numbers in current" in render_report(result, "r", "c")
