"""Searches compared the way hypd runs them: 4 workers, asynchronous, in simulated time.

Each trial takes a duration drawn when it starts (exponential, its mean may depend on the
parameters: a wider net runs longer). A worker that frees tells its result, then asks for
one trial while the three others are still pending, as the daemon does when a GPU frees.
hypd's searches are called exactly as the daemon calls them (hypd/studies.py): `ask`,
then `dump` (stored with the new trials); `complete`, then `dump` (stored with the told
marks). A search that proposes nothing now (Ax waiting for data) leaves its worker idle
until the next result.

Problems (0 is the best regret; what a run scores is the true value of the trial with the
best observed value among the feasible ones, minus the optimum):

- branin (2 floats), hartmann6 (6 floats in [0, 1]);
- mixed: a validation loss over lr (log float), width (log int, also the trial's duration),
  layers (int), opt (a 3-way choice: the wrong ones put the loss on plateaus +0.3, +0.8)
  and dropout (float);
- noisy: hartmann6 observed with Gaussian noise, sd 10 % of the optimum's magnitude;
- constrained: branin under an outcome constraint `c <= 50` (a disk that keeps one of its
  three minima feasible).

Systems: hypd's default (`ax`), Ax's `Client` with its defaults (Ax 1.x, the same
parameter configs), Optuna TPE (multivariate, constant liar), and hypd's `random`.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypd.search import Suggester, _AxSpace, make_suggester
from hypd.study import ChoiceParam, FloatParam, IntParam, StudySpec, parse_study

WORKERS = 4


# ---------------------------------------------------------------- problems


def branin(p: Mapping[str, float]) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


_H6_ALPHA = (1.0, 1.2, 3.0, 3.2)
_H6_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14),
         (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_H6_P = ((1312, 1696, 5569, 124, 8283, 5886), (2329, 4135, 8307, 3736, 1004, 9991),
         (2348, 1451, 3522, 2883, 3047, 6650), (4047, 8828, 8732, 5743, 1091, 381))


def hartmann6(p: Mapping[str, float]) -> float:
    x = [p[f"x{i}"] for i in range(1, 7)]
    return -sum(a * math.exp(-sum(A[j] * (x[j] - P[j] * 1e-4) ** 2 for j in range(6)))
                for a, A, P in zip(_H6_ALPHA, _H6_A, _H6_P))


_MIXED_LR = {"adam": -3.0, "sgd": -1.3, "rmsprop": -2.5}  # log10 of each optimiser's best lr
_MIXED_PLATEAU = {"adam": 0.0, "sgd": 0.3, "rmsprop": 0.8}


def mixed(p: Mapping[str, Any]) -> float:
    u = math.log10(p["lr"]) - _MIXED_LR[p["opt"]]
    w = math.log2(p["width"]) - 8
    return (0.08 * u * u + 0.02 * w * w + 0.01 * (p["layers"] - 4) ** 2 + 0.5 * (p["dropout"] - 0.2) ** 2
            + _MIXED_PLATEAU[p["opt"]])


BRANIN = 'x1 = { type = "float", low = -5.0, high = 10.0 }\nx2 = { type = "float", low = 0.0, high = 15.0 }\n'
HARTMANN6 = "".join(f'x{i} = {{ type = "float", low = 0.0, high = 1.0 }}\n' for i in range(1, 7))
MIXED = ('lr = { type = "float", low = 1e-5, high = 1.0, log = true }\n'
         'width = { type = "int", low = 16, high = 1024, log = true }\n'
         'layers = { type = "int", low = 1, high = 8 }\n'
         'opt = { values = ["sgd", "rmsprop", "adam"] }\n'
         'dropout = { type = "float", low = 0.0, high = 0.6 }\n')


@dataclass(frozen=True)
class Problem:
    name: str
    params: str  # the [params] table
    f: Callable[[Mapping[str, Any]], float]
    optimum: float
    noise: float = 0.0  # sd of the observation noise
    constraint: tuple[str, Callable[[Mapping[str, Any]], float], float] | None = None  # (metric, fn, bound): fn <= bound
    duration: Callable[[Mapping[str, Any]], float] = lambda p: 1.0  # mean duration of a trial

    def constraints(self) -> list[str]:
        return [f"{self.constraint[0]} <= {self.constraint[2]}"] if self.constraint else []


PROBLEMS = {p.name: p for p in (
    Problem("branin", BRANIN, branin, 0.397887357729739),
    Problem("hartmann6", HARTMANN6, hartmann6, -3.322368011415515),
    Problem("mixed", MIXED, mixed, 0.0, duration=lambda p: 0.5 + p["width"] / 512),
    Problem("noisy", HARTMANN6, hartmann6, -3.322368011415515, noise=0.332),
    Problem("constrained", BRANIN, branin, 0.397887357729739,
            constraint=("c", lambda p: (p["x1"] - 2.5) ** 2 + (p["x2"] - 7.5) ** 2, 50.0)),
)}


def spec_for(problem: Problem, algorithm: str, budget: int, seed: int) -> StudySpec:
    constraints = f"constraints = {problem.constraints()!r}\n".replace("'", '"') if problem.constraint else ""
    text = (f'[study]\nname = "bench-{problem.name}"\nobjective = {{ metric = "y", goal = "minimize" }}\n'
            f'algorithm = "{algorithm}"\nmax_trials = {budget}\nparallel = {WORKERS}\nseed = {seed}\n{constraints}'
            f'[params]\n{problem.params}[run]\ncommand = "true"\n')
    return parse_study(text)


# ---------------------------------------------------------------- systems


class System:
    """One search, as a worker sees it: ask for a trial (None: nothing now), tell a result."""

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        raise NotImplementedError

    def tell(self, key: Any, params: Mapping[str, Any], values: Mapping[str, float]) -> None:
        raise NotImplementedError

    def reported(self) -> dict[str, Any] | None:
        """The parameters the system reports as its best (its model's, where it has one)."""
        raise NotImplementedError


class Hypd(System):
    """hypd's Suggester, called as the daemon calls it, its state dumped after each change."""

    def __init__(self, spec: StudySpec) -> None:
        self.s: Suggester = make_suggester(spec)

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        got = self.s.ask(1)
        self.s.dump()
        return got[0] if got else None

    def tell(self, key: Any, params: Mapping[str, Any], values: Mapping[str, float]) -> None:
        self.s.complete(key, dict(values))
        self.s.dump()

    def reported(self) -> dict[str, Any] | None:
        best = self.s.best()  # what `hypd best` shows
        return dict(best["params"]) if best else None


class AxDirect(System):
    """Ax's Client as its documentation shows it: the experiment, the objective, the
    outcome constraints, and its default generation strategy."""

    def __init__(self, spec: StudySpec) -> None:
        from ax import Client  # noqa: TID251 - the bench compares with Ax used directly

        self.space = _AxSpace(spec.searched)
        self.spec = spec
        self.client = Client(random_seed=spec.seed)
        self.client.configure_experiment(parameters=self.space.configs(), name=spec.name)
        self.client.configure_optimization(objective="-y", outcome_constraints=list(spec.constraints) or None)

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        try:
            trials = self.client.get_next_trials(max_trials=1)
        except Exception:  # Ax waiting for data (its initialisation, its parallelism)
            return None
        if not trials:
            return None
        ((index, params),) = trials.items()
        return index, self.space.from_ax(self.spec, params)

    def tell(self, key: Any, params: Mapping[str, Any], values: Mapping[str, float]) -> None:
        self.client.complete_trial(trial_index=key, raw_data=dict(values))

    def reported(self) -> dict[str, Any] | None:
        try:
            params, *_ = self.client.get_best_parameterization(use_model_predictions=True)
        except Exception:  # no feasible trial yet
            return None
        return self.space.from_ax(self.spec, params)


class OptunaTpe(System):
    """Optuna's TPE, multivariate, with the constant liar for pending trials (its advice
    for parallel workers); an outcome constraint through constraints_func."""

    def __init__(self, spec: StudySpec) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dists: dict[str, Any] = {}
        for p in spec.searched:
            if isinstance(p, ChoiceParam):
                self.dists[p.name] = optuna.distributions.CategoricalDistribution(list(p.values))
            elif isinstance(p, IntParam):
                self.dists[p.name] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log)
            elif isinstance(p, FloatParam):
                self.dists[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
        constrained = bool(spec.constraints)
        self.bound = {c.split("<=")[0].strip(): float(c.split("<=")[1]) for c in spec.constraints}
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed, multivariate=True, constant_liar=True,
            constraints_func=(lambda t: t.user_attrs.get("constraints", [0.0])) if constrained else None)
        self.study = optuna.create_study(sampler=sampler)

    def ask(self) -> tuple[Any, dict[str, Any]] | None:
        trial = self.study.ask(self.dists)
        return trial, dict(trial.params)

    def tell(self, key: Any, params: Mapping[str, Any], values: Mapping[str, float]) -> None:
        if self.bound:
            key.set_user_attr("constraints", [values[m] - b for m, b in self.bound.items()])
        self.study.tell(key, values["y"])

    def reported(self) -> dict[str, Any] | None:
        try:
            return dict(self.study.best_trial.params)
        except ValueError:  # no completed trial
            return None


