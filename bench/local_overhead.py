"""Local overhead: what the daemon costs per run when runs are short and many.

    python bench/local_overhead.py [--runs 1000] [--slots 16] [--seconds 0.2] [--keep]

Starts `hypd serve` on a fresh $HYPD_HOME with the local machine as the only host and
`[local] cpu_slots = SLOTS`, submits one random-search study of RUNS trials (0 GPUs: a CPU
slot each, parallel = SLOTS), each `sleep SECONDS` then a METRICS line, polls the
`studies` op once a second until it has finished, and prints:

    makespan            submit -> the daemon recorded the last run's end
    ideal               ceil(RUNS / SLOTS) x SECONDS: every slot busy with sleeping,
                        nothing else
    overhead per run    (makespan - ideal) x SLOTS / RUNS: the slot-seconds each run
                        costs beyond its SECONDS, whoever spends them (goal <= 0.05 s).
                        Its parts, from the runs' control files (pid file = the wrapper
                        started, exit file = it ended):
      first start       submit -> the first pid file (the submit creates every trial of a
                        random or grid study), as slot-seconds per run
      in the run        median (exit - pid) - SECONDS: the wrapper script and the shells
                        it starts (sh, bash -c), the run's own start-up
      between runs      median per slot, a run's exit file -> the next run's pid file on
                        the slot it freed: the daemon sees the exit, stores it, confirms
                        the processes gone, places and launches the next
    daemon CPU          user + system of `hypd serve` during the study, per run; the local
                        host watcher (the daemon's child) apart
    load average        at the start and at the end (2 shared cores here)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BenchError, Daemon, cpu_seconds, load, percentile, study_runs  # noqa: I001

STUDY = "overhead"


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def watcher_pid(daemon_pid: int) -> int | None:
    for child in children(daemon_pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"hostwatch.py" in f.read():
                    return child
        except OSError:
            continue
    return None


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--slots", type=int, default=16, help="[local] cpu_slots")
    p.add_argument("--seconds", type=float, default=0.2, help="length of one trial (its sleep)")
    p.add_argument("--algorithm", choices=("random", "grid"), default="random")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    p.add_argument("--serve", default=f"{sys.executable} -m hypd serve",
                   help="the command that runs the daemon in the foreground (default: %(default)s)")
    args = p.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hyl", dir="/tmp"))
    home = base / "home"
    home.mkdir()
    (home / "config.toml").write_text(textwrap.dedent(f"""\
        [local]
        enabled = true
        cpu_slots = {args.slots}
        gpus = []
        """))
    if args.algorithm == "grid":
        params = f'x = {{ type = "int", low = 0, high = {args.runs - 1} }}'
    else:
        params = 'x = { type = "float", low = -1.0, high = 1.0 }'
    study = base / "overhead.toml"
    study.write_text(textwrap.dedent(f"""\
        [study]
        name = "{STUDY}"
        objective = {{ metric = "loss", goal = "minimize" }}
        algorithm = "{args.algorithm}"
        max_trials = {args.runs}
        parallel = {args.slots}
        gpus = 0
        seed = 3
        retries = 0

        [params]
        {params}

        [run]
        workdir = "{base}"
        command = "sleep {args.seconds:g}; echo \\"METRICS: loss={{x}} step=0\\""
        """))
    daemon = Daemon(home, args.serve)
    print(f"at start: {load()}")
    try:
        daemon.start()
        deadline = time.monotonic() + 30
        while (hosts := daemon.try_call("hosts") or []) and not any(
                h["name"] == "local" and h["state"] == "up" for h in hosts):
            if time.monotonic() > deadline:
                raise BenchError(f"the local host is not up: {hosts}")
            time.sleep(0.1)
        watcher = watcher_pid(daemon.pid)
        cpu0 = daemon.cpu()
        wcpu0 = cpu_seconds(watcher) if watcher else 0.0
        submitted = time.time()
        daemon.call("submit", path=str(study), text=study.read_text(), as_name=None)
        submit_s = time.time() - submitted
        daemon.wait_study(STUDY, args.timeout, every=1.0)
        cpu = daemon.cpu() - cpu0
        wcpu = (cpu_seconds(watcher) - wcpu0) if watcher and os.path.exists(f"/proc/{watcher}") else math.nan
        load_end = load()
        runs = study_runs(daemon, STUDY)
        done = [r for r in runs if r["started"] is not None and r["ended"] is not None]
        if len(done) < args.runs:
            raise BenchError(f"only {len(done)} of {args.runs} runs ended: {dict(Counter(r['state'] for r in runs))}")
        failed = sum(1 for r in done if r["state"] != "completed")

        makespan = max(r["ended"] for r in done) - submitted
        ideal = math.ceil(args.runs / args.slots) * args.seconds
        overhead = (makespan - ideal) * args.slots / args.runs

        # The runs' control files: <home>/runs/<study>/<NNNN>/{pid,exit}.
        spans: list[tuple[float, float]] = []
        for r in done:
            ctl = home / "runs" / STUDY / f"{r['run_no']:04d}"
            start, end = mtime(ctl / "pid"), mtime(ctl / "exit")
            if start is not None and end is not None:
                spans.append((start, end))
        in_run = [e - s - args.seconds for s, e in spans]
        first_start = min(s for s, _ in spans) - submitted if spans else math.nan
        # Slots are not numbered for CPU runs: pair each start with the earliest exit not
        # yet followed by a start (a freed slot takes the next run).
        starts = sorted(s for s, _ in spans)
        exits = sorted(e for _, e in spans)
        between: list[float] = []
        free: list[float] = []
        si = ei = 0
        first_wave = min(args.slots, len(starts))
        si = first_wave
        while si < len(starts):
            while ei < len(exits) and exits[ei] <= starts[si]:
                free.append(exits[ei])
                ei += 1
            if free:
                between.append(starts[si] - free.pop(0))
            si += 1

        result: dict[str, Any] = {
            "runs": len(done), "not_completed": failed, "slots": args.slots, "trial_s": args.seconds,
            "makespan_s": makespan, "ideal_s": ideal, "overhead_per_run_s": overhead,
            "in_run_median_s": statistics.median(in_run) if in_run else math.nan,
            "between_runs_median_s": statistics.median(between) if between else math.nan,
            "between_runs_p99_s": percentile(between, 99), "submit_s": submit_s, "first_start_s": first_start,
            "daemon_cpu_s": cpu, "daemon_cpu_ms_per_run": cpu / args.runs * 1000,
            "watcher_cpu_ms_per_run": wcpu / args.runs * 1000, "load_at_end": os.getloadavg()}
        print(f"{args.runs} runs of {args.seconds:g} s on {args.slots} local CPU slots, {args.algorithm} "
              f"({failed} not completed)")
        print(f"makespan            {makespan:.2f} s  (ideal {ideal:.2f} s = ceil({args.runs}/{args.slots}) x "
              f"{args.seconds:g} s)")
        print(f"overhead per run    {overhead:.3f} s  = (makespan - ideal) x {args.slots} / {args.runs}: slot-seconds "
              f"per run beyond its {args.seconds:g} s (goal <= 0.05 s)")
        print(f"  first start       {first_start:.3f} s after the submit (which answered in {submit_s:.3f} s, "
              f"{args.runs} trials created): {first_start * args.slots / args.runs:.3f} s per run")
        print(f"  in the run        {result['in_run_median_s']:.3f} s median (wrapper + shells: exit - pid - "
              f"{args.seconds:g} s)")
        print(f"  between runs      {result['between_runs_median_s']:.3f} s median, p99 "
              f"{result['between_runs_p99_s']:.3f} s (a run's exit -> the next run's pid on the freed slot)")
        print(f"daemon CPU          {cpu:.2f} s: {result['daemon_cpu_ms_per_run']:.1f} ms per run "
              f"(host watcher: {result['watcher_cpu_ms_per_run']:.1f} ms per run)")
        print(f"at end: {load_end}")
        print(json.dumps(result))
        return 0
    except BenchError as exc:
        print(f"local overhead benchmark: {exc} ({load()})", file=sys.stderr)
        return 1
    finally:
        daemon.stop(kill_runs=True)
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
