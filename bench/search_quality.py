"""How well hypd's searches spend GPU time, measured the way hypd runs them.

Not a test: a script that prints figures (and draws PNG curves with matplotlib).

1. Search quality (bench/async_search.py): 4 asynchronous workers in simulated time, hypd's
   default search called exactly as the daemon calls it, beside Ax's `Client` with its
   defaults, Optuna TPE (multivariate, constant liar) and random, on branin, hartmann6, a
   mixed space, a noisy objective and an outcome constraint. Per problem and budget: the
   median regret over the seeds, its quartiles and the worst seed; curves of median regret
   vs trials in search_quality_<problem>.png.
2. Early stopping in GPU-time (bench/learning_curves.py): no early stopping, hypd's
   default `early_stop` rule and ASHA on simulated learning curves that cross.
3. The cost of one Ax generation call with 30, 100 and 200 completed trials.

    python bench/search_quality.py                 # all of it: 10 seeds (hours on 2 cores)
    python bench/search_quality.py --quick         # 2 seeds, budget 16/30, two problems
    python bench/search_quality.py --only curves --seeds 10
    python bench/search_quality.py --only quality --problems mixed --systems hypd,ax-direct --seeds 3
    python bench/search_quality.py --only quality --procs 16   # runs side by side, one per core

Needs `pip install 'hypd[bench]'` (optuna, matplotlib); without optuna there is no TPE row.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from async_search import PROBLEMS, WORKERS, Trace, run, spec_for  # noqa: E402
from common import pyplot  # noqa: E402
from learning_curves import SHAPES, early_stopping  # noqa: E402

from hypd.search import make_suggester  # noqa: E402


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def quartiles(values: list[float]) -> tuple[float, float, float, float]:
    """Median, lower and upper quartile, worst (nearest rank: inf-safe)."""
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return statistics.median(v) if all(map(math.isfinite, v)) else at(0.5), at(0.25), at(0.75), v[-1]


def _one_run(job: tuple[str, str, int, int]) -> tuple[Trace, float]:
    """One (problem, system, budget, seed) run, in a worker process of its own."""
    name, system, top, seed = job
    warnings.filterwarnings("ignore")
    try:
        import torch  # noqa: TID251 - the bench sizes its own processes

        torch.set_num_threads(1)  # one run per core: several processes, not threads, share the machine
    except ImportError:
        pass
    t = time.perf_counter()
    trace = run(PROBLEMS[name], system, top, seed)
    return trace, time.perf_counter() - t


def _all_runs(jobs: list[tuple[str, str, int, int]], procs: int) -> list[tuple[Trace, float]]:
    if procs <= 1:
        return [_one_run(job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        return pool.map(_one_run, jobs, chunksize=1)


def quality(problems: list[str], systems: list[str], budgets: list[int], seeds: list[int],
            png_dir: Path | None, procs: int = 1) -> None:
    top = max(budgets)
    for name in problems:
        print(f"\n{name}: regret after n trials, {WORKERS} asynchronous workers, {len(seeds)} seeds: "
              f"median [quartiles] worst  ({load()})", flush=True)
        print(f"  {'system':<11}" + "".join(f"{f'n = {b}':>30}" for b in budgets)
              + f"{'s/ask':>7}{'idle':>6}{'s/run':>7}{'best gap':>15}")
        jobs = [(name, system, top, seed) for system in systems for seed in seeds]
        results = iter(_all_runs(jobs, procs))
        traces: dict[str, list[Trace]] = {}
        for system in systems:
            runs, walls = [], []
            for _ in seeds:
                trace, wall = next(results)
                runs.append(trace)
                walls.append(wall)
            traces[system] = runs
            cells = ""
            for b in budgets:
                med, q1, q3, worst = quartiles([r.regret[b - 1] if len(r.regret) >= b else math.inf for r in runs])
                cells += f"{med:>9.3f} [{q1:.3f}, {q3:.3f}] {worst:.3f}".rjust(30)
            asks = statistics.median(statistics.median(r.ask_seconds) for r in runs)
            idle = statistics.median(r.idle for r in runs) / max(1, top)
            gaps = [g for g in (r.reported_gap() for r in runs) if g is not None]
            # The reported best's true value vs the best true value evaluated, relative:
            # median / worst over the seeds ("-": the system reports no best of its own).
            gap = f"{statistics.median(gaps):.3f} / {max(gaps):.3f}" if gaps else "-"
            print(f"  {system:<11}{cells}{asks:>7.2f}{idle:>6.2f}{statistics.median(walls):>7.0f}{gap:>15}",
                  flush=True)
        if png_dir is not None:
            plot(name, traces, top, png_dir)


def plot(name: str, traces: dict[str, list[Trace]], top: int, png_dir: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, runs in traces.items():
        xs, med, lo, hi = [], [], [], []
        for n in range(1, top + 1):
            vals = [r.regret[n - 1] for r in runs if len(r.regret) >= n]
            if not vals or not all(map(math.isfinite, vals)):
                continue
            m, q1, q3, _ = quartiles(vals)
            xs.append(n), med.append(max(m, 1e-4)), lo.append(max(q1, 1e-4)), hi.append(max(q3, 1e-4))
        ax.plot(xs, med, label=system)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("trials completed")
    ax.set_ylabel("regret (median, quartiles)")
    ax.set_title(f"{name}: {WORKERS} asynchronous workers, {len(next(iter(traces.values())))} seeds")
    ax.legend()
    path = png_dir / f"search_quality_{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"  curves: {path}")


def ask_cost(sizes: list[int], repeats: int) -> None:
    """Seconds per Ax generation call once the model has n completed trials: n random
    points are attached and completed first (they count as Ax's initialisation)."""
    print(f"\nAx ask(4) cost on hartmann6 (Bayesian optimisation; median of {repeats}):", flush=True)
    print(f"  {'completed':>9} {'ask s':>8} {'best() s':>9} {'dump() s':>9} {'dump MB':>8}")
    f = PROBLEMS["hartmann6"].f
    for n in sizes:
        s = make_suggester(spec_for(PROBLEMS["hartmann6"], "ax", n + 4 * repeats + 4, seed=0))
        rng = random.Random(n)
        for _ in range(n):
            params = {f"x{i}": rng.random() for i in range(1, 7)}
            s.complete(s.attach(params), {"y": f(params)})
        asks = []
        for _ in range(repeats):
            t = time.perf_counter()
            batch = s.ask(4)
            asks.append(time.perf_counter() - t)
            for trial, params in batch:
                s.complete(trial, {"y": f(params)})
        t = time.perf_counter()
        s.best()
        best_s = time.perf_counter() - t
        t = time.perf_counter()
        state = s.dump()
        dump_s = time.perf_counter() - t
        print(f"  {n:>9} {statistics.median(asks):>8.2f} {best_s:>9.2f} {dump_s:>9.2f} "
              f"{len(state) / 1e6:>8.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, budgets 16 and 30, branin and mixed")
    parser.add_argument("--only", choices=["quality", "curves", "timing"], action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--systems", default="hypd,ax-direct,optuna-tpe,random")
    parser.add_argument("--budgets", default="16,30,60")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--curve-trials", type=int, default=40, help="trials per seed on the learning curves")
    parser.add_argument("--min-step", type=int, default=3, help="early_stop min_step on the learning curves")
    parser.add_argument("--curve-noise", type=float, default=0.02, help="noise sd on each report of the learning curves")
    parser.add_argument("--curve-shape", choices=SHAPES, default="exp",
                        help="the learning curves' shape (hyperbolic: a longer tail)")
    parser.add_argument("--first-seed", type=int, default=0, help="the learning curves' first seed (robustness checks)")
    parser.add_argument("--rules", default="none,default,asha",
                        help="early-stopping rules on the learning curves (also: asha-textbook, percentile)")
    parser.add_argument("--png", default=".", help="folder for the PNG curves ('' for none)")
    parser.add_argument("--procs", type=int, default=1,
                        help="search-quality runs in this many processes at once (one per core)")
    args = parser.parse_args(argv)
    # Ax, BoTorch, pandas and Optuna warn about their own internals; keep the tables clean.
    warnings.filterwarnings("ignore")

    parts = args.only or ["quality", "curves", "timing"]
    problems, budgets, seeds = args.problems.split(","), [int(b) for b in args.budgets.split(",")], args.seeds
    if args.quick:
        problems, budgets, seeds = ["branin", "mixed"], [16, 30], 2
    systems = args.systems.split(",")
    try:
        import optuna  # noqa: F401
    except ImportError:
        systems = [s for s in systems if s != "optuna-tpe"]
        print("(optuna is not installed: no TPE row; pip install 'hypd[bench]')")
    start = time.perf_counter()
    print(f"search_quality: {' '.join(sys.argv[1:]) or '(defaults)'}; {load()}", flush=True)
    if "quality" in parts:
        quality(problems, systems, budgets, list(range(seeds)), Path(args.png) if args.png else None,
                args.procs)
    if "curves" in parts:
        early_stopping(list(range(args.first_seed, args.first_seed + seeds)), args.curve_trials, args.min_step,
                       args.rules.split(","), say=lambda line: print(line, flush=True), noise=args.curve_noise,
                       png_dir=Path(args.png) if args.png else None, shape=args.curve_shape)
        print(f"  ({load()})", flush=True)
    if "timing" in parts:
        ask_cost([30, 100, 200], 1 if args.quick else 3)
    print(f"\ntotal {time.perf_counter() - start:.0f}s; {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
