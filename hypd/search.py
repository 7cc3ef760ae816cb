"""Search algorithms behind one interface, so the daemon's scheduler does not care which.

A `Suggester` proposes trials (`ask`), learns outcomes (`complete`, `fail`, `abandon`,
`report`), and serialises its whole state (`dump`) so a study resumes after a restart.
The daemon calls every method off the event loop (in a worker thread), one call at a
time per study, and stores `dump()` after each change.

Trial numbers are the suggester's: the daemon stores trials under the numbers it returns.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from hypd.study import (
    ChoiceParam,
    FixedParam,
    IntParam,
    Param,
    StudySpec,
    complete_params,
    grid_axes,
)


class SearchError(ValueError):
    """A request the search cannot honour (a bad hand-given trial, a changed space)."""


class Suggester(ABC):
    """The search side of a study."""

    #: False when every trial is known up front (grid, random): the daemon then queues
    #: them all as pending runs at submit; True when trials are asked for as slots free.
    adaptive: bool = False

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    @abstractmethod
    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to n new trials as (trial number, full parameters); fewer, or none, when the
        space or the budget is exhausted."""

    @abstractmethod
    def attach(self, params: Mapping[str, Any]) -> int:
        """Register a hand-given trial (`hypd suggest`); returns its trial number.
        Raises SearchError if the values are outside the space."""

    def report(self, trial: int, step: int, values: Mapping[str, float]) -> None:
        """An intermediate report of a running trial (for early stopping)."""

    def complete(self, trial: int, values: Mapping[str, float]) -> None:
        """The trial's final values (the objective's result and other metrics)."""

    def fail(self, trial: int) -> None:
        """The trial failed: a bad configuration, it should inform the search."""

    def abandon(self, trial: int) -> None:
        """The trial ended without a verdict (killed, or lost with its host)."""

    def early_stop(self, running: list[int]) -> list[int]:
        """Of these running trials, the ones to stop now. Default: none."""
        return []

    def best(self) -> dict[str, Any] | None:
        """The model's predicted best parameters, with predictions, if it has a model."""
        return None

    @abstractmethod
    def dump(self) -> str:
        """The whole state as a string; `load_suggester(spec, dump())` gives it back."""

    @abstractmethod
    def _restore(self, state: Mapping[str, Any]) -> None: ...


def _stable_seed(spec: StudySpec) -> int:
    if spec.seed is not None:
        return spec.seed
    return int.from_bytes(hashlib.sha256(spec.name.encode()).digest()[:4], "big")


def sample_value(param: Param, rng: random.Random) -> Any:
    """One uniformly drawn value (log-uniform on a log scale)."""
    if isinstance(param, FixedParam):
        return param.value
    if isinstance(param, ChoiceParam):
        return rng.choice(param.values)
    if isinstance(param, IntParam):
        if param.log:
            x = math.exp(rng.uniform(math.log(param.low), math.log(param.high + 1)))
            return min(param.high, int(math.floor(x)))
        return rng.randrange(param.low, param.high + 1, param.step)
    if param.log:
        x = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
        return min(param.high, max(param.low, x))
    if param.step is not None:
        count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
        return min(param.high, round(param.low + rng.randrange(count) * param.step, 12))
    return rng.uniform(param.low, param.high)


class _Enumerated(Suggester):
    """Trials numbered 0, 1, 2, ...; hand-given trials take the next number too."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__(spec)
        self.next_trial = 0
        self.next_point = 0  # index into the algorithm's own sequence
        self.attached: list[int] = []

    def budget(self) -> int:
        return self.spec.max_trials if self.spec.max_trials is not None else 1 << 62

    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        out = []
        while len(out) < n and self.next_trial < self.budget():
            params = self.point(self.next_point)
            if params is None:
                break
            out.append((self.next_trial, params))
            self.next_point += 1
            self.next_trial += 1
        return out

    def attach(self, params: Mapping[str, Any]) -> int:
        try:
            full = complete_params(self.spec, params)
        except ValueError as exc:
            raise SearchError(str(exc)) from None
        del full  # validated; the daemon stores the parameters with the trial
        trial = self.next_trial
        self.next_trial += 1
        self.attached.append(trial)
        return trial

    def point(self, index: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def dump(self) -> str:
        return json.dumps({"algorithm": self.spec.algorithm, "next_trial": self.next_trial,
                           "next_point": self.next_point, "attached": self.attached})

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.next_trial = int(state["next_trial"])
        self.next_point = int(state["next_point"])
        self.attached = list(state.get("attached", []))


class GridSearch(_Enumerated):
    """Every combination, in order (the last parameter varies fastest)."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__(spec)
        self.axes = grid_axes(spec.params, spec.max_trials)

    def size(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def point(self, index: int) -> dict[str, Any] | None:
        if index >= self.size():
            return None
        values = []
        for axis in reversed(self.axes):
            index, i = divmod(index, len(axis))
            values.append(axis[i])
        return {p.name: v for p, v in zip(self.spec.params, reversed(values))}


class RandomSearch(_Enumerated):
    """Independent uniform draws; point i depends only on the seed and i, so a restart
    continues the same sequence."""

    def point(self, index: int) -> dict[str, Any] | None:
        rng = random.Random(f"{_stable_seed(self.spec)}:{index}")
        return {p.name: sample_value(p, rng) for p in self.spec.params}


def grid_size(spec: StudySpec) -> int:
    return math.prod(len(a) for a in grid_axes(spec.params, spec.max_trials))


def make_suggester(spec: StudySpec) -> Suggester:
    """A fresh suggester for the study's algorithm."""
    if spec.algorithm == "grid":
        return GridSearch(spec)
    if spec.algorithm == "random":
        return RandomSearch(spec)
    raise SearchError(f"algorithm {spec.algorithm!r} is not available in this build of hypd")


def load_suggester(spec: StudySpec, state: str | None) -> Suggester:
    """The study's suggester, restored from a `dump()` (None: a fresh one)."""
    suggester = make_suggester(spec)
    if state:
        suggester._restore(json.loads(state))
    return suggester


__all__ = [
    "GridSearch", "RandomSearch", "SearchError", "Suggester", "grid_size",
    "load_suggester", "make_suggester", "sample_value",
]
