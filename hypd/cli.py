"""`hypd`: the command line. A thin client of the daemon's socket.

It imports the standard library and hypd.client (the protocol's client side) only, not
even `typing` (never Ax, torch or Textual), so `hypd ls` starts fast; `submit` and
`render` import hypd.study, `serve` and `tui` their parts, on demand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from hypd import __version__
from hypd.client import Client, DaemonError, ExitCode, hypd_home, socket_path
from hypd.display import (
    fmt_ahead,
    fmt_exit,
    fmt_number,
    fmt_params,
    fmt_seconds,
    fmt_time,
    runtime,
    state_text,
    trial_no,
    where,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

STATES = ("pending", "queued", "running", "completed", "failed", "killed", "stopped", "lost")


class CliError(Exception):
    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ formatting

def display_width(text: str) -> int:
    """Terminal cells `text` takes: a CJK character or an emoji takes two, a combining mark
    none. (rich, which the dashboard uses, is imported only for text that is not ASCII.)"""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


_SHOWN_CONTROLS = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def table(rows: list[list[str]], header: list[str], last_free: bool = True) -> str:
    """Columns padded to their widest cell, by display width; the last column is left as
    it is (a log line). A tab or line break in a cell is shown as \\t, \\n."""
    if not rows:
        return ""
    rows = [[c.translate(_SHOWN_CONTROLS) for c in r] for r in rows]
    cols = len(header)
    widths = [max(display_width(r[i]) for r in [header, *rows]) for i in range(cols)]
    out = []
    for r in [header, *rows]:
        cells = [c + " " * (widths[i] - display_width(c)) if (i < cols - 1 or not last_free) else c
                 for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def last_note(run: dict[str, Any]) -> str:
    """A run's last output line; for one that failed, was lost or stopped early, why first."""
    if run["state"] in ("failed", "lost", "stopped") and run["reason"]:
        return f"[{run['reason']}] {run['last_line']}".rstrip()
    return run["last_line"]


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    """A TSV field: UTF-8 text as it is, with only what would break a row escaped (a
    backslash, a tab, a line break: \\\\, \\t, \\n, \\r)."""
    return text.translate(_TSV_ESCAPES)


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """One run as `ls --json` shows it."""
    return {
        "id": run["name"], "study": run["study"], "run_no": run["run_no"], "trial": trial_no(run["trial"]),
        "attempt": run["attempt"], "state": run["state"], "reason": run["reason"], "params": run["params"],
        "metrics": run["metrics"], "objective": run["objective"], "host": run["host"], "gpus": run["gpus"],
        "created": run["created"], "started": run["started"], "ended": run["ended"],
        "runtime": runtime(run), "last_line": run["last_line"], "run_dir": run["run_dir"],
    }


# ------------------------------------------------------------------ commands

def connect() -> Client:
    return Client(socket_path())


LS_PAGE = 100  # runs `hypd ls` shows without --all or --limit
# What the table shows of a run (the daemon sends only these); --json and --tsv take all.
TABLE_FIELDS = ["name", "state", "reason", "host", "gpus", "started", "ended", "objective", "params", "last_line"]


