"""The trend rule (hypd/trend.py), hypd's default early stopping: pure, by example and by property."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.study import EarlyStop
from hypd.trend import KEEP, Curve, Curves, Ledger, Trend, to_stop, verdict

Reports = list[tuple[int, float, float]]


def ledger_of(rule: Trend, curves: dict[int, Reports]) -> Ledger:
    ledger = Ledger(rule)
    for run, reports in curves.items():
        ledger.add(run, reports)
    return ledger


def flat(level: float, steps: int, wobble: float = 0.003) -> Reports:
    return [(s, float(s), level + wobble * (-1) ** s) for s in range(steps)]


# ---------------------------------------------------------------- examples


def test_a_curve_smooths_over_its_last_two_reports_and_keeps_the_first_at_a_step() -> None:
    c = Curve()
    for step, t, v in [(3, 3.0, 0.4), (0, 0.0, 1.0), (1, 1.0, 0.8), (3, 4.0, 0.3), (2, 2.0, 0.6), (1, 0.5, 0.85)]:
        c.add(step, t, v)  # at steps 3 and 1, the earlier report counts, whichever came first
    assert list(c.steps) == [0, 1, 2, 3] and list(c.scores) == [1.0, 0.85, 0.6, 0.4]
    assert c.value_at(3) == 0.5 and c.value_at(1) == 0.925 and c.value_at(0) == 1.0
    assert c.value_at(-5) == 1.0  # before its first report: its first
    # gained 0.425 since step 1 (0.925 -> 0.5): at best 0.5 - 1.5 * 0.425
    assert math.isclose(c.optimistic(), 0.5 - 1.5 * 0.425)


def test_the_noise_is_read_from_second_differences() -> None:
    rng = random.Random(1)
    curves = Curves()
    for run in range(8):
        curves.add(run, [(s, float(s), 0.3 + 0.6 * math.exp(-s / 3) + rng.gauss(0, 0.02)) for s in range(30)])
    assert 0.015 < curves.noise() < 0.025
    assert Curves().noise() == math.inf


def test_a_flat_run_behind_is_stopped_and_a_slow_starter_still_falling_goes_on() -> None:
    rule = Trend(min_step=3)
    curves = {1: flat(0.30, 10), 2: flat(0.31, 10), 3: flat(0.32, 10), 6: flat(0.33, 10)}
    curves[4] = [(0, 10.0, 1.2), (1, 11.0, 0.9), (2, 12.0, 0.6), (3, 13.0, 0.45)]  # behind, falling fast
    curves[5] = [(0, 10.0, 0.47), (1, 11.0, 0.46), (2, 12.0, 0.45), (3, 13.0, 0.45)]  # as far behind, flat
    stops = ledger_of(rule, curves).to_stop([4, 5])
    assert list(stops) == [5]
    assert stops[5] == ("step 3, ranked 5 of 6 runs there, below the top 1/3, "
                        "and its trend cannot reach them")
    curves[4] += [(s, 10.0 + s, 0.44) for s in range(4, 9)]  # it flattens out behind: stopped
    assert list(ledger_of(rule, curves).to_stop([4])) == [4]


def test_nothing_is_stopped_before_min_step_among_too_few_runs_or_before_the_noise_is_known() -> None:
    curves = {1: flat(0.30, 10), 2: flat(0.31, 10), 5: flat(0.9, 10)}
    assert list(ledger_of(Trend(3), curves).to_stop([5])) == [5]
    assert ledger_of(Trend(10), curves).to_stop([5]) == {}  # its last step is 9
    assert ledger_of(Trend(3), {1: curves[1], 5: curves[5]}).to_stop([5]) == {}  # 2 runs at step 9
    few = {run: c[:3] for run, c in curves.items()}  # 3 second differences: noise unknown
    assert ledger_of(Trend(1), few).to_stop([5]) == {}


def test_a_run_is_judged_against_the_runs_that_got_as_far() -> None:
    # Run 5 is at step 3, behind runs 1-3 there; run 9 is at step 3 too but far ahead, and
    # run 7 has only got to step 2: no peer of run 5.
    curves = {1: flat(0.30, 10), 2: flat(0.31, 10), 3: flat(0.32, 10), 5: flat(0.9, 4),
              9: flat(0.1, 4), 7: flat(5.0, 3)}
    assert ledger_of(Trend(1), curves).to_stop([5, 7, 9]) == {
        5: "step 3, ranked 5 of 5 runs there, below the top 1/3, and its trend cannot reach them",
        7: "step 2, ranked 6 of 6 runs there, below the top 1/3, and its trend cannot reach them"}


def test_maximize_and_nan() -> None:
    rule = Trend(1, minimize=False)
    curves = {1: flat(0.9, 10), 2: flat(0.8, 10), 3: flat(0.85, 10), 4: flat(0.5, 6),
              5: [(s, float(s), math.nan) for s in range(6)]}
    # Higher is better; NaN is last. At step 9, three runs: the top one goes on.
    assert sorted(ledger_of(rule, curves).to_stop([1, 2, 3, 4, 5])) == [2, 3, 4, 5]
    assert sorted(ledger_of(rule, curves).to_stop([4, 5])) == [4, 5]
    six = {1: curves[1], 2: curves[2], 3: curves[3], 6: flat(0.7, 10), 7: flat(0.6, 10), 8: flat(0.5, 10)}
    assert sorted(ledger_of(rule, six).to_stop(six)) == [2, 6, 7, 8]  # six there: the top two go on


def test_of_reads_only_a_trend_early_stop() -> None:
    assert Trend.of(None) is None
    assert Trend.of(EarlyStop("loss", 2)) == Trend(2)
    assert Trend.of(EarlyStop("acc", 1, minimize=False)) == Trend(1, False)
    assert Trend.of(EarlyStop("loss", 2, rule="asha", max_step=9)) is None
    assert Trend.of(EarlyStop("loss", 2, rule="percentile")) is None


# ---------------------------------------------------------------- properties

rules = st.builds(Trend, min_step=st.integers(0, 6), minimize=st.booleans())
value = st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf])
curve = st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1e3), value), max_size=14).map(sorted)
studies = st.dictionaries(st.integers(0, 30), curve, max_size=14)


def stops_of(rule: Trend, curves: dict[int, Reports]) -> dict[int, str]:
    return ledger_of(rule, curves).to_stop(curves)


@settings(max_examples=150, deadline=None)
@given(rules, studies)
def test_a_run_is_never_stopped_before_min_step(rule: Trend, curves: dict[int, Reports]) -> None:
    for run in stops_of(rule, curves):
        assert max(step for step, _, _ in curves[run]) >= rule.min_step


@settings(max_examples=150, deadline=None)
@given(rules, studies)
def test_a_stopped_run_is_below_the_top_third_of_the_runs_at_its_step(rule: Trend, curves: dict[int, Reports]) -> None:
    ledger = ledger_of(rule, curves)
    runs = ledger.curves.runs
    for run in ledger.to_stop(curves):
        step = runs[run].last_step
        there = {o: c.value_at(step) for o, c in runs.items() if c.steps and c.last_step >= step}
        ahead = [o for o, v in there.items() if (v, o) < (there[run], run)]
        assert len(there) >= 3
        assert len(ahead) >= max(1, int(len(there) * KEEP))


@settings(max_examples=150, deadline=None)
@given(rules, st.lists(st.lists(value, min_size=1, max_size=10), min_size=1, max_size=30))
def test_of_the_runs_at_a_step_the_top_third_goes_on(rule: Trend, values: list[list[float]]) -> None:
    """Runs that all got to the same step: at least max(1, n // 3) of them go on."""
    last = max(len(v) for v in values) - 1
    curves = {run: [(last - len(v) + 1 + i, 0.0, x) for i, x in enumerate(v)] for run, v in enumerate(values)}
    going_on = len(values) - len(stops_of(rule, curves))
    assert going_on >= max(1, int(len(values) * KEEP))


@settings(max_examples=100, deadline=None)
@given(rules, studies, st.randoms(use_true_random=False))
def test_the_verdicts_depend_on_the_reports_not_on_how_they_came(
        rule: Trend, curves: dict[int, Reports], rnd: random.Random) -> None:
    """A restarted daemon reads the stored reports in one batch; a running one got them a
    few at a time, some twice: the same verdicts."""
    once = stops_of(rule, curves)
    ledger = Ledger(rule)
    pieces = [(run, r) for run, reports in curves.items() for r in reports]
    rnd.shuffle(pieces)
    for run, report in pieces + pieces[: len(pieces) // 2]:
        ledger.add(run, [report])
    for run in curves:  # a run with no report yet is known all the same
        ledger.add(run, [])
    assert ledger.to_stop(curves) == once


@settings(max_examples=100, deadline=None)
@given(rules, studies)
def test_a_run_that_is_still_falling_steeply_enough_goes_on(rule: Trend, curves: dict[int, Reports]) -> None:
    """The trend guard: whatever its rank, a run whose optimistic value reaches the best
    latest value of its peers is never stopped."""
    ledger = ledger_of(rule, curves)
    runs = ledger.curves.runs
    for run in ledger.to_stop(curves):
        step = runs[run].last_step
        best_latest = min(c.latest() for o, c in runs.items() if o != run and c.steps and c.last_step >= step)
        assert runs[run].optimistic() > best_latest


def test_to_stop_is_verdict_for_each_running_run() -> None:
    curves = {1: flat(0.30, 10), 2: flat(0.31, 10), 3: flat(0.9, 10), 4: flat(0.95, 10)}
    ledger = ledger_of(Trend(1), curves)
    assert to_stop(Trend(1), ledger.curves, [1, 2, 3, 4]) == {
        run: why for run in (1, 2, 3, 4) if (why := verdict(Trend(1), ledger.curves, run)) is not None}
    assert sorted(to_stop(Trend(1), ledger.curves, [3, 4])) == [3, 4]
