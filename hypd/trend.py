"""The default early-stopping rule, "trend": which running runs to stop, from their reports.

Pure: no I/O, no clock. `early_stop = { metric, min_step }` (rule "trend"):

- A run is judged at each of its reports from `min_step` on, at its latest step s,
  against its peers there: every other run of the study (running, ended, stopped alike)
  that has reported at step s or later. A run's value at a step is the mean of its last
  SMOOTH reports up to that step (one noisy report decides nothing alone).
- Rank: it goes on while it is in the top KEEP (a third) of the runs at step s, itself
  included (always at least one), or while fewer than MIN_RUNS runs have got to s.
- Trend guard: a run below the top still goes on while its own curve could take it to the
  runs that go on. Its optimistic final value is its value at s minus GAIN times what it
  gained since step s/2; it is stopped only if that is worse than the threshold (the
  KEEP-th best latest value among its peers) by more than Z noise standard deviations.
- The noise is estimated from the study's reports: a smooth curve's second differences
  are about 0 and noise's have sd sqrt(6)·σ, so σ = 1.4826 · median |second difference|
  / sqrt(6). With fewer than MIN_NOISE second differences nothing is stopped.
- Ties go to the lower run id; a non-finite value ranks last (and has no trend).

Why not rank alone (Ax's percentile rule, ASHA): learning curves cross. A lower learning
rate or a wider net starts slower and finishes better, so at an early step the run that
will end best is often behind half the others (bench/learning_curves.py: behind up to
22 of 40 after 3 epochs). Ranking by the value at a step stops it, or must keep so many
runs that little is saved. What tells a slow starter from a poor run is its slope: a run
still falling fast is spared, one that has flattened out behind is stopped, and later
steps, where curves no longer cross much, judge by rank with only noise in the way.
GAIN 1.5: an exponential curve that has covered half its way down between s/2 and s has
as much again to go (gain 1), a slower one more; a power law's remaining gain is a
constant multiple of its last one (1.5 up to step^-0.74). Longer tails break the
assumption: on curves whose excess falls as 1 / (1 + step/tau) the bench's best trial
was stopped in 8 of 30 seeds (`--curve-shape hyperbolic`); a later min_step is the
remedy there. Z 2 keeps noise alone from stopping a run near the top when its value is
judged every step.

Every verdict depends only on the reports, so it is recomputed from them at any time
(after a restart too) and comes out the same.
"""

from __future__ import annotations

import bisect
import math
import statistics
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypd.study import EarlyStop

KEEP = 1 / 3  # the share of the runs at a step that goes on by rank alone
MIN_RUNS = 3  # runs at a step (itself included) before anyone is stopped there
SMOOTH = 2  # reports averaged into a run's value at a step
GAIN = 1.5  # its gain since step s/2, times this: how much more it may gain (optimistic)
Z = 2.0  # noise standard deviations a run must be behind by, after its trend
MIN_NOISE = 5  # second differences needed to estimate the noise


