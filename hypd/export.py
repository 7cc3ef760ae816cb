"""A study as tidy tables: one row per run (or per report), one column per field, per
parameter (`param_` + its name) and per metric. Rows come a page at a time from the
daemon's `export` op and go out as they come (CSV, JSON lines, Parquet), so a study of
100,000 runs is written in flat memory. Standard library only; Parquet imports pyarrow
when asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from hypd.display import trial_no

FORMATS = ("csv", "jsonl", "parquet")
PAGE = 5000  # rows per request to the daemon

RUN_COLUMNS = ("study", "run", "trial", "replicate", "attempt", "state", "host", "gpus", "started", "ended",
               "objective")
REPORT_COLUMNS = ("study", "run", "trial", "replicate", "step", "at")
PARQUET_MISSING = "Parquet needs pyarrow: pip install hypd[parquet] (or pip install pyarrow)"


class ExportError(Exception):
    pass


def columns(fixed: Sequence[str], params: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """The table's columns: the fixed ones, `param_<name>` for each parameter, then each
    metric by its name (`metric_<name>` where that name is taken by a column before it)."""
    out = list(fixed) + [f"param_{p}" for p in params]
    taken = set(out)
    return out + [m if m not in taken else f"metric_{m}" for m in metrics]


def run_rows(study: str, fields: Sequence[str], rows: Iterable[Sequence[Any]], params: Sequence[str],
             metrics: Sequence[str]) -> list[list[Any]]:
    """Runs as a page gives them (lists of `fields`) as rows of
    `columns(RUN_COLUMNS, params, metrics)`: the final value of each metric (None where
    the run never reported it). Positional, with no dict per row: this is most of the
    client's work for a big study."""
    at = {f: i for i, f in enumerate(fields)}
    name, trial, rep, attempt, state, host, gpus, started, ended, objective, p_at, m_at = (
        at[k] for k in ("name", "trial", "replicate", "attempt", "state", "host", "gpus", "started", "ended",
                        "objective", "params", "metrics"))
    out = []
    for r in rows:
        p, m = _nested(r[p_at]), _nested(r[m_at])
        g = r[gpus]
        out.append([study, r[name], trial_no(r[trial]), r[rep], r[attempt], r[state], r[host],
                    None if g is None else ",".join(map(str, g)), r[started], r[ended], r[objective],
                    *[p.get(k) for k in params], *[m.get(k) for k in metrics]])
    return out


def report_rows(study: str, fields: Sequence[str], rows: Iterable[Sequence[Any]],
                metrics: Sequence[str]) -> list[list[Any]]:
    """Reports as a page gives them as rows of `columns(REPORT_COLUMNS, [], metrics)`."""
    at = {f: i for i, f in enumerate(fields)}
    run, trial, rep, step, when, v_at = (at[k] for k in ("run", "trial", "replicate", "step", "at", "values"))
    out = []
    for r in rows:
        values = _nested(r[v_at])
        out.append([study, r[run], trial_no(r[trial]), r[rep], r[step], r[when], *[values.get(k) for k in metrics]])
    return out


def _nested(value: Any) -> dict[str, Any]:
    """A row's params, metrics or values: a JSON that SQLite could not read (it holds NaN
    or Infinity) came as its text."""
    if isinstance(value, str):
        return json.loads(value)  # type: ignore[no-any-return]
    return value or {}


def table(call: Callable[..., Mapping[str, Any]], study: str, reports: bool, page: int = PAGE
          ) -> tuple[list[str], Iterator[list[list[Any]]]]:
    """Ask the daemon (`call`: a Client's call) for the study's rows a page at a time:
    the table's header, and an iterator of pages of rows."""
    first = call("export", study=study, reports=reports, after=None, limit=page)
    params, metrics = list(first["params"]), list(first["metrics"])
    header = columns(REPORT_COLUMNS, [], metrics) if reports else columns(RUN_COLUMNS, params, metrics)

    def rows() -> Iterator[list[list[Any]]]:
        reply = first
        while True:
            raw = json.loads(reply["rows"])
            if reports:
                yield report_rows(study, reply["fields"], raw, metrics)
            else:
                yield run_rows(study, reply["fields"], raw, params, metrics)
            if reply["next"] is None:
                return
            reply = call("export", study=study, reports=reports, after=reply["next"], limit=page)

    return header, rows()


def write_csv(out: IO[str], header: Sequence[str], pages: Iterable[Sequence[Sequence[Any]]]) -> int:
    """None is an empty cell; a float is written as Python's repr (all its digits)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    n = 0
    for rows in pages:
        writer.writerows(rows)
        n += len(rows)
    return n


def write_jsonl(out: IO[str], header: Sequence[str], pages: Iterable[Sequence[Sequence[Any]]]) -> int:
    n = 0
    for rows in pages:
        out.write("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows))
        n += len(rows)
    return n


def write_parquet(path: str, header: Sequence[str], pages: Iterable[Sequence[Sequence[Any]]]) -> int:
    """One row group per page; a column's type is what its values are (numbers, text),
    decided by the first page that has a value in it, and text where they disagree."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(PARQUET_MISSING) from None
    pending: list[Sequence[Sequence[Any]]] = []
    writer = None
    n = 0
    schema = None
    try:
        for rows in pages:
            n += len(rows)
            if schema is None:
                pending.append(rows)
                kinds = [_kind(r[i] for page in pending for r in page) for i in range(len(header))]
                if any(k is None for k in kinds) and len(pending) < 4:
                    continue  # a column with no value yet: its type waits for a few more pages
                schema = pa.schema([(name, _ARROW[k or "str"](pa)) for name, k in zip(header, kinds)])
                writer = pq.ParquetWriter(path, schema)
                for page in pending:
                    writer.write_table(_table(pa, schema, header, page))
                pending = []
            else:
                assert writer is not None
                writer.write_table(_table(pa, schema, header, rows))
        if schema is None:  # few rows: decide from what there is
            kinds = [_kind(r[i] for page in pending for r in page) for i in range(len(header))]
            schema = pa.schema([(name, _ARROW[k or "str"](pa)) for name, k in zip(header, kinds)])
            writer = pq.ParquetWriter(path, schema)
            for page in pending:
                writer.write_table(_table(pa, schema, header, page))
    finally:
        if writer is not None:
            writer.close()
    return n


_ARROW: dict[str, Callable[[Any], Any]] = {
    "bool": lambda pa: pa.bool_(), "int": lambda pa: pa.int64(), "float": lambda pa: pa.float64(),
    "str": lambda pa: pa.string(),
}


def _kind(values: Iterable[Any]) -> str | None:
    kinds = set()
    for v in values:
        if v is None:
            continue
        kinds.add("bool" if isinstance(v, bool) else "int" if isinstance(v, int)
                  else "float" if isinstance(v, float) else "str")
    if not kinds:
        return None
    if kinds <= {"int", "float"}:
        return "float" if "float" in kinds else "int"
    return kinds.pop() if len(kinds) == 1 else "str"


def _table(pa: Any, schema: Any, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    arrays = []
    for i, field in enumerate(schema):
        values = [r[i] for r in rows]
        if pa.types.is_string(field.type):
            values = [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values]
        elif pa.types.is_floating(field.type):
            values = [None if v is None else float(v) for v in values]
        # An int column that meets a fraction on a later page fails here (pyarrow refuses to
        # cut it) rather than losing the fraction.
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
