"""How fast `hypd export` writes a big study, and whether its memory stays flat.

Fills a store with two studies of the same shape, one of 10,000 runs and one of 100,000
(10 replicates per trial, two reports per run), starts a real daemon on it, and times
whole CLI commands (process start included): `hypd export STUDY -o FILE` as CSV, JSON
lines and Parquet (when pyarrow is installed), and `--reports` as CSV. For each it prints
the seconds, the CLI's peak RSS and the daemon's RSS growth while it answered (sampled
every 20 ms): the same for 10x the runs means memory is flat (goal: under 10 s for
100,000 runs). Prints the load average.

    python bench/export.py [--runs 100000] [--small 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import load  # noqa: E402
from hypd.ipc import Client, DaemonError, socket_path  # noqa: E402
from hypd.search import make_suggester  # noqa: E402
from hypd.store import Store  # noqa: E402
from hypd.study import MAX_TRIALS, parse_study  # noqa: E402

REPLICATES = 10

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss" }}
algorithm = "random"
max_trials = {trials}
replicates = {replicates}
[params]
lr = {{ type = "float", low = 1e-4, high = 1e-1, log = true }}
layers = {{ type = "int", low = 1, high = 8 }}
opt = {{ values = ["adam", "sgd"] }}
[run]
command = "python train.py --lr {{lr}} --layers {{layers}} --opt {{opt}} --seed {{replicate}} --out {{run_dir}}"
"""

# Run the CLI and print its peak RSS (KiB) on stderr's last line as it exits.
MEASURED = ("import resource, runpy, sys\nsys.argv = ['hypd'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('hypd', run_name='__main__')\nfinally:\n"
            "    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def fill(home: Path, name: str, runs: int) -> None:
    trials_n = runs // REPLICATES
    # The file keeps to the cap on runs per study; the store holds as many as asked (a
    # study grown by `hypd extend`, retries and hand-given trials over its life).
    text = STUDY.format(name=name, trials=min(trials_n, MAX_TRIALS // REPLICATES), replicates=REPLICATES)
    spec = parse_study(text, f"/bench/{name}.toml", "/bench")
    rng = random.Random(name)
    now = time.time()
    conn = sqlite3.connect(home / "hypd.db")
    # Paused, so the daemon starts nothing.
    conn.execute("INSERT INTO studies (name, source, text, base_dir, created, paused, search_state, next_run_no) "
                 "VALUES (?,?,?,?,?,1,?,?)", (name, spec.source, text, "/bench", now, make_suggester(spec).dump(),
                                               runs + 1))
    trials, rows, reports = [], [], []
    for t in range(trials_n):
        params = json.dumps({"lr": 10 ** rng.uniform(-4, -1), "layers": rng.randint(1, 8),
                             "opt": rng.choice(["adam", "sgd"])})
        trials.append((name, t, params, now, "completed"))
        for r in range(1, REPLICATES + 1):
            loss = rng.random()
            rows.append((name, t * REPLICATES + r, t, 1, r, "completed", "all stages exited 0", params, "gpu1",
                         json.dumps([r % 8]), now, now, now + 60, json.dumps({"loss": loss, "acc": 1 - loss}), loss,
                         2))
    conn.executemany("INSERT INTO trials (study, trial, params, created, told) VALUES (?,?,?,?,?)", trials)
    conn.executemany("INSERT INTO runs (study, run_no, trial, attempt, replicate, state, reason, params, host, gpus, "
                     "created, started, ended, metrics, objective, reports) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     rows)
    for (run_id,) in conn.execute("SELECT id FROM runs WHERE study=?", (name,)).fetchall():
        reports += [(run_id, 0, 0, now, '{"loss": 1.0, "acc": 0.0}'), (run_id, 1, 1, now, '{"loss": 0.5, "acc": 0.5}')]
    conn.executemany("INSERT INTO reports (run_id, seq, step, at, data) VALUES (?,?,?,?,?)", reports)
    conn.commit()
    conn.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def export(env: dict[str, str], daemon: int, args: list[str]) -> tuple[float, int, int]:
    """Seconds, the CLI's peak RSS and the daemon's RSS growth (KiB) for one export."""
    before = rss_kib(daemon)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(daemon))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURED, "export", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    if out.returncode != 0:
        raise SystemExit(f"hypd export {' '.join(args)} failed: {out.stderr}")
    cli_rss = int(out.stderr.strip().splitlines()[-1].split()[1])
    return seconds, cli_rss, peak[0] - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hyx", dir="/tmp"))
    env = {**os.environ, "HYPD_HOME": str(home), "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"at the start: {load()}")
    daemon = None
    try:
        asyncio.run(_create_schema(home / "hypd.db"))
        t = time.perf_counter()
        fill(home, "small", args.small)
        fill(home, "big", args.runs)
        print(f"filled {args.small} + {args.runs} runs (2 reports each) in {time.perf_counter() - t:.1f} s")
        daemon = subprocess.Popen([sys.executable, "-m", "hypd", "serve", "--quiet"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            try:
                with Client(socket_path(home), timeout=2) as c:
                    if all(s.get("state") != "loading" for s in c.call("studies")):
                        break
            except DaemonError:
                pass
            if time.time() > deadline:
                raise SystemExit("the daemon did not start")
            time.sleep(0.2)
        formats = ["csv", "jsonl"]
        try:
            import pyarrow  # noqa: F401
            formats.append("parquet")
        except ImportError:
            print("pyarrow is not installed: no Parquet figures")
        print(f"{'export':34s} {'runs':>7s} {'seconds':>8s} {'CLI peak RSS':>13s} {'daemon RSS growth':>18s} "
              f"{'file':>9s}")
        for fmt, reports in [(f, False) for f in formats] + [("csv", True)]:
            for study, n in (("small", args.small), ("big", args.runs)):
                path = home / f"{study}{'-reports' if reports else ''}.{fmt}"
                cmd = [study, "-o", str(path)] + (["--reports"] if reports else [])
                seconds, cli_rss, grew = export(env, daemon.pid, cmd)
                label = f"hypd export {study}{' --reports' if reports else ''} -o X.{fmt}"
                print(f"{label:34s} {n:7d} {seconds:8.2f} {cli_rss / 1024:10.0f} MiB {grew / 1024:15.0f} MiB "
                      f"{path.stat().st_size / 1e6:7.1f} MB")
        print(f"at the end: {load()}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)


async def _create_schema(path: Path) -> None:
    store = await Store.open(path)
    await store.close()


if __name__ == "__main__":
    main()