SYSTEMS: dict[str, Callable[[StudySpec], System]] = {
    "hypd": Hypd, "ax-direct": AxDirect, "optuna-tpe": OptunaTpe,
    "random": lambda spec: Hypd(spec),  # with algorithm "random" (see run)
}


# ---------------------------------------------------------------- the simulation


@dataclass(order=True)
class _Done:
    at: float
    seq: int
    key: Any = field(compare=False)
    params: dict[str, Any] = field(compare=False)


@dataclass
class Trace:
    regret: list[float]  # after each completed trial, in order of completion
    ask_seconds: list[float]
    idle: float  # worker-time spent waiting for the search to propose something
    # At the end: the true value of the trial the system reports as best (for hypd, what
    # `hypd best` returns: the model's best under noise), and the best true value among the
    # feasible trials evaluated; None where the system reports nothing.
    reported_true: float | None = None
    best_true_evaluated: float = math.inf

    def reported_gap(self) -> float | None:
        """How much worse the reported best truly is than the best evaluated, as a fraction
        of the best evaluated's magnitude (0: it is the best; the goal under noise is <= 0.1)."""
        if self.reported_true is None or not math.isfinite(self.best_true_evaluated):
            return None
        return (self.reported_true - self.best_true_evaluated) / max(abs(self.best_true_evaluated), 1e-12)


