"""A trial run several times (`replicates = N`, one seed each): how its runs combine into
the trial's one result. Pure.

The trial's result is the mean over its completed replicates, with the standard error of
that mean (the search models noise from it); how the trial ended is the best news among
its replicates: completed if one completed, else stopped, else failed, else abandoned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypd.runstate import RunState

# How a trial reads from its replicates' endings: the first of these that one of them had.
_PRECEDENCE = (RunState.COMPLETED, RunState.STOPPED, RunState.FAILED, RunState.LOST, RunState.KILLED)


@dataclass(frozen=True)
class TrialOutcome:
    state: RunState
    means: dict[str, float]  # each metric's mean over the completed replicates that have it
    sems: dict[str, float]  # its standard error, where two or more replicates have it
    n: int  # completed replicates


def standard_error(mean: float | None, squares: float | None, n: int) -> float | None:
    """The standard error of a mean of n values, from their mean and their sum of
    squares (what SQL aggregates give); None below two values."""
    if mean is None or squares is None or n < 2:
        return None
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    return math.sqrt(variance / n)


def mean_and_sem(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def combine(replicates: Sequence[Mapping[str, Any]], objective_metric: str) -> TrialOutcome:
    """The trial's outcome from the last attempt of each replicate ({state, metrics,
    objective}); a replicate's objective (its last or best report, as the study says)
    stands for the objective metric."""
    states = {RunState(r["state"]) for r in replicates}
    state = next((s for s in _PRECEDENCE if s in states), RunState.KILLED)
    samples: dict[str, list[float]] = {}
    completed = [r for r in replicates if r["state"] == RunState.COMPLETED.value]
    for r in completed:
        values = dict(r.get("metrics") or {})
        if r.get("objective") is not None:
            values[objective_metric] = r["objective"]
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                samples.setdefault(k, []).append(float(v))
    means, sems = {}, {}
    for k, vs in samples.items():
        means[k], sem = mean_and_sem(vs)
        if sem is not None:
            sems[k] = sem
    return TrialOutcome(state, means, sems, len(completed))
