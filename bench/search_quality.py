"""How well, and how fast, hypd's searches find the optimum of standard test functions.

Not a test: a script that prints figures. Every search runs through hypd's own Suggester
interface (a StudySpec parsed from a study file's TOML), with 4 parallel slots: ask 4,
complete them (the trials take no time), repeat.

    python bench/search_quality.py            # full: budgets 30 and 60, 5 seeds (long)
    python bench/search_quality.py --quick    # reduced: budget 30, 2 seeds

Prints, per problem (Branin 2-d, Hartmann6 6-d) and budget, the median simple regret
(best value found minus the known optimum) over the seeds of ax, sobol and random, and of
Optuna's TPE sampler when optuna is importable (pip install hypd[bench]). Each run goes to
the largest budget; the smaller budget's figure is the best of that run's first trials.
Then the median seconds of one Ax generation call (ask(4), Bayesian optimisation on
Hartmann6) with 30, 100 and 200 completed trials, with dump() size and time and best()
time at each.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypd.search import Suggester, make_suggester  # noqa: E402
from hypd.study import StudySpec, parse_study  # noqa: E402

# ---------------------------------------------------------------- problems


def branin(p: dict[str, float]) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


_H6_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H6_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14),
         (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_H6_P = ((1312, 1696, 5569, 124, 8283, 5886), (2329, 4135, 8307, 3736, 1004, 9991),
         (2348, 1451, 3522, 2883, 3047, 6650), (4047, 8828, 8732, 5743, 1091, 381))


def hartmann6(p: dict[str, float]) -> float:
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(a * math.exp(-sum(A[j] * (x[j] - P[j] * 1e-4) ** 2 for j in range(6)))
                for a, A, P in zip(_H6_ALPHA, _H6_A, _H6_P))


PROBLEMS: dict[str, tuple[Callable[[dict[str, float]], float], float, str]] = {
    "branin": (branin, 0.397887357729739,
               'x1 = { type = "float", low = -5.0, high = 10.0 }\n'
               'x2 = { type = "float", low = 0.0, high = 15.0 }\n'),
    "hartmann6": (hartmann6, -3.322368011415515,
                  "".join(f'x{i} = {{ type = "float", low = 0.0, high = 1.0 }}\n' for i in range(1, 7))),
}


def spec_for(problem: str, algorithm: str, max_trials: int, seed: int) -> StudySpec:
    text = (f'[study]\nname = "bench-{problem}"\n'
            'objective = { metric = "y", goal = "minimize" }\n'
            f'algorithm = "{algorithm}"\nmax_trials = {max_trials}\nparallel = 4\nseed = {seed}\n'
            f'[params]\n{PROBLEMS[problem][2]}'
            '[run]\ncommand = "true"\n')
    return parse_study(text)


# ---------------------------------------------------------------- runs


def run_hypd(problem: str, algorithm: str, budget: int, seed: int) -> tuple[list[float], list[float]]:
    """The values in trial order, and the seconds of each ask."""
    f = PROBLEMS[problem][0]
    s: Suggester = make_suggester(spec_for(problem, algorithm, budget, seed))
    values: list[float] = []
    asks: list[float] = []
    while len(values) < budget:
        t = time.perf_counter()
        batch = s.ask(4)
        asks.append(time.perf_counter() - t)
        if not batch:
            break
        for trial, params in batch:
            y = f(params)
            s.complete(trial, {"y": y})
            values.append(y)
    return values, asks


def run_optuna(problem: str, budget: int, seed: int) -> tuple[list[float], list[float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f = PROBLEMS[problem][0]
    spec = spec_for(problem, "random", budget, seed)
    dists = {p.name: optuna.distributions.FloatDistribution(p.low, p.high) for p in spec.searched}
    # constant_liar: Optuna's advice for parallel workers (pending trials steer the next).
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True))
    values: list[float] = []
    asks: list[float] = []
    while len(values) < budget:
        t = time.perf_counter()
        batch = [study.ask(dists) for _ in range(min(4, budget - len(values)))]
        asks.append(time.perf_counter() - t)
        for trial in batch:
            y = f(trial.params)
            study.tell(trial, y)
            values.append(y)
    return values, asks


def regret(values: list[float], n: int, optimum: float) -> float:
    return min(values[:n]) - optimum


def quality(problems: list[str], budgets: list[int], seeds: list[int], algorithms: list[str]) -> None:
    top = max(budgets)
    for problem in problems:
        optimum = PROBLEMS[problem][1]
        print(f"\n{problem}: median simple regret over {len(seeds)} seeds "
              f"(4 parallel, lower is better; [min, max] in brackets)", flush=True)
        print(f"  {'algorithm':<10}" + "".join(f"{f'{b} trials':>28}" for b in budgets) + f"{'s/run':>9}")
        for algorithm in algorithms:
            per_budget: dict[int, list[float]] = {b: [] for b in budgets}
            walls = []
            for seed in seeds:
                t = time.perf_counter()
                if algorithm == "optuna-tpe":
                    values, _ = run_optuna(problem, top, seed)
                else:
                    values, _ = run_hypd(problem, algorithm, top, seed)
                walls.append(time.perf_counter() - t)
                for b in budgets:
                    per_budget[b].append(regret(values, b, optimum))
            cells = "".join(
                f"{statistics.median(r):>10.4f} [{min(r):.4f}, {max(r):.4f}]".rjust(28)
                for r in per_budget.values())
            print(f"  {algorithm:<10}{cells}{statistics.median(walls):>9.1f}", flush=True)


def ask_cost(sizes: list[int], repeats: int) -> None:
    """Seconds per Ax generation call once the model has n completed trials: n random
    points are attached and completed first (they count as Ax's initialisation)."""
    print(f"\nAx ask(4) cost on hartmann6 (Bayesian optimisation; median of {repeats}):", flush=True)
    print(f"  {'completed':>9} {'ask s':>8} {'best() s':>9} {'dump() s':>9} {'dump MB':>8}")
    f = PROBLEMS["hartmann6"][0]
    for n in sizes:
        s = make_suggester(spec_for("hartmann6", "ax", n + 4 * repeats + 4, seed=0))
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
    parser.add_argument("--quick", action="store_true", help="budget 30, 2 seeds, 1 timing call")
    parser.add_argument("--problems", default="branin,hartmann6")
    parser.add_argument("--no-timing", action="store_true", help="skip the ask-cost table")
    parser.add_argument("--no-quality", action="store_true", help="skip the regret tables")
    args = parser.parse_args(argv)
    # Ax, BoTorch, pandas and Optuna warn about their own internals; keep the tables clean.
    warnings.filterwarnings("ignore", module=r"(ax|botorch|gpytorch|linear_operator|torch|pandas|optuna)(\.|$)")

    budgets, seeds, repeats = ([30], [0, 1], 1) if args.quick else ([30, 60], [0, 1, 2, 3, 4], 3)
    algorithms = ["ax", "sobol", "random"]
    try:
        import optuna  # noqa: F401
        algorithms.append("optuna-tpe")
    except ImportError:
        print("(optuna is not installed: no TPE row; pip install 'hypd[bench]')")
    start = time.perf_counter()
    if not args.no_quality:
        quality(args.problems.split(","), budgets, seeds, algorithms)
    if not args.no_timing:
        ask_cost([30, 100, 200], repeats)
    print(f"\ntotal {time.perf_counter() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