def run(problem: Problem, system: str, budget: int, seed: int) -> Trace:
    spec = spec_for(problem, "random" if system == "random" else "ax", budget, seed)
    search = SYSTEMS[system](spec)
    rng = random.Random(f"{problem.name}:{seed}")  # durations and noise: the same for every system
    running: list[_Done] = []
    idle_since: list[float] = []
    asked = seq = 0
    asks: list[float] = []
    now = idle = 0.0

    def launch() -> bool:
        nonlocal asked, seq
        t = time.perf_counter()
        got = search.ask()
        asks.append(time.perf_counter() - t)
        if got is None:
            return False
        key, params = got
        asked += 1
        seq += 1
        heapq.heappush(running, _Done(now + rng.expovariate(1 / problem.duration(params)), seq, key, params))
        return True

    for _ in range(WORKERS):
        if not launch():
            idle_since.append(now)
    best_seen, best_true, best_evaluated = math.inf, math.inf, math.inf
    regret: list[float] = []
    while len(regret) < budget and running:
        done = heapq.heappop(running)
        now = done.at
        true = problem.f(done.params)
        values = {"y": true + (rng.gauss(0.0, problem.noise) if problem.noise else 0.0)}
        feasible = True
        if problem.constraint is not None:
            metric, fn, bound = problem.constraint
            values[metric] = fn(done.params)
            feasible = values[metric] <= bound
        search.tell(done.key, done.params, values)
        if feasible and values["y"] < best_seen:
            best_seen, best_true = values["y"], true
        if feasible:
            best_evaluated = min(best_evaluated, true)
        regret.append(best_true - problem.optimum)
        # The freed worker, and any idle ones, ask (never past the budget).
        waiting = [now] + idle_since
        idle_since = []
        for since in waiting:
            if asked < budget and launch():
                idle += now - since
            elif asked < budget:
                idle_since.append(since)
    reported = search.reported()
    return Trace(regret, asks, idle, problem.f(reported) if reported is not None else None, best_evaluated)
