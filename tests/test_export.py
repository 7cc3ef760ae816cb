"""hypd.export: tidy rows and their writers, without a daemon (the end-to-end test is in
tests/test_e2e_parity.py)."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from hypd import export


def test_columns_prefix_parameters_and_keep_metrics_apart_from_fields() -> None:
    assert export.columns(("study", "state"), ["lr"], ["loss", "state"]) == \
        ["study", "state", "param_lr", "loss", "metric_state"]


def test_a_run_row_has_each_parameter_and_the_final_value_of_each_metric() -> None:
    fields = ["id", "name", "trial", "replicate", "attempt", "state", "host", "gpus", "started", "ended",
              "objective", "params", "metrics"]
    runs = [[7, "s:3", 2, 2, 1, "completed", "gpu1", [0, 1], 1.0, 2.0, 0.5, {"lr": 0.1}, {"loss": 0.5}],
            [8, "s:4", 2, 3, 1, "failed", None, None, None, None, None, {"lr": 0.1}, '{"loss": NaN}']]
    assert export.run_rows("s", fields, runs, ["lr"], ["acc", "loss"])[0] == \
        ["s", "s:3", 3, 2, 1, "completed", "gpu1", "0,1", 1.0, 2.0, 0.5, 0.1, None, 0.5]
    second = export.run_rows("s", fields, runs, ["lr"], ["loss"])[1]  # a NaN came as its JSON text
    assert second[:8] == ["s", "s:4", 3, 3, 1, "failed", None, None] and second[-1] != second[-1]


def pages_of(rows: list[list[object]], size: int) -> list[list[list[object]]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def test_csv_and_jsonl_write_every_page() -> None:
    header = ["run", "x", "loss"]
    rows = [[f"s:{i}", i, float(i) / 3 if i % 2 else None] for i in range(7)]
    out = io.StringIO()
    assert export.write_csv(out, header, pages_of(rows, 3)) == 7
    back = list(csv.reader(io.StringIO(out.getvalue())))
    assert back[0] == header and len(back) == 8
    assert back[2] == ["s:1", "1", repr(1 / 3)] and back[1] == ["s:0", "0", ""]  # a float as it was
    out = io.StringIO()
    export.write_jsonl(out, header, pages_of(rows, 2))
    assert [json.loads(line)["x"] for line in out.getvalue().splitlines()] == list(range(7))


def test_parquet_types_come_from_the_values_even_if_the_first_page_has_none(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [["s:1", None, 1, "a"], ["s:2", None, 2, 3], ["s:3", 0.5, 3, "b"]]  # loss only on page 2
    path = str(tmp_path / "t.parquet")
    assert export.write_parquet(path, ["run", "loss", "n", "mixed"], pages_of(rows, 2)) == 3
    table = pq.read_table(path)
    assert [f.type for f in table.schema] == [pa.string(), pa.float64(), pa.int64(), pa.string()]
    assert table.column("loss").to_pylist() == [None, None, 0.5]
    assert table.column("mixed").to_pylist() == ["a", "3", "b"]  # text where the values disagree


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    with pytest.raises(export.ExportError, match=r"pip install hypd\[parquet\]"):
        export.write_parquet(str(tmp_path / "x.parquet"), ["a"], [[[1]]])
