"""Early stopping measured in GPU-time, on simulated learning curves (part of search_quality).

A trial is a training run of `MAX_STEP` epochs; its curve depends on its configuration:

- final loss: a bowl in log(lr) around an optimiser-dependent best lr, plus width,
  dropout and optimiser terms (best ~0.25);
- speed: a lower lr and a wider net converge more slowly (time constant `tau` in epochs),
  so curves cross: the configurations that finish best are often not ahead early on;
- `--curve-shape hyperbolic`: the same with a longer tail (the excess over the final
  loss falls as 1 / (1 + epochs / tau) instead of exp(-epochs / tau)), to check the
  rules' limits;
- per-step Gaussian noise (sd `NOISE`) on every reported loss; the final report is the
  last step's (noisy) value;
- cost: an epoch takes 0.5 + width/256 GPU-seconds.

Configurations come from hypd's Suggester (algorithm "sobol", the same points in the
same order under every rule), on 4 workers in simulated time; each freed worker asks for
one trial. Rules compared on the same trials:

- none: every trial runs its MAX_STEP epochs;
- default: hypd's `early_stop = { min_step }` (rule "trend", hypd/trend.py's Ledger fed
  each report and asked after each, as the daemon does; every report also reaches the
  Suggester);
- asha: `early_stop = { rule = "asha", min_step, max_step, eta = 3 }`, hypd/asha.py's
  Ledger the same way;
- not run by default (`--rules`): asha-textbook (`guard = false`), and percentile
  (`early_stop = { rule = "percentile", min_step }`, Ax's percentile rule, called as the
  daemon calls it: `early_stop(running)` after each report).

Figure (`--png DIR`: DIR/early_stopping.png): how far the best completed trial's true
final loss is from the budget's best, against the GPU-seconds spent, median and
quartiles over the seeds, per rule. Table: GPU-seconds until a trial completes whose true (noise-free) final loss is within
1 % of the best true final loss among the trials proposed (the budget's best), median
over seeds, and how many times cheaper than none (none's median over this median, and
the median of the per-seed ratios); how many seeds stopped that best configuration
early; the GPU-seconds of the whole budget.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import pyplot

from hypd import asha, trend
from hypd.search import Suggester, make_suggester
from hypd.study import StudySpec, parse_study

MAX_STEP = 27
NOISE = 0.02  # the default; --curve-noise varies it to check the rules' robustness
WORKERS = 4
TARGET = 0.01  # within 1 % of the best final loss
BEST_LR = {"adam": -2.7, "sgd": -1.2, "adamw": -2.5}  # log10 of each optimiser's best lr
OPT_COST = {"adam": 0.02, "sgd": 0.04, "adamw": 0.0}
SLOW_LR, SLOW_WIDTH = 0.35, 0.35  # how much a lower lr, a wider net slow convergence (exponents)
AMPLITUDE = 0.6  # loss above the final one at the start

PARAMS = ('lr = { type = "float", low = 1e-5, high = 1.0, log = true }\n'
          'width = { type = "int", low = 16, high = 1024, log = true }\n'
          'dropout = { type = "float", low = 0.0, high = 0.6 }\n'
          'opt = { values = ["adam", "sgd", "adamw"] }\n')

RULES = {
    "none": "",
    "default": "early_stop = {{ min_step = {min_step} }}",
    "asha": 'early_stop = {{ rule = "asha", min_step = {min_step}, max_step = {max_step}, eta = 3 }}',
    "asha-textbook": 'early_stop = {{ rule = "asha", min_step = {min_step}, max_step = {max_step}, eta = 3, guard = false }}',
    "percentile": 'early_stop = {{ rule = "percentile", min_step = {min_step} }}',
}


def final_loss(p: dict[str, Any]) -> float:
    u = math.log10(p["lr"]) - BEST_LR[p["opt"]]
    w = math.log2(p["width"]) - 8.5
    return 0.25 + 0.06 * u * u + 0.01 * w * w + 0.3 * (p["dropout"] - 0.2) ** 2 + OPT_COST[p["opt"]]


def tau(p: dict[str, Any]) -> float:
    """Epochs to converge by a factor e: slower with a lower lr and a wider net."""
    u = math.log10(p["lr"]) - BEST_LR[p["opt"]]
    return min(40.0, max(0.3, 2.5 * 10 ** (-SLOW_LR * u) * (p["width"] / 256) ** SLOW_WIDTH))


SHAPES = ("exp", "hyperbolic")


def loss_at(p: dict[str, Any], step: int, shape: str = "exp") -> float:
    """The noise-free loss after `step` epochs (step 0 is after the first). "hyperbolic"
    (a longer tail, to check the rules' limits): the excess falls as 1 / (1 + epochs / tau)."""
    epochs = (step + 1) / tau(p)
    return final_loss(p) + AMPLITUDE * (math.exp(-epochs) if shape == "exp" else 1 / (1 + epochs))


def cost_per_step(p: dict[str, Any]) -> float:
    return 0.5 + p["width"] / 256


def spec_for(rule: str, trials: int, seed: int, min_step: int) -> StudySpec:
    extra = RULES[rule].format(min_step=min_step, max_step=MAX_STEP)
    text = (f'[study]\nname = "curves"\nobjective = {{ metric = "loss", goal = "minimize" }}\n'
            f'algorithm = "sobol"\nmax_trials = {trials}\nparallel = {WORKERS}\nseed = {seed}\n{extra}\n'
            f'[params]\n{PARAMS}[run]\ncommand = "true"\n')
    return parse_study(text)


@dataclass
class Outcome:
    to_target: float  # GPU-seconds until a trial within 1 % of the budget's best completed (inf: never)
    best_stopped: bool  # the budget's best configuration was stopped early
    total: float  # GPU-seconds of the whole budget
    stopped: int  # trials stopped early
    seconds: float  # wall-clock seconds the simulation took (the rule's own cost included)
    trace: list[tuple[float, float]]  # at each completion: GPU-seconds so far, best true final loss completed / the budget's best - 1


@dataclass(order=True)
class _Step:
    at: float
    trial: int = field(compare=True)
    step: int = field(compare=False)


def simulate(rule: str, seed: int, trials: int, min_step: int, noise: float = NOISE, shape: str = "exp") -> Outcome:
    began = time.perf_counter()
    spec = spec_for(rule, trials, seed, min_step)
    s: Suggester = make_suggester(spec)
    own = asha.Asha.of(spec.early_stop) or trend.Trend.of(spec.early_stop)
    ledger: asha.Ledger | trend.Ledger | None = None
    if own is not None:
        ledger = asha.Ledger(own) if isinstance(own, asha.Asha) else trend.Ledger(own)
    rng = random.Random(seed * 7919 + 1)
    params: dict[int, dict[str, Any]] = {}
    started: dict[int, float] = {}
    ended: dict[int, float] = {}
    stopped: set[int] = set()
    events: list[_Step] = []

    def start(now: float) -> None:
        for trial, p in s.ask(1):
            params[trial], started[trial] = p, now
            heapq.heappush(events, _Step(now + cost_per_step(p), trial, 0))

    for _ in range(WORKERS):
        start(0.0)
    completions: list[tuple[float, int]] = []
    while events:
        ev = heapq.heappop(events)
        t, trial, step = ev.at, ev.trial, ev.step
        p = params[trial]
        value = loss_at(p, step, shape) + rng.gauss(0.0, noise)
        if step == MAX_STEP - 1:
            ended[trial] = t
            if spec.early_stop is not None:
                s.report(trial, step, {"loss": value})
            s.complete(trial, {"loss": value})
            completions.append((t, trial))
            start(t)
            continue
        stop = False
        if spec.early_stop is not None:
            s.report(trial, step, {"loss": value})
            if ledger is not None:
                ledger.add(trial, [(step, t, value)])
                stop = trial in ledger.to_stop([trial])
            else:
                stop = trial in s.early_stop([trial])
        if stop:
            ended[trial] = t
            stopped.add(trial)
            if ledger is not None:
                s.stopped(trial)
            start(t)
            continue
        heapq.heappush(events, _Step(t + cost_per_step(p), trial, step + 1))

    finals = {trial: final_loss(p) for trial, p in params.items()}
    best_trial = min(finals, key=finals.__getitem__)
    target = finals[best_trial] * (1 + TARGET)

    def gpu_until(moment: float) -> float:
        return sum(max(0.0, min(ended.get(tr, moment), moment) - started[tr]) for tr in started)

    hit = next((t for t, trial in sorted(completions) if finals[trial] <= target), None)
    trace, best = [], math.inf
    for t, trial in sorted(completions):
        best = min(best, finals[trial])
        trace.append((gpu_until(t), best / finals[best_trial] - 1))
    return Outcome(gpu_until(hit) if hit is not None else math.inf, best_trial in stopped,
                   gpu_until(math.inf), len(stopped), time.perf_counter() - began, trace)


def crossing(trials: int, seed: int, step: int, shape: str = "exp") -> tuple[float, float]:
    """How much the proposed configurations' curves cross (a property of the problem): the
    share of pairs whose order after `step` epochs is not their final order, and the best
    configuration's rank then, as a fraction of the trials (0: first)."""
    ps = [p for _, p in make_suggester(spec_for("none", trials, seed, 1)).ask(trials)]
    pairs = [(a, b) for i, a in enumerate(ps) for b in ps[i + 1:]]
    flips = sum((loss_at(a, step - 1, shape) < loss_at(b, step - 1, shape)) != (final_loss(a) < final_loss(b))
                for a, b in pairs)
    best = min(ps, key=final_loss)
    rank = sum(loss_at(q, step - 1, shape) < loss_at(best, step - 1, shape) for q in ps)
    return flips / len(pairs), rank / len(ps)


def early_stopping(seeds: list[int], trials: int, min_step: int, rules: list[str], say: Any = print,
                   noise: float = NOISE, png_dir: Path | None = None, shape: str = "exp") -> dict[str, list[Outcome]]:
    cross = [crossing(trials, seed, min_step, shape) for seed in seeds]
    say(f"\nlearning curves ({shape}): {trials} trials (sobol), {WORKERS} workers, {MAX_STEP} epochs, noise sd {noise}, "
        f"min_step {min_step}, {len(seeds)} seeds. Curves cross: after {min_step} epochs "
        f"{statistics.median(c for c, _ in cross):.0%} of pairs of trials are in the wrong order, and the "
        f"best trial is behind {statistics.median(r for _, r in cross):.0%} of the others (median over seeds)")
    say(f"  {'rule':<13} {'GPU-s to within 1% of best':>27} {'vs none':>8} {'per seed':>9} {'best stopped':>13} "
        f"{'GPU-s, all trials':>18} {'stopped':>8} {'s/seed':>7}")
    out: dict[str, list[Outcome]] = {}
    for rule in rules:
        res = [simulate(rule, seed, trials, min_step, noise, shape) for seed in seeds]
        out[rule] = res
        med = statistics.median(r.to_target for r in res)
        q = statistics.quantiles([r.to_target for r in res], n=4) if len(res) > 1 else [med, med, med]
        ratio = per_seed = ""  # none's median / this median; the median of the per-seed ratios
        if "none" in out and rule != "none":
            ratio = f"{statistics.median(r.to_target for r in out['none']) / med:.2f}x"
            per_seed = f"{statistics.median(out['none'][i].to_target / r.to_target for i, r in enumerate(res)):.2f}x"
        say(f"  {rule:<13} {med:>10.0f} [{q[0]:.0f}, {q[2]:.0f}]".ljust(43) + f" {ratio:>8} {per_seed:>9} "
            f"{sum(r.best_stopped for r in res):>6} of {len(res):<4} {statistics.median(r.total for r in res):>18.0f} "
            f"{statistics.median(r.stopped for r in res):>8.0f} {statistics.median(r.seconds for r in res):>7.1f}")
    if png_dir is not None:
        plot(out, f"{shape} curves, {trials} trials, {WORKERS} workers, noise sd {noise}, min_step {min_step}, "
                  f"{len(seeds)} seeds",
             png_dir / ("early_stopping.png" if shape == "exp" else f"early_stopping_{shape}.png"), say)
    return out


def plot(out: dict[str, list[Outcome]], title: str, path: Path, say: Any) -> None:
    """How far the best completed trial is from the budget's best, against the GPU-seconds
    spent: median and quartiles over the seeds, per rule."""
    plt = pyplot()
    if plt is None:
        return
    top = max(r.total for res in out.values() for r in res)
    grid = [top * i / 200 for i in range(1, 201)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for rule, res in out.items():
        xs, med, lo, hi = [], [], [], []
        for x in grid:
            gaps = [min((gap for at, gap in r.trace if at <= x), default=math.inf) for r in res]
            q1, m, q3 = statistics.quantiles(gaps, n=4) if len(gaps) > 1 else (gaps[0],) * 3
            if math.isfinite(m):
                xs.append(x), med.append(max(m, 1e-4)), lo.append(max(q1, 1e-4))
                hi.append(max(q3, 1e-4) if math.isfinite(q3) else 10.0)
        ax.plot(xs, med, label=rule)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.0)
    ax.set_xlabel("GPU-seconds spent")
    ax.set_ylabel("best completed final loss / best - 1")
    ax.set_title(f"early stopping: {title}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    say(f"  curves: {path}")
