"""How fast `hypd ls` and `hypd info` answer with a huge store.

Fills a store with 100,000 runs (20 studies of 5,000; 5% pending, the rest finished) and
one run with 1,800,000 reports, starts a real daemon on it (which builds the per-metric
summaries of those reports once, as for a store made before them), and times whole CLI
commands (process start included): `hypd ls --state pending` (goal 150 ms), `hypd ls`,
`hypd ls --study S --json`, `hypd info` on the run with 1.8 million reports (goal 1 s),
with the longest a `ping` waited meanwhile (the daemon is never blocked by one big
reply); and `import hypd.cli` over a bare interpreter (goal 40 ms). Prints median and p95,
and the load average. hypd's bytecode is cached (in a temporary PYTHONPYCACHEPREFIX) as an
installed package has it.

    python bench/ls_latency.py [--runs 100000] [--reports 1800000] [--repeat 20]
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
import threading
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


def fill_reports(home: Path, run: str, count: int) -> None:
    """`count` reports of two metrics for one run; the daemon builds their summaries at start
    (as it does once for a store made before summaries were kept)."""
    study, run_no = run.split(":")
    conn = sqlite3.connect(home / "hypd.db")
    (run_id,) = conn.execute("SELECT id FROM runs WHERE study=? AND run_no=?", (study, int(run_no))).fetchone()
    now = time.time()
    for start in range(0, count, 100_000):
        conn.executemany("INSERT INTO reports (run_id, seq, step, at, data) VALUES (?,?,?,?,?)",
                         [(run_id, i, i, now, json.dumps({"loss": 1 / (i + 1), "acc": i / count}))
                          for i in range(start, min(count, start + 100_000))])
    conn.execute("UPDATE runs SET reports=? WHERE id=?", (count, run_id))
    conn.execute("DELETE FROM metric_stats")
    conn.execute("DELETE FROM meta WHERE key='metric_stats'")
    conn.commit()
    conn.close()


def ping_while(home: Path, stop: threading.Event, waits: list[float]) -> None:
    """Ping the daemon over and over until stop is set; each round trip in waits."""
    with Client(socket_path(home), timeout=30) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.call("ping")
            waits.append(time.perf_counter() - t)
            time.sleep(0.005)


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
    ap.add_argument("--reports", type=int, default=1_800_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hyb", dir="/tmp"))
    env = {**os.environ, "HYPD_HOME": str(home), "PYTHONPYCACHEPREFIX": str(home / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    daemon = None
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        t = time.perf_counter()
        fill(home, args.runs, args.studies)
        fill_reports(home, "s00:1", args.reports)
        print(f"filled {args.runs} runs and {args.reports} reports in {time.perf_counter() - t:.1f} s ({home / 'hypd.db'})")
        t = time.perf_counter()
        daemon = subprocess.Popen([sys.executable, "-m", "hypd", "serve", "--quiet"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while True:
            try:
                Client(socket_path(home), timeout=2).close()
                break
            except DaemonError:
                if time.time() > deadline:
                    raise SystemExit("the daemon did not start") from None
                time.sleep(0.1)
        print(f"daemon answering {time.perf_counter() - t:.2f} s after its start")
        with Client(socket_path(home), timeout=600) as c:
            c.call("info", run="s00:1", reports=0)  # waits until it has started
        print(f"daemon started {time.perf_counter() - t:.1f} s after its start (the summaries of "
              f"{args.reports} stored reports built once meanwhile)")
        hypd = [sys.executable, "-m", "hypd"]
        subprocess.run(hypd + ["ls"], env=env, capture_output=True, check=True)  # caches the bytecode
        baseline, cli = [], []  # in turns, so that a burst of load falls on both
        for _ in range(args.repeat):
            baseline += timed([sys.executable, "-c", "pass"], env, 1)[0]
            cli += timed([sys.executable, "-c", "import hypd.cli"], env, 1)[0]
        print(f"python -c pass (interpreter start): median {statistics.median(baseline) * 1000:.0f} ms; "
              f"import hypd.cli: +{(statistics.median(cli) - statistics.median(baseline)) * 1000:.0f} ms (goal 40)")
        cases = [("hypd ls --state pending", hypd + ["ls", "--state", "pending"]),
                 ("hypd ls", hypd + ["ls"]),
                 ("hypd ls --study s00 --json", hypd + ["ls", "--study", "s00", "--json"]),
                 ("hypd ls --state pending --json --all", hypd + ["ls", "--state", "pending", "--json", "--all"]),
                 (f"hypd info s00:1 ({args.reports} reports)", hypd + ["info", "s00:1"]),
                 ("hypd info -v s00:1", hypd + ["info", "-v", "s00:1"])]
        for label, cmd in cases:
            stop, waits = threading.Event(), []  # type: ignore[var-annotated]
            pinger = threading.Thread(target=ping_while, args=(home, stop, waits))
            pinger.start()
            times, size = timed(cmd, env, args.repeat)
            stop.set()
            pinger.join()
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            print(f"{label:44s} median {statistics.median(times) * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   "
                  f"({size / 1e6:.2f} MB of output, {args.repeat} runs; longest ping meanwhile "
                  f"{max(waits) * 1000:.0f} ms)")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
