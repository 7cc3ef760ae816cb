"""Does the socket stay responsive while Ax fits?

Starts a real daemon, times `ls` over the socket while idle, then submits a Branin study
of zero-duration trials (4 slots) and keeps timing `ls --study branin` while Ax proposes
trials, until the study has --trials trials; then times the same `ls` (as many rows) with
Ax idle. Prints the latency (median, p95, max) for every 50 trials.

    python bench/ax_responsiveness.py [--trials 220]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypd.ipc import Client, DaemonError, socket_path

STUDY = """
[study]
name = "branin"
objective = {{ metric = "value" }}
max_trials = {trials}
parallel = 4
seed = 0
[params]
x1 = {{ type = "float", low = -5.0, high = 10.0 }}
x2 = {{ type = "float", low = 0.0, high = 15.0 }}
[run]
command = "python3 -c 'import math, sys; x1, x2 = map(float, sys.argv[1:]); print(\\"METRICS: value=%r\\" % ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10))' {{x1}} {{x2}}"
"""


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * (len(xs) - 1)))]
    return f"median {statistics.median(xs) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  max {xs[-1] * 1000:6.1f} ms  (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=220)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hyr", dir="/tmp"))
    (home / "config.toml").write_text('[daemon]\npoll_interval = "0.1s"\n[local]\ncpu_slots = 4\n')
    env = {**os.environ, "HYPD_HOME": str(home)}
    daemon = subprocess.Popen([sys.executable, "-m", "hypd", "serve", "--quiet"], env=env)
    try:
        while True:
            try:
                client = Client(socket_path(home))
                break
            except DaemonError:
                time.sleep(0.1)
        idle = []
        for _ in range(200):
            t = time.perf_counter()
            client.call("ls", state=None, study=None, limit=None)
            idle.append(time.perf_counter() - t)
            time.sleep(0.01)
        print(f"idle                      {stats(idle)}", flush=True)
        path = home / "branin.toml"
        path.write_text(STUDY.format(trials=args.trials))
        client.call("submit", path=str(path), text=path.read_text(), as_name=None)
        bucket, xs = 0, []
        while True:
            t = time.perf_counter()
            runs = client.call("ls", state=None, study="branin", limit=None)
            elapsed = time.perf_counter() - t
            if len(runs) // 50 * 50 != bucket:  # print as it goes: the whole run takes minutes
                print(f"Ax working, {bucket:3d}-{bucket + 49:3d} trials {stats(xs)}", flush=True)
                bucket, xs = len(runs) // 50 * 50, []
            xs.append(elapsed)
            if sum(r["state"] == "completed" for r in runs) >= args.trials:
                break
            time.sleep(0.01)
        print(f"Ax working, {bucket:3d}-{len(runs):3d} trials {stats(xs)}", flush=True)
        # The same `ls` (as many rows) once Ax has nothing to do: the fair idle baseline.
        after = []
        for _ in range(300):
            t = time.perf_counter()
            client.call("ls", state=None, study="branin", limit=None)
            after.append(time.perf_counter() - t)
            time.sleep(0.01)
        print(f"idle again, {len(runs)} trials     {stats(after)}", flush=True)
        asks = [line for line in (home / "daemon.log").read_text().splitlines() if "started on" in line]
        print(f"{len(asks)} runs started")
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