def cmd_ls(args: argparse.Namespace) -> int:
    """The newest runs first, a page of them unless --all: the daemon reads them from an
    index and sends only the fields shown, so `ls` stays fast with 100,000 runs stored."""
    limit = None if args.all else (args.limit if args.limit is not None else LS_PAGE)
    if limit is not None and limit < 0:
        raise CliError(f"--limit {limit}: give 0 or more runs", ExitCode.USAGE)
    ask = None if limit is None else min(limit, 1 << 62) + 1  # one more: are there more?
    with connect() as c:
        runs = c.call("ls", state=args.state, study=args.study, limit=ask,
                      newest_first=True, fields=None if args.json or args.tsv else TABLE_FIELDS,
                      archived=args.archived)
    if limit is not None and len(runs) > limit:
        runs = runs[:limit]
        print(f"hypd: the newest {limit} runs shown; --all or --limit N for more", file=sys.stderr)
    out = sys.stdout
    if args.json:
        out.write(json.dumps([run_json(r) for r in runs], separators=(",", ":")) + "\n")
        return 0
    if args.tsv:
        cols = ["id", "study", "trial", "state", "host", "gpus", "started", "ended", "objective", "params",
                "metrics", "last_line"]
        lines = ["\t".join(cols)]
        for r in runs:
            j = run_json(r)
            lines.append("\t".join(tsv_field(v) for v in [
                j["id"], j["study"], str(j["trial"]), j["state"], j["host"] or "",
                ",".join(map(str, j["gpus"] or [])), str(j["started"] or ""), str(j["ended"] or ""),
                "" if j["objective"] is None else repr(j["objective"]),
                json.dumps(j["params"], ensure_ascii=False), json.dumps(j["metrics"], ensure_ascii=False),
                j["last_line"],
            ]))
        out.flush()
        out.buffer.write(("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape"))
        out.buffer.flush()
        return 0
    rows = [[r["name"], state_text(r), where(r), fmt_seconds(runtime(r)), fmt_number(r["objective"]),
             fmt_params(r["params"]), last_note(r)] for r in runs]
    if rows:
        out.write(table(rows, ["RUN", "STATE", "WHERE", "TIME", "OBJECTIVE", "PARAMS", "LAST LINE"]) + "\n")
    elif out.isatty():  # a person asked; a script gets an empty answer
        given = [f"{k}={v}" for k, v in (("state", args.state), ("study", args.study)) if v]
        out.write(f"no runs match{' ' + ', '.join(given) if given else ''}\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with connect() as c:
        info = c.call("info", run=args.run, reports=args.reports if args.verbose else 0)
    r = info["run"]
    lines = [
        f"run        {r['name']}  (trial {trial_no(r['trial'])}"
        f"{', replicate ' + str(r['replicate']) if r.get('replicate', 1) > 1 else ''}, attempt {r['attempt']}; "
        f"retries allowed {info['retries']})",
        f"state      {r['state']}  {r['reason']}",
        f"params     {fmt_params(r['params'])}",
        f"where      {where(r)}",
        f"created    {fmt_time(r['created'])}",
        f"started    {fmt_time(r['started'])}",
        f"ended      {fmt_time(r['ended'])}",
        f"runtime    {fmt_seconds(runtime(r))}" + (f"  (timeout {fmt_seconds(info['timeout'])})" if info.get("timeout") else ""),
        f"objective  {info['objective_metric']} ({info['goal']}) = {fmt_number(r['objective'])}",
        f"metrics    {fmt_params(r['metrics']) or '-'}  ({info['reports_total']} reports)",
        f"attempts   {' '.join(info['attempts'])}",
        f"run_dir    {r['run_dir'] or '-'}",
        f"log        {r['log_path'] or '-'}",
    ]
    if info.get("artifacts"):
        lines.append(f"artifacts  {artifacts_line(info['artifacts'], r, [])}")
    failed = r["state"] in ("failed", "lost")
    if failed or r.get("exit_code") is not None:
        lines.append(f"exit       {fmt_exit(r['exit_code'], r.get('exit_stage'))}")
    if failed and info["log_tail"]:
        lines.append(f"log end    (last {len(info['log_tail'])} lines; `hypd logs {r['name']}` for all)")
        lines.extend("  " + line for line in info["log_tail"])
    elif r["last_line"]:
        lines.append(f"last line  {r['last_line']}")
    if args.verbose:
        lines.append("commands")
        for stage, command in info["commands"]:
            lines.append(f"  [{stage}] {command}")
        lines.append("history")
        for t in info["transitions"]:
            lines.append(f"  {fmt_time(t['at'])}  {t['from'] or '-':>9} -> {t['to']:<9}  {t['reason']}")
        if info["summary"]:
            lines.append("metrics    (over every report)")
            rows = [[name, str(s["count"]), *(fmt_number(s[k]) for k in ("first", "last", "min", "max")),
                     str(s["last_step"])] for name, s in info["summary"].items()]
            lines.extend("  " + line for line in table(rows, ["METRIC", "REPORTS", "FIRST", "LAST", "MIN", "MAX",
                                                              "LAST STEP"]).splitlines())
        if info["reports"]:
            shown = len(info["reports"])
            lines.append(f"reports    (the last {shown} of {info['reports_total']}; `hypd metrics {r['name']}` "
                         "for all)" if shown < info["reports_total"] else "reports")
            lines.extend("  " + line for line in metrics_tsv(info["reports"], list(info["summary"])).splitlines())
    print("\n".join(lines))
    return 0


def metrics_tsv(reports: list[dict[str, Any]], names: list[str], header: bool = True) -> str:
    """Reports as TSV: step, then a column per metric (names: all the run's metrics)."""
    lines = ["\t".join(["step", *names])] if header else []
    for rep in reports:
        lines.append("\t".join([str(rep["step"]), *(repr(rep["values"][n]) if n in rep["values"] else ""
                                                     for n in names)]))
    return "\n".join(lines) + "\n" if lines else ""


def cmd_metrics(args: argparse.Namespace) -> int:
    """Every report, a page at a time (a run may have millions): memory stays small."""
    with connect() as c:
        names = list(c.call("info", run=args.run, reports=0)["summary"])
        since, first = 0, True
        while True:
            page = c.call("metrics", run=args.run, since=since)
            sys.stdout.write(metrics_tsv(page["reports"], names, header=first))
            since, first = page["next"], False
            if not page["reports"]:
                return 0


def cmd_logs(args: argparse.Namespace) -> int:
    offset = 0
    out = sys.stdout.buffer
    with connect() as c:
        while True:
            chunk = c.call("logs", run=args.run, offset=offset, limit=1 << 20)
            if chunk["text"]:
                out.write(chunk["text"].encode())
                out.flush()
            offset = chunk["offset"]
            if chunk["text"] and len(chunk["text"]) >= 1 << 19:
                continue  # more to read right away
            if not args.follow or not chunk["live"]:
                if args.follow and chunk["text"]:
                    continue
                return 0
            time.sleep(0.25)


def assignments(items: list[str]) -> dict[str, str]:
    """NAME=VALUE arguments, as typed."""
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise CliError(f"{item!r}: give values as NAME=VALUE, e.g. lr=0.01", ExitCode.USAGE)
        out[name] = raw
    return out


def cmd_render(args: argparse.Namespace) -> int:
    from hypd.study import (
        StudyError,
        coerce_value,
        complete_params,
        example_value,
        load_study,
        render_commands,
        run_dir_name,
    )

    try:
        spec, _ = load_study(args.study_file)
    except StudyError as exc:
        raise CliError(str(exc), ExitCode.INVALID) from None
    given: dict[str, Any] = {}
    for name, raw in assignments(args.values).items():
        try:
            given[name] = coerce_value(spec.param(name), raw)
        except KeyError:
            raise CliError(f"unknown parameter {name!r}; the study has {', '.join(p.name for p in spec.params)}",
                           ExitCode.INVALID) from None
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.INVALID) from None
    defaulted = [p.name for p in spec.searched if p.name not in given]
    for p in spec.params:
        given.setdefault(p.name, example_value(p))
    try:
        params = complete_params(spec, given)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.INVALID) from None
    study_dir = Path(spec.output_dir) if spec.output_dir else hypd_home() / "studies" / spec.name
    run_dir = str(study_dir / run_dir_name(1, params, spec))
    if defaulted:
        print(f"# not given, so a middle value: {', '.join(f'{n}={params[n]}' for n in defaulted)}", file=sys.stderr)
    stages = render_commands(spec, params, run_dir=run_dir, run=f"{spec.name}:1", run_no=1, trial=0)
    print(f"# workdir: {spec.workdir}", file=sys.stderr)
    for name, command in stages:
        if len(stages) > 1:
            print(f"# stage {name}")
        print(command)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hypd.study import StudyError, check_size

    path = Path(args.study_file)
    try:
        check_size(path.stat().st_size, str(path))
        text = path.read_text(encoding="utf-8")
    except StudyError as exc:
        raise CliError(str(exc), ExitCode.INVALID) from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}", ExitCode.INVALID) from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not a UTF-8 text file", ExitCode.INVALID) from None
    with connect() as c:
        result = c.call("submit", path=str(path.resolve()), text=text, as_name=args.as_name)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if result["continued"] and result["queued"]:
        print(f"study {result['study']} continues: {result['queued']} new trials queued")
    elif result["continued"]:
        print(f"study {result['study']} continues (same search space)")
    elif result["queued"]:
        print(f"study {result['study']} submitted: {result['queued']} trials queued")
    else:
        print(f"study {result['study']} submitted")
    return 0


