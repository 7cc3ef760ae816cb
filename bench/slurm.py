"""Slurm benchmark: many runs through a cluster with a limit on hypd's jobs in its queue.

    python bench/slurm.py [--runs 200] [--max-jobs 50] [--seconds 0.5] [--poll 1s] [--keep]

What it does: starts a one-node Slurm on localhost (tests/slurmd.py: slurmctld, slurmd and
munged, 4 GPUs as GRES; needs root and `apt-get install -y slurm-wlm munge`), puts Slurm's
commands on the daemon's PATH as wrappers that log each call (so what hypd asks of Slurm
is counted from outside hypd), writes hosts.toml with the cluster (login = "local",
max_jobs = M) and starts `hypd serve` on a fresh $HYPD_HOME. It submits one grid study of
R trials, 1 GPU each, parallel = R (so only max_jobs holds hypd back), each `sleep S` then
a METRICS line, and while it runs reads Slurm's queue itself every 0.2 s. It prints:

    jobs in the queue    the most of hypd's jobs Slurm held at once (pending + running),
                         against max_jobs; and the most pending at once
    commands per tick    the Slurm commands that read state (squeue, sinfo, sacct,
                         scontrol) between one squeue and the next: each tick runs one
                         squeue for every job, so this is what one tick cost, at most and
                         on average, whatever the number of jobs
    sbatch / scancel     submissions (one per run: nothing submitted twice) and cancels
    runs                 completed of R, reports stored, makespan
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Daemon, load, study_runs  # noqa: E402
from hypd.inventory import save_inventory  # noqa: E402
from hypd.slurm.config import SlurmConfig  # noqa: E402
from tests.slurmd import SlurmCluster, slurm_unavailable  # noqa: E402

STUDY = "slurmbench"
READS = ("squeue", "sinfo", "sacct", "scontrol")


def per_tick(calls: list[str]) -> list[int]:
    """State-reading commands of each tick: from one squeue up to the next."""
    ticks: list[int] = []
    for name in calls:
        if name == "squeue":
            ticks.append(1)
        elif name in READS and ticks:
            ticks[-1] += 1
    return ticks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--max-jobs", type=int, default=50)
    p.add_argument("--seconds", type=float, default=0.5, help="length of one trial")
    p.add_argument("--poll", default="1s", help="the cluster's poll in hosts.toml")
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    reason = slurm_unavailable()
    if reason:
        print(f"slurm benchmark: {reason}", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="hys", dir="/tmp"))
    home = base / "home"
    (home / "bin").mkdir(parents=True)
    print(f"at start: {load()}")
    cluster = SlurmCluster(base / "slurm")
    daemon: Daemon | None = None
    try:
        calls_file = cluster.install_commands(home / "bin")
        save_inventory(home / "hosts.toml", [SlurmConfig("cluster", login="local", partition=cluster.partition,
                                                         max_jobs=args.max_jobs, workdir=str(base / "cluster"),
                                                         poll=float(args.poll.rstrip("s")))])
        (home / "config.toml").write_text("[local]\nenabled = false\n")
        study = base / "study.toml"
        study.write_text(textwrap.dedent(f"""\
            [study]
            name = "{STUDY}"
            objective = {{ metric = "loss" }}
            algorithm = "grid"
            parallel = {args.runs}
            gpus = 1
            [params]
            x = {{ type = "int", low = 1, high = {args.runs} }}
            [run]
            workdir = "{base}"
            command = "sleep {args.seconds:g}; echo \\"METRICS: loss={{x}}\\""
            """))
        daemon = Daemon(home)
        daemon.env["PATH"] = f"{home / 'bin'}{os.pathsep}{daemon.env.get('PATH', '')}"
        daemon.start()
        while not [h for h in daemon.call("hosts") if h["name"] == "cluster" and h["state"] == "up"]:
            time.sleep(0.2)
        started = time.monotonic()
        daemon.call("submit", path=str(study), text=study.read_text(), as_name=None)
        most = most_pending = 0
        user = getpass.getuser()
        while time.monotonic() - started < args.timeout:
            out = subprocess.run(["squeue", "--noheader", f"--user={user}", "--format=%j %T"], env=cluster.env,
                                 capture_output=True, text=True).stdout.split("\n")
            ours = [line.split() for line in out if line.startswith(f"hypd:{STUDY}:")]
            most = max(most, len(ours))
            most_pending = max(most_pending, sum(1 for _, state in ours if state == "PENDING"))
            summary = next((s for s in daemon.call("studies") if s["name"] == STUDY), None)
            if summary and summary.get("finished"):
                break
            time.sleep(0.2)
        makespan = time.monotonic() - started
        runs = study_runs(daemon, STUDY)
        calls = calls_file.read_text().split()
        ticks = per_tick(calls)
        completed = sum(1 for r in runs if r["state"] == "completed")
        reports = sum(r["reports"] for r in runs)
        print(f"runs: {completed} of {args.runs} completed, {reports} reports stored, makespan {makespan:.1f} s "
              f"({args.seconds:g} s each, 4 GPUs)")
        print(f"hypd's jobs in Slurm's queue at once: at most {most} (max_jobs {args.max_jobs}); "
              f"at most {most_pending} pending")
        print(f"Slurm commands per tick: at most {max(ticks, default=0)}, mean "
              f"{statistics.fmean(ticks) if ticks else 0:.3f} over {len(ticks)} ticks "
              f"({', '.join(f'{n} {calls.count(n)}' for n in READS)})")
        print(f"sbatch {calls.count('sbatch')} (runs {len(runs)}), scancel {calls.count('scancel')}")
        print(f"at end: {load()}")
        return 0 if completed == args.runs and most <= args.max_jobs and max(ticks, default=0) <= 2 else 1
    finally:
        if daemon is not None:
            daemon.stop(kill_runs=True)
        cluster.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


if __name__ == "__main__":
    sys.exit(main())