@dataclass
class Curve:
    """A run's reports of the metric: steps in order, and the score at each (lower is
    better). Of two reports at one step the earlier counts (then the better): the same
    whatever order they are added in. Arrays: 24 bytes a report (a study's every report
    is held while it early-stops)."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    scores: array[float] = field(default_factory=lambda: array("d"))
    times: array[float] = field(default_factory=lambda: array("d"))

    def add(self, step: int, time: float, score: float) -> None:
        i = bisect.bisect_left(self.steps, step)
        if i < len(self.steps) and self.steps[i] == step:
            if (time, score) < (self.times[i], self.scores[i]):
                self.times[i], self.scores[i] = time, score
            return
        self.steps.insert(i, step)
        self.times.insert(i, time)
        self.scores.insert(i, score)

    @property
    def last_step(self) -> int:
        return self.steps[-1]

    def value_at(self, step: int) -> float:
        """Mean of the last SMOOTH scores at or before `step` (its first score if none is)."""
        i = max(1, bisect.bisect_right(self.steps, step))
        window = self.scores[max(0, i - SMOOTH):i]
        return math.inf if not all(math.isfinite(v) for v in window) else sum(window) / len(window)

    def latest(self) -> float:
        return self.value_at(self.last_step)

    def optimistic(self) -> float:
        """Its latest value less GAIN times what it gained since half its last step: the
        best it may plausibly end at. Not finite: no trend to speak of."""
        now = self.latest()
        then = self.value_at(self.last_step // 2)
        if not (math.isfinite(now) and math.isfinite(then)):
            return now
        return now - GAIN * max(0.0, then - now)


@dataclass
class Curves:
    """Every run's curve of one metric, kept up to date as reports come in (in any
    batches and order; a report seen twice counts once)."""

    minimize: bool = True
    runs: dict[int, Curve] = field(default_factory=dict)

    def add(self, run: int, reports: Iterable[tuple[int, float, float]]) -> None:
        """Reports (step, time, value) of a run."""
        curve = self.runs.setdefault(run, Curve())
        for step, time, value in reports:
            curve.add(step, time, score(value, self.minimize))

    def noise(self) -> float:
        """The reports' noise standard deviation (inf while too few to tell)."""
        diffs = []
        for curve in self.runs.values():
            s = curve.scores
            diffs += [abs(s[i - 1] - 2 * s[i] + s[i + 1]) for i in range(1, len(s) - 1)]
        diffs = [d for d in diffs if math.isfinite(d)]
        if len(diffs) < MIN_NOISE:
            return math.inf
        return 1.4826 * statistics.median(diffs) / math.sqrt(6)


def score(value: float, minimize: bool) -> float:
    """Lower is better; a non-finite value is the worst."""
    if not math.isfinite(value):
        return math.inf
    return value if minimize else -value


def out_of_reach(curve: Curve, threshold: float, noise: float, z: float = Z) -> bool:
    """The trend guard: even its optimistic final value is worse than `threshold` by more
    than `z` noise sd (of a difference of two smoothed values)."""
    margin = z * noise * math.sqrt(2 / SMOOTH)
    return curve.optimistic() > threshold + margin


@dataclass(frozen=True)
class Trend:
    min_step: int
    minimize: bool = True

    @classmethod
    def of(cls, es: EarlyStop | None) -> Trend | None:
        """The study's trend rule, if its early stopping is one."""
        if es is None or es.rule != "trend":
            return None
        return cls(es.min_step, es.minimize)


def verdict(rule: Trend, curves: Curves, run: int, noise: float | None = None) -> str | None:
    """Why `run` is to stop now, or None. `noise`: curves.noise(), when the caller judges
    many runs at once."""
    mine = curves.runs.get(run)
    if mine is None or not mine.steps or mine.last_step < rule.min_step:
        return None
    step = mine.last_step
    me = (mine.value_at(step), run)
    peers = {other: c for other, c in curves.runs.items() if other != run and c.steps and c.last_step >= step}
    there = len(peers) + 1
    if there < MIN_RUNS:
        return None
    keep = max(1, int(there * KEEP))
    ahead = sorted((c.value_at(step), other) for other, c in peers.items())
    if me <= ahead[keep - 1]:
        return None
    threshold = sorted(c.latest() for c in peers.values())[keep - 1]
    noise = curves.noise() if noise is None else noise
    if not out_of_reach(mine, threshold, noise):
        return None
    rank = 1 + sum(a < me for a in ahead)
    return (f"step {step}, ranked {rank} of {there} runs there, below the top 1/{round(1 / KEEP)}, "
            f"and its trend cannot reach them")


def to_stop(rule: Trend, curves: Curves, running: Iterable[int]) -> dict[int, str]:
    """Of the running runs, those to stop, each with its reason."""
    noise = curves.noise()
    out = {}
    for run in running:
        why = verdict(rule, curves, run, noise)
        if why is not None:
            out[run] = why
    return out


@dataclass
class Ledger:
    """The study's curves under the trend rule, kept up to date as reports come in."""

    rule: Trend
    curves: Curves = field(init=False)

    def __post_init__(self) -> None:
        self.curves = Curves(self.rule.minimize)

    def add(self, run: int, reports: Iterable[tuple[int, float, float]]) -> None:
        self.curves.add(run, reports)

    def to_stop(self, running: Iterable[int]) -> dict[int, str]:
        return to_stop(self.rule, self.curves, running)
