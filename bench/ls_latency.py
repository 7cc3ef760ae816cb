"""How fast `hypd ls` answers with 100,000 runs stored.

Fills a store with 100,000 runs (20 studies of 5,000; 5% pending, the rest finished),
starts a real daemon on it, and times whole CLI commands (process start included):
`hypd ls --state pending` and `hypd ls --study S --json`. Prints median and p95.

    python bench/ls_latency.py [--runs 100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypd.ipc import Client, DaemonError, socket_path
from hypd.search import make_suggester
from hypd.store import Store
from hypd.study import parse_study

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss" }}
algorithm = "random"
max_trials = {n}
[params]
lr = {{ type = "float", low = 1e-4, high = 1e-1, log = true }}
layers = {{ type = "int", low = 1, high = 8 }}
[run]
command = "python train.py --lr {{lr}} --layers {{layers}} --out {{run_dir}}"
"""


def fill(home: Path, total: int, studies: int) -> None:
    asyncio.run(_create_schema(home / "hypd.db"))
    per = total // studies
    rng = random.Random(0)
    conn = sqlite3.connect(home / "hypd.db")
    now = time.time()
    for s in range(studies):
        name = f"s{s:02d}"
        text = STUDY.format(name=name, n=per)
        spec = parse_study(text, f"/bench/{name}.toml", "/bench")
        state = make_suggester(spec).dump()
        # Paused, so the daemon starts none of the pending runs.
        conn.execute("INSERT INTO studies (name, source, text, base_dir, created, paused, search_state, next_run_no) "
                     "VALUES (?,?,?,?,?,1,?,?)", (name, spec.source, text, "/bench", now, state, per + 1))
        trials, runs = [], []
        for i in range(per):
            params = json.dumps({"lr": 10 ** rng.uniform(-4, -1), "layers": rng.randint(1, 8)})
            trials.append((name, i, params, now))
            state = "pending" if rng.random() < 0.05 else rng.choice(["completed"] * 8 + ["failed", "killed"])
            loss = rng.random() if state == "completed" else None
            runs.append((name, i + 1, i, 1, state, "bench", params, "local", "[]", now, now if state != "pending" else None,
                         now + 60 if state != "pending" else None, json.dumps({"loss": loss} if loss else {}), loss,
                         f"epoch 20: loss {loss}" if loss else ""))
        conn.executemany("INSERT INTO trials (study, trial, params, created) VALUES (?,?,?,?)", trials)
        conn.executemany("INSERT INTO runs (study, run_no, trial, attempt, state, reason, params, host, gpus, created, "
                         "started, ended, metrics, objective, last_line) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    conn.commit()
    conn.close()


async def _create_schema(path: Path) -> None:
    store = await Store.open(path)
    await store.close()


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
        size = len(out.stdout)
    return times, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hyb", dir="/tmp"))
    env = {**os.environ, "HYPD_HOME": str(home)}
    daemon = None
    try:
        t = time.perf_counter()
        fill(home, args.runs, args.studies)
        print(f"filled {args.runs} runs in {time.perf_counter() - t:.1f} s ({home / 'hypd.db'})")
        daemon = subprocess.Popen([sys.executable, "-m", "hypd", "serve", "--quiet"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                Client(socket_path(home), timeout=2).close()
                break
            except DaemonError:
                if time.time() > deadline:
                    raise SystemExit("the daemon did not start") from None
                time.sleep(0.1)
        hypd = [sys.executable, "-m", "hypd"]
        cases = [("hypd ls --state pending", hypd + ["ls", "--state", "pending"]),
                 ("hypd ls --study s00 --json", hypd + ["ls", "--study", "s00", "--json"]),
                 ("hypd ls --state pending --json", hypd + ["ls", "--state", "pending", "--json"])]
        baseline, _ = timed([sys.executable, "-c", "pass"], env, args.repeat)
        print(f"python -c pass (interpreter start): median {statistics.median(baseline) * 1000:.0f} ms")
        for label, cmd in cases:
            times, size = timed(cmd, env, args.repeat)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(f"{label:34s} median {statistics.median(times) * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   "
                  f"({size / 1e6:.1f} MB of output, {args.repeat} runs)")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
