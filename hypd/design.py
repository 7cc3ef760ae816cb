"""Points of a search space from points of the unit cube (pure: no I/O, no Ax).

`value_at` maps a number in [0, 1) onto a parameter the way a uniform draw does
(log-uniform on a log scale, every value of a choice or a stepped range equally likely);
random search draws through it, and the Bayesian search's first trials are a Latin
hypercube through it: each parameter's range cut into as many equal slices as there are
points, one point per slice; a choice with k values gets each value n/k times (give or
take one) however the other parameters fall.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from hypd.study import ChoiceParam, FixedParam, FloatParam, IntParam, Param


def value_at(param: Param, u: float) -> Any:
    """The parameter's value at u in [0, 1)."""
    u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
    if isinstance(param, FixedParam):
        return param.value
    if isinstance(param, ChoiceParam):
        return param.values[int(u * len(param.values))]
    if isinstance(param, IntParam):
        if param.log:
            x = math.exp(math.log(param.low) + u * (math.log(param.high + 1) - math.log(param.low)))
            return min(param.high, max(param.low, int(math.floor(x))))
        count = (param.high - param.low) // param.step + 1
        return param.low + int(u * count) * param.step
    assert isinstance(param, FloatParam)
    if param.log:
        x = math.exp(math.log(param.low) + u * (math.log(param.high) - math.log(param.low)))
        return min(param.high, max(param.low, x))
    if param.step is not None:
        count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
        return round(param.low + int(u * count) * param.step, 12)  # as study.grid_axes has it
    return param.low + u * (param.high - param.low)


def initial_design(params: Sequence[Param], n: int, seed: int) -> list[dict[str, Any]]:
    """The first n trials of a Bayesian search: a Latin hypercube over `params`, and for a
    choice its values dealt out evenly (n // k each, the rest to values picked at random),
    in random order. Each column is shuffled on its own, so no two parameters move together."""
    rng = random.Random(f"hypd-design:{seed}")
    columns: list[list[Any]] = []
    for p in params:
        if isinstance(p, ChoiceParam):
            k = len(p.values)
            offset = rng.randrange(k)
            column = [p.values[(i + offset) % k] for i in range(n)]
            rng.shuffle(column)
        else:
            slices = list(range(n))
            rng.shuffle(slices)
            column = [value_at(p, (s + rng.random()) / n) for s in slices]
        columns.append(column)
    return [{p.name: column[i] for p, column in zip(params, columns)} for i in range(n)]
