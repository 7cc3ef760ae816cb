"""Asynchronous successive halving (ASHA): which running runs to stop, from their reports.

Pure: no I/O, no clock. The rule (`early_stop = { rule = "asha", min_step, max_step, eta }`):

- Rungs sit at steps min_step, min_step*eta, min_step*eta^2, ... below max_step (a run
  that gets to max_step has finished its budget; nothing judges it there).
- A run reaches a rung with its first report at or past the rung's step; that report's
  value is the run's value at the rung, and its time the moment it got there.
- It is judged once per rung, against the runs that had reached that rung by then
  (itself included, k of them): it goes on only if it ranks in the top max(1, k // eta).
  Asynchronous: nobody waits for a rung to fill, so the first run at a rung always goes
  on, and when k runs reach a rung together at most k // eta of them do (k >= eta).
- Ties in value go to the lower run id; a non-finite value ranks last.
- Trend guard (`guard = true`, the default): a run below the top at a rung still goes on
  while its own curve could take it to the runs kept there (hypd/trend.py's guard: its
  latest value less 1.5 times its gain since half its step, against the 1/eta-th best
  latest value of the runs ahead of it, with a margin of GUARD_Z noise sd); it is judged
  again at each report until it is within reach or out of it. Curves cross (slow
  starters finish best): without the guard ASHA at min_step 3 stopped the best of 40
  trials in 11 of 30 seeds of bench/learning_curves.py. `guard = false` is the textbook
  rule.

Every verdict depends only on the reports, so it is recomputed from them at any time
(after a restart too) and comes out the same. `Ledger` keeps, per run, only the report
that reached each rung: what `to_stop` needs, updated as reports arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hypd.study import EarlyStop
from hypd.trend import Curves, out_of_reach, score

# The guard's margin in noise sd. Narrower than the trend rule's (2): ASHA ranks a run
# once per rung, on the rung's report, so a run near the top is not re-ranked every step
# and caught below by noise alone now and then; the margin only has to keep noise in
# its own trend from stopping it. bench/learning_curves.py, seeds 0-29: no best trial
# stopped with 0.5 or 2, and 1.86x cheaper than none with 0.5, 1.74x with 2.
GUARD_Z = 0.5


@dataclass(frozen=True)
class Asha:
    min_step: int
    max_step: int
    eta: int = 3
    minimize: bool = True
    guard: bool = True

    @classmethod
    def of(cls, es: EarlyStop | None) -> Asha | None:
        """The study's ASHA rule, if its early stopping is one."""
        if es is None or es.rule != "asha" or es.max_step is None:
            return None
        return cls(es.min_step, es.max_step, es.eta, es.minimize, es.guard)

    def rungs(self) -> tuple[int, ...]:
        """The steps at which runs are judged."""
        out, step = [], self.min_step
        while step < self.max_step:
            out.append(step)
            step *= self.eta
        return tuple(out)


@dataclass(frozen=True)
class Arrival:
    """A run's first report at or past a rung: when, and its value."""

    time: float
    value: float


def arrivals(rule: Asha, reports: Iterable[tuple[int, float, float]]) -> dict[int, Arrival]:
    """rung index -> the run's arrival there, from its reports (step, time, value) in the
    order they were printed."""
    rungs = rule.rungs()
    out: dict[int, Arrival] = {}
    for step, time, value in reports:
        for i, rung in enumerate(rungs):
            if step >= rung and i not in out:
                out[i] = Arrival(time, value)
    return out


def verdict(rule: Asha, at_rungs: Mapping[int, Mapping[int, Arrival]], run: int,
            curves: Curves | None = None, noise: float | None = None) -> str | None:
    """Why `run` is to stop (its first rung where it was not in the top, and, with the
    guard, its trend cannot reach the runs kept there), or None.

    at_rungs: run id -> rung index -> arrival, for every run of the study that reported
    (running, ended, stopped alike). curves: every run's curve (the guard reads them;
    without them there is no guard). noise: curves.noise(), when the caller judges many
    runs at once."""
    mine = at_rungs.get(run, {})
    for i in sorted(mine):
        me = mine[i]
        my_key = (score(me.value, rule.minimize), run)
        peers = 0
        ahead = []
        for other, theirs in at_rungs.items():
            there = theirs.get(i)
            if there is None or there.time > me.time:
                continue
            peers += 1
            if other != run and (score(there.value, rule.minimize), other) < my_key:
                ahead.append(other)
        keep = max(1, peers // rule.eta)
        if len(ahead) + 1 <= keep:
            continue
        if rule.guard and curves is not None and run in curves.runs:
            kept = sorted(curves.runs[o].latest() for o in ahead if o in curves.runs)
            noise = curves.noise() if noise is None else noise
            if len(kept) >= keep and not out_of_reach(curves.runs[run], kept[keep - 1], noise, GUARD_Z):
                continue  # still falling fast enough: judged again at its next report
        return (f"rung {i + 1} (step {rule.rungs()[i]}), below the top 1/{rule.eta}: "
                f"ranked {len(ahead) + 1} of {peers} runs there")
    return None


def to_stop(rule: Asha, at_rungs: Mapping[int, Mapping[int, Arrival]],
            running: Iterable[int], curves: Curves | None = None) -> dict[int, str]:
    """Of the running runs, those to stop, each with its reason."""
    noise = curves.noise() if curves is not None and rule.guard else None
    out = {}
    for run in running:
        why = verdict(rule, at_rungs, run, curves, noise)
        if why is not None:
            out[run] = why
    return out


@dataclass
class Ledger:
    """Each run's arrivals at the rungs, and its curve (for the guard), kept up to date as
    its reports come in."""

    rule: Asha
    at_rungs: dict[int, dict[int, Arrival]] = field(default_factory=dict)
    curves: Curves = field(init=False)

    def __post_init__(self) -> None:
        self.curves = Curves(self.rule.minimize)

    def add(self, run: int, reports: Iterable[tuple[int, float, float]]) -> None:
        """Reports of a run, in any batches and order: the earliest to reach a rung counts."""
        reports = list(reports)
        have = self.at_rungs.setdefault(run, {})
        for i, arrival in arrivals(self.rule, reports).items():
            if i not in have or arrival.time < have[i].time:
                have[i] = arrival
        if self.rule.guard:
            self.curves.add(run, reports)

    def to_stop(self, running: Iterable[int]) -> dict[int, str]:
        return to_stop(self.rule, self.at_rungs, running, self.curves)