def _simple(op: str, key: str, message: Callable[[dict[str, Any]], str]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        with connect() as c:
            result = c.call(op, **{key: getattr(args, key)})
        print(message(result))
        return 0
    return command


def cmd_kill(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("kill", target=args.target)
    if result["killed"]:
        print("killing " + " ".join(result["killed"]))
    else:
        print("nothing to kill")
    if result["paused"]:
        print(f"study {args.target} paused: `hypd resume {args.target}` starts new runs again")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("retry", target=args.target, state=args.state, prepare=args.prepare)
    if result["prepared"]:
        print(f"study {args.target}: its prepare step runs again on every host, before its next run there")
    if result["retried"] or not result["prepared"]:
        print("queued " + " ".join(result["retried"]) if result["retried"] else "nothing to retry")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    with connect() as c:
        board = c.call("leaderboard", study=args.study, limit=args.limit, runs=args.runs)
    if args.json:
        print(json.dumps(board))
        return 0
    if not board["runs"]:
        print(f"no results yet in study {args.study}")
        return 0
    from hypd.board import board_text

    print(board_text(board, every_run=args.runs))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hypd import export  # only this command needs it

    fmt = args.format or next((f for f in export.FORMATS if args.output and args.output.endswith("." + f)), "csv")
    if fmt == "parquet" and not args.output:
        raise CliError("parquet is written to a file: give -o FILE.parquet", ExitCode.USAGE)
    with connect() as c:
        header, pages = export.table(c.call, args.study, args.reports)
        try:
            if fmt == "parquet":
                n = export.write_parquet(args.output, header, pages)
            else:
                with (open(args.output, "w", newline="", encoding="utf-8") if args.output
                      else contextlib.nullcontext(sys.stdout)) as out:
                    n = (export.write_csv if fmt == "csv" else export.write_jsonl)(out, header, pages)
        except export.ExportError as exc:
            raise CliError(str(exc), ExitCode.ERROR) from None
        except OSError as exc:
            raise CliError(f"{args.output}: {exc.strerror or exc}", ExitCode.ERROR) from None
    if args.output:
        print(f"{n} {'reports' if args.reports else 'runs'} of {args.study} written to {args.output}", file=sys.stderr)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    with connect() as c:
        best = c.call("best", study=args.study)
    if args.json:
        print(json.dumps(best))
        return 0
    obs = best["observed"]
    if obs:
        print(f"observed best  {obs['name']}  {best['metric']}={fmt_number(obs['objective'])}  {fmt_params(obs['params'])}")
        print(f"artifacts      {artifacts_line(best.get('artifacts'), obs, best.get('fetch') or [])}")
    else:
        print("observed best  - (no results yet)")
    predicted = best["predicted"]
    if not predicted:
        print("predicted best - (this search has no model, or not enough data yet)")
    else:
        for item in predicted.get("pareto") or [predicted]:
            preds = "  ".join(f"{k}={fmt_number(v[0])}±{fmt_number(v[1])}" for k, v in item.get("prediction", {}).items())
            print(f"predicted best {fmt_params(item.get('params', {}))}  {preds}")
    return 0


def artifacts_line(record: dict[str, Any] | None, run: dict[str, Any], fetch: list[str]) -> str:
    """Where a run's artifacts are: fetched here, the fetch's failure, or its folder on its host."""
    on_host = f"{run['host']}:{run['run_dir']}" if run.get("run_dir") else "-"
    if record is None:
        return (f"not fetched (yet): hypd pull {run['name']}  (on {on_host})" if fetch else
                f"{on_host}  (the run's folder; [run] fetch = [...] copies files back here)")
    if record.get("fetching"):
        return f"being copied to {record['dir']}  (from {on_host})"
    if record["error"]:
        return f"fetch failed: {record['error']}  (hypd pull {run['name']} tries again; on {on_host})"
    files = ", ".join(record["files"]) or "none"
    missing = f"; nothing matched {', '.join(record['missing'])}" if record["missing"] else ""
    return f"{record['dir']}  ({files}{missing})"


def cmd_pull(args: argparse.Namespace) -> int:
    with connect() as c:
        record = c.call("pull", run=args.run)
    for rel in record["files"]:
        print(f"{record['dir']}/{rel}")
    if record["missing"]:
        print(f"nothing matched {', '.join(record['missing'])} in {record['host']}:{record['run_dir']}", file=sys.stderr)
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("suggest", study=args.study, params=assignments(args.values))
    print(f"queued {result['run']} (trial {trial_no(result['trial'])}): {fmt_params(result['params'])}")
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    with connect() as c:
        studies = c.call("studies", archived=args.archived)
    if args.json:
        print(json.dumps(studies))
        return 0
    rows = []
    notes = []
    for s in studies:
        if "error" in s:
            rows.append([s["name"], "-", "broken", "-", "-", "-", "-", "-", "-", "-", s["error"]])
            continue
        if s.get("state") == "loading":
            rows.append([s["name"], "-", "loading", "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        n, o = s["counts"], s["outcomes"]
        best = f"{fmt_number(s['best'])} ({s['best_run']})" if s["best_run"] else "-"
        rows.append([s["name"], s["algorithm"], study_state(s), f"{s['done']}/{s['total']}", str(n["running"] + n.get("queued", 0)),
                     str(n["pending"]), str(o["failed"] + o["lost"]), str(o["killed"]), str(s["retried"]),
                     fmt_ahead(s.get("ahead")), f"{s['metric']} {best}"])
        if s["pause_reason"]:
            notes.append(f"{s['name']} paused: {s['pause_reason']}  (`hypd resume {s['name']}` carries on)")
        for failed in (s.get("prepare_failed") or {}).values():
            notes.append(f"{s['name']}: {failed}  (`hypd retry {s['name']} --prepare` once it is fixed)")
        if s["hosts_note"]:
            notes.append(f"{s['name']}: {s['hosts_note']}")
    if rows:
        print(table(rows, ["STUDY", "ALGORITHM", "STATE", "DONE", "RUNNING", "PENDING", "FAILED", "KILLED",
                           "RETRIED", "AHEAD", "BEST"]))
        for note in notes:
            print(note)
    else:
        print("no studies yet: hypd submit STUDY.toml")
    return 0


def study_state(s: dict[str, Any]) -> str:
    state = "paused" if s["paused"] else ("finished" if s["finished"] else "active")
    return f"{state} (archived)" if s.get("archived") else state


def cmd_extend(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("extend", study=args.study, trials=args.trials)
    queued = f"; {result['queued']} trials queued" if result["queued"] else ""
    paused = f" (paused: `hypd resume {args.study}` starts them)" if result["paused"] else ""
    print(f"study {args.study} extended to {result['max_trials']} trials{queued}{paused}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    with connect() as c:
        c.call("archive", study=args.study, undo=args.undo)
    print(f"study {args.study} " + ("back in `hypd studies`" if args.undo else
                                    "archived: hidden from `hypd studies` and `hypd ls` (--archived shows it)"))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("rm", study=args.study, files=args.files)
    print(f"study {args.study} removed ({result['runs']} runs)" + ("" if args.files else
          "; its logs and outputs are kept (--files removes them)"))
    for path in result["files"]:
        print(f"  removed {path}")
    if result["left_on_hosts"]:
        print(f"  run folders on {', '.join(result['left_on_hosts'])} are left there")
    return 0


def progress_line(s: dict[str, Any], eta: float | None) -> str:
    """One line of a study's progress: trials done of all, running, failed, retried
    attempts apart, the best so far, and an estimate of the time left."""
    n, o = s["counts"], s["outcomes"]
    parts = [f"{s['name']}: {s['done']}/{s['total']} done", f"{n['running']} running",
             f"{o['failed'] + o['lost']} failed"]
    if s["retried"]:
        parts.append(f"{s['retried']} retried")
    if s["best_run"]:
        parts.append(f"best {s['metric']} {fmt_number(s['best'])} ({s['best_run']})")
    if eta is not None:
        parts.append(f"ETA {fmt_seconds(eta)}")
    return " · ".join(parts)


# `hypd wait`'s exit statuses beyond ExitCode's (documented in its --help and the README).
WAIT_NO_RESULT = 8  # the study finished with no completed run
WAIT_PAUSED = 9  # the study is paused (by hand, or by hypd after runs failed in a row)
WAIT_EPILOG = (f"exit status: 0 the study finished with at least one completed run; {WAIT_NO_RESULT} it finished "
               f"with none; {WAIT_PAUSED} it is paused (by hand, or after max_failures runs failed in a row); "
               f"{int(ExitCode.NO_DAEMON)} no daemon (or it went away); {int(ExitCode.NOT_FOUND)} no such study; "
               f"1 --timeout passed")


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until the study has finished or is paused: a live line on a terminal, a plain
    line every --every seconds otherwise."""
    deadline = time.time() + args.timeout if args.timeout else None
    live = sys.stdout.isatty()
    started, first_done = time.monotonic(), None
    last_print = -1e9
    seen = False  # the daemon answered once: an error after that means it went away
    try:
        with connect() as c:
            while True:
                study = next((s for s in c.call("studies", archived=True) if s["name"] == args.study), None)
                seen = True
                if study is None:
                    raise CliError(f"no study {args.study!r}", ExitCode.NOT_FOUND)
                if "error" in study:
                    raise CliError(f"study {args.study} cannot be loaded: {study['error']}", ExitCode.INVALID)
                if study.get("state") == "loading":  # the daemon has just started
                    time.sleep(0.5)
                    continue
                if first_done is None and study.get("hosts_note"):  # its runs wait for a host that is not there
                    print(f"{args.study}: {study['hosts_note']}", file=sys.stderr)
                first_done = study["done"] if first_done is None else first_done
                eta = _eta(study, study["done"] - first_done, time.monotonic() - started)
                line = progress_line(study, eta)
                end = study["finished"] or study["paused"]
                if live:
                    sys.stdout.write("\r\x1b[2K" + line + ("\n" if end else ""))
                    sys.stdout.flush()
                elif end or time.monotonic() - last_print >= args.every:
                    print(line, flush=True)
                    last_print = time.monotonic()
                if study["paused"]:
                    why = study["pause_reason"] or "paused by hand"
                    print(f"study {args.study} is paused: {why}; `hypd resume {args.study}` carries on",
                          file=sys.stderr)
                    return WAIT_PAUSED
                if study["finished"]:
                    o = study["outcomes"]
                    print(f"study {args.study} finished: {o['completed']} completed, {o['failed'] + o['lost']} "
                          f"failed, {o['killed']} killed, {o['stopped']} stopped"
                          + (f" ({study['retried']} retried)" if study["retried"] else ""))
                    return 0 if o["completed"] else WAIT_NO_RESULT
                if deadline is not None and time.time() > deadline:
                    raise CliError(f"study {args.study} not finished after {args.timeout:g} s")
                time.sleep(0.5)
    except (DaemonError, ConnectionError) as exc:
        if isinstance(exc, DaemonError) and exc.code not in ("no_daemon", "error"):
            raise
        if live:
            print()
        # The daemon went away while we waited: the same status as no daemon at all.
        why = exc.message if isinstance(exc, DaemonError) else str(exc)
        raise CliError(why if not seen else f"the daemon went away while waiting: {why}",
                       ExitCode.NO_DAEMON) from None


def _eta(s: dict[str, Any], done_since: int, elapsed: float) -> float | None:
    """Seconds left at the pace trials finished since `wait` started (None before one did)."""
    left = s["total"] - s["done"] - s["outcomes"]["failed"] - s["outcomes"]["lost"] - s["outcomes"]["killed"]
    if done_since <= 0 or left <= 0:
        return None
    return left * elapsed / done_since


def cmd_hosts_add(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    if args.gpus is not None:
        try:
            options["gpus"] = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise CliError(f"--gpus {args.gpus!r}: give GPU indexes such as 0,1", ExitCode.USAGE) from None
    for key in ("max_per_gpu", "key", "workdir", "setup", "cpu_slots", "lost_after", "partition", "account",
                "max_jobs"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.kind != "ssh":
        options["kind"] = args.kind
    if args.sbatch:
        options["sbatch"] = args.sbatch
    if args.label:
        options["labels"] = [x.strip() for item in args.label for x in item.split(",") if x.strip()]
    if args.known_hosts is not None:
        options["known_hosts"] = os.path.abspath(os.path.expanduser(args.known_hosts))
    elif args.no_known_hosts:
        options["known_hosts"] = False
    with connect() as c:
        host = c.call("hosts_add", name=args.name, target=args.target, options=options)
    why = f": {host['why']}" if host.get("why") else ""
    print(f"host {args.name} added ({host['state']}{why})")
    return 0


def cmd_hosts_rm(args: argparse.Namespace) -> int:
    with connect() as c:
        c.call("hosts_rm", name=args.name)
    print(f"host {args.name} removed")
    return 0


def cmd_hosts_drain(args: argparse.Namespace) -> int:
    with connect() as c:
        host = c.call("hosts_drain", name=args.name, undo=args.undo)
    print(f"host {args.name} {host['state']}" + (f": {len(host['runs'])} run(s) finishing" if host["runs"] else ""))
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    with connect() as c:
        hosts = c.call("hosts")
    if args.json:
        print(json.dumps(hosts))
        return 0
    for h in hosts:
        if h["state"] == "error":
            print(f"{h['name']}: {h['why']}")
            continue
        why = f" ({h['why']})" if h.get("why") else ""
        labels = f"  labels {','.join(h['labels'])}" if h.get("labels") else ""
        if "partition" in h:  # a Slurm cluster: its queue, not GPUs hypd sees
            idle = "?" if h.get("idle_gpus") is None else str(h["idle_gpus"])
            print(f"{h['name']}  {h['state']}{why}{labels}  slurm via {h['address']}  partition {h['partition']}  "
                  f"jobs {h['jobs_running']} running, {h['jobs_queued']} queued (max {h['max_jobs']})  "
                  f"idle GPUs in partition {idle}" + (f"  [{' '.join(h['runs'])}]" if h["runs"] else ""))
            continue
        print(f"{h['name']}  {h['state']}{why}{labels}  cpu slots {h['cpu_used']}/{h['cpu_slots']}"
              + (f"  [{' '.join(h['cpu_runs'])}]" if h["cpu_runs"] else ""))
        for study, failed in (h.get("prepare_failed") or {}).items():
            print(f"  unusable for study {study}: {failed}  (`hypd retry {study} --prepare` once it is fixed)")
        if not h["gpus"]:
            note = h.get("gpu_error") or "no GPUs"
            print(f"  no GPUs ({note}): runs with gpus = 0 use CPU slots")
        for g in h["gpus"]:
            if g["runs"]:
                user = " ".join(g["runs"])
            elif not g["allowed"]:
                user = "not for hypd"
            elif g["foreign"]:
                user = "busy (someone else)"
            else:
                user = "free"
            util = "-" if g["utilization_pct"] is None else f"{g['utilization_pct']}%"
            print(f"  gpu {g['index']}  {g['name']}  util {util:>4}  mem {g['memory_used_mib']}/{g['memory_total_mib']} MiB  {user}")
    return 0


STOP_WAIT = 60.0  # seconds `hypd stop` waits for the daemon to exit after it said it would


def cmd_stop(args: argparse.Namespace) -> int:
    with connect() as c:
        result = c.call("stop", kill_runs=args.kill_runs)
    # The daemon answers, then exits: wait for that, so a script's next `hypd serve` finds
    # the home free.
    pid = result.get("pid")
    deadline = time.monotonic() + STOP_WAIT
    while pid and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and _pid_alive(pid):
        print(f"hypd: the daemon (pid {pid}) has not exited {STOP_WAIT:.0f}s after `stop`", file=sys.stderr)
        return 1
    if result["killed"]:
        print(f"killed {len(result['killed'])} run(s); daemon stopped")
    elif result["left_running"]:
        print(f"daemon stopped; {len(result['left_running'])} run(s) keep going and are adopted by the next `hypd serve`")
    else:
        print("daemon stopped")
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (the daemon's parent has not reaped it yet) has exited.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    home = hypd_home()
    if args.detach:
        return detach(home)
    from hypd.daemon import serve

    return serve(home, foreground=not args.quiet)


def detach(home: Path) -> int:
    """Start the daemon in the background (its own session) and wait until it answers."""
    import subprocess

    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with Client(socket_path(home), timeout=2) as c:
            print(f"a hypd daemon already runs (pid {c.hello['pid']})")
            return 0
    except DaemonError:
        pass
    log_path = home / "daemon.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0
    from hypd.private import append_private

    with open(append_private(home / "daemon.out"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hypd", "serve", "--quiet"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True, close_fds=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            why = "; ".join(_start_lines(log_path, log_from, ("ERROR",))) or f"see {log_path}"
            raise CliError(f"the daemon exited at start (status {proc.returncode}): {why}")
        try:
            with Client(socket_path(home), timeout=2) as c:
                for line in _start_lines(log_path, log_from, ("ERROR", "WARNING hypd.daemon")):
                    print(f"warning: {line}", file=sys.stderr)  # e.g. a store that lost data
                print(f"hypd daemon started (pid {c.hello['pid']}); log: {log_path}")
                return 0
        except DaemonError:
            time.sleep(0.1)
    raise CliError(f"the daemon did not answer within 30 s; see {home / 'daemon.log'}")


def _start_lines(log_path: Path, offset: int, kinds: tuple[str, ...]) -> list[str]:
    """The daemon's log lines of these kinds ("ERROR", "WARNING hypd.daemon") since offset,
    without their time stamp and logger."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read(1 << 20).decode(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 3)  # date, time, level, "logger: message"
        if len(parts) == 4 and any(f"{parts[2]} {parts[3]}".startswith(kind) for kind in kinds):
            out.append(parts[3].partition(": ")[2])
    return out


def cmd_tui(args: argparse.Namespace) -> int:
    try:
        Client(socket_path(), timeout=5).close()
    except DaemonError as exc:
        raise CliError(exc.message, exc.exit_code) from None
    from hypd.tui import run_tui

    return run_tui(socket_path())


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypd", description="Hyperparameter search on your own GPU machines.")
    p.add_argument("--version", action="version", version=f"hypd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("serve", cmd_serve, "run the daemon (foreground; --detach to background it)")
    sp.add_argument("--detach", action="store_true", help="start in the background and return")
    sp.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    add("tui", cmd_tui, "the live dashboard")
    sp = add("submit", cmd_submit, "submit a study file")
    sp.add_argument("study_file")
    sp.add_argument("--as", dest="as_name", metavar="NAME", help="submit under another study name")
    sp = add("ls", cmd_ls, "list runs")
    sp.add_argument("--state", choices=STATES)
    sp.add_argument("--study")
    pages = sp.add_mutually_exclusive_group()
    pages.add_argument("--limit", type=int, metavar="N", help=f"the newest N runs (default {LS_PAGE})")
    pages.add_argument("--all", action="store_true", help="every run that matches")
    sp.add_argument("--archived", action="store_true", help="runs of archived studies too")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON array of runs")
    fmt.add_argument("--tsv", action="store_true", help="tab-separated, with a header line")
    sp = add("info", cmd_info, "a run's parameters, state, host, times, metrics")
    sp.add_argument("run", metavar="STUDY:N")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="each metric's summary, the latest reports, the commands and the history")
    sp.add_argument("--reports", type=int, default=20, metavar="N", help="with -v: the last N reports (default 20)")
    sp = add("logs", cmd_logs, "a run's log")
    sp.add_argument("run", metavar="STUDY:N")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing as the run writes")
    sp = add("metrics", cmd_metrics, "every metrics report of a run, as TSV")
    sp.add_argument("run", metavar="STUDY:N")
    sp = add("render", cmd_render, "print the command(s) a trial would run")
    sp.add_argument("study_file")
    sp.add_argument("values", nargs="*", metavar="NAME=VALUE")
    sp = add("kill", cmd_kill, "kill a run (STUDY:N) or a whole study (STUDY, which is also paused)")
    sp.add_argument("target", metavar="STUDY[:N]")
    sp = add("retry", cmd_retry, "a new attempt of a run's trial, or of a study's runs in a state")
    sp.add_argument("target", metavar="STUDY[:N]")
    sp.add_argument("--state", choices=STATES, help="with a study: retry its runs in this state")
    sp.add_argument("--prepare", action="store_true", help="with a study: run its [prepare] step again on every host")
    sp = add("pause", _simple("pause", "study", lambda r: f"study {r['study']} paused: nothing new starts"),
             "start nothing new in a study")
    sp.add_argument("study")
    sp = add("resume", _simple("resume", "study", lambda r: f"study {r['study']} resumed"), "carry on a paused study")
    sp.add_argument("study")
    sp = add("leaderboard", cmd_leaderboard, "a study's best runs, best first")
    sp.add_argument("study")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--runs", action="store_true", help="every run with a result (each replicate), not one per trial")
    sp.add_argument("--json", action="store_true")
    sp = add("export", cmd_export, "a study as a table: a row per run (or per report), a column per parameter and metric")
    sp.add_argument("study")
    sp.add_argument("--format", choices=("csv", "jsonl", "parquet"), help="default: from -o's extension, else csv")
    sp.add_argument("-o", "--output", metavar="FILE", help="default: standard output")
    sp.add_argument("--reports", action="store_true", help="a row per report (run, step, time, metrics)")
    sp = add("best", cmd_best, "observed best run, and the model's predicted best parameters")
    sp.add_argument("study")
    sp.add_argument("--json", action="store_true")
    sp = add("pull", cmd_pull, "copy a run's artifacts ([run] fetch) back from its host now")
    sp.add_argument("run", metavar="STUDY:N")
    sp = add("suggest", cmd_suggest, "queue a hand-picked trial (NAME=VALUE ...)")
    sp.add_argument("study")
    sp.add_argument("values", nargs="+", metavar="NAME=VALUE")
    sp = add("studies", cmd_studies, "progress of each study")
    sp.add_argument("--archived", action="store_true", help="archived studies too")
    sp.add_argument("--json", action="store_true")
    sp = add("extend", cmd_extend, "add trials to a study (finished or not); its search carries on")
    sp.add_argument("study")
    sp.add_argument("trials", type=int, metavar="N", help="trials to add to its max_trials")
    sp = add("archive", cmd_archive, "hide a study (none of its runs going) from `studies` and `ls`")
    sp.add_argument("study")
    sp.add_argument("--undo", action="store_true", help="show it again")
    sp = add("rm", cmd_rm, "remove a study (none of its runs going) and its runs from the daemon")
    sp.add_argument("study")
    sp.add_argument("--files", action="store_true", help="also its logs and the run folders on this machine")
    sp = add("wait", cmd_wait, "wait until a study has finished, showing its progress (for scripts)")
    sp.epilog = WAIT_EPILOG
    sp.add_argument("study")
    sp.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    sp.add_argument("--every", type=float, default=30.0, metavar="SECONDS",
                    help="when not on a terminal: a progress line this often (default 30)")
    sp = add("hosts", cmd_hosts, "hosts, their GPUs or CPU slots, and what runs where")
    sp.add_argument("--json", action="store_true")
    hosts = sp.add_subparsers(dest="hosts_command", metavar="ACTION")
    hp = hosts.add_parser("ls", help="list the hosts (the default)")
    hp.add_argument("--json", action="store_true")
    hp.set_defaults(fn=cmd_hosts)
    hp = hosts.add_parser("add", help="add an SSH host: NAME [user@]address[:port]; or a Slurm cluster: "
                          "NAME LOGIN --kind slurm (LOGIN: [user@]address[:port] of its login node, or local)")
    hp.add_argument("name")
    hp.add_argument("target", metavar="[USER@]ADDRESS[:PORT]")
    hp.add_argument("--kind", choices=("ssh", "slurm"), default="ssh",
                    help="ssh: a machine (the default); slurm: a cluster, jobs submitted from its login node")
    hp.add_argument("--partition", help="slurm: the partition jobs go to (default: the cluster's default)")
    hp.add_argument("--account", help="slurm: the account jobs are charged to")
    hp.add_argument("--max-jobs", type=int, help="slurm: hypd's jobs in the queue at once, queued ones included "
                    "(default 16)")
    hp.add_argument("--sbatch", action="append", metavar="OPTION",
                    help="slurm: an sbatch option passed as it is, e.g. --sbatch=--time=02:00:00; repeat for more")
    hp.add_argument("--gpus", help="the GPUs hypd may use there, e.g. 0,1 (default: all)")
    hp.add_argument("--max-per-gpu", type=int, help="runs that may share one GPU (default 1)")
    hp.add_argument("--key", help="private key file (default: as ssh would: agent, ~/.ssh keys and config)")
    hp.add_argument("--workdir", help="where runs keep their files on the host (default ~/.hypd-runs; for a "
                    "Slurm cluster, on its shared filesystem, default ~/hypd-runs)")
    hp.add_argument("--setup", help="a line bash runs before each trial's command, e.g. 'source ~/venv/bin/activate' "
                    "(what it exports reaches the command)")
    hp.add_argument("--cpu-slots", type=int, help="CPU slots for gpus = 0 runs (default: its cores)")
    hp.add_argument("--lost-after", help="how long unreachable before its runs are lost (default 2m)")
    hp.add_argument("--label", action="append", metavar="LABEL",
                    help="a label studies pick hosts by (hosts = { labels = [...] }); repeat or comma-separate")
    keys = hp.add_mutually_exclusive_group()
    keys.add_argument("--known-hosts", metavar="PATH",
                      help="check the host key against this file (default: ~/.ssh/known_hosts)")
    keys.add_argument("--no-known-hosts", action="store_true", help="do not check the host key (unsafe)")
    hp.set_defaults(fn=cmd_hosts_add)
    hp = hosts.add_parser("rm", help="remove a host (none of its runs may be going)")
    hp.add_argument("name")
    hp.set_defaults(fn=cmd_hosts_rm)
    hp = hosts.add_parser("drain", help="finish what runs on a host, start nothing new there")
    hp.add_argument("name")
    hp.add_argument("--undo", action="store_true", help="take new runs again")
    hp.set_defaults(fn=cmd_hosts_drain)
    sp = add("stop", cmd_stop, "stop the daemon (runs keep going unless --kill-runs)")
    sp.add_argument("--kill-runs", action="store_true", help="kill every run first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DaemonError as exc:
        print(f"hypd: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except CliError as exc:
        print(f"hypd: {exc}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hypd ls | head`: the reader went away; that is fine.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

