"""ASHA (hypd/asha.py): the rule as a pure function over reports, by example and by property."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.asha import Arrival, Asha, Ledger, arrivals, to_stop, verdict


def ledger_of(rule: Asha, curves: dict[int, list[tuple[int, float, float]]]) -> Ledger:
    ledger = Ledger(rule)
    for run, reports in curves.items():
        ledger.add(run, reports)
    return ledger


# ---------------------------------------------------------------- examples


def test_rungs_are_min_step_times_powers_of_eta_below_max_step() -> None:
    assert Asha(1, 81, 3).rungs() == (1, 3, 9, 27)
    assert Asha(2, 30, 2).rungs() == (2, 4, 8, 16)
    assert Asha(5, 6, 3).rungs() == (5,)


def test_a_run_arrives_at_a_rung_with_its_first_report_at_or_past_it() -> None:
    rule = Asha(2, 100, 3)  # rungs 2, 6, 18, 54
    got = arrivals(rule, [(1, 1.0, 9.0), (3, 2.0, 8.0), (4, 3.0, 7.0), (20, 4.0, 6.0)])
    # step 3 reaches rung 2; step 20 jumps over 6 and 18 at once
    assert got == {0: Arrival(2.0, 8.0), 1: Arrival(4.0, 6.0), 2: Arrival(4.0, 6.0)}


def test_the_first_at_a_rung_goes_on_and_later_ones_need_the_top_third() -> None:
    rule = Asha(1, 27, 3, guard=False)  # rungs 1, 3, 9
    # Runs reach step 1 one after another, with these losses.
    losses = {1: 0.5, 2: 0.6, 3: 0.4, 4: 0.45, 5: 0.7, 6: 0.3}
    ledger = ledger_of(rule, {run: [(1, float(run), loss)] for run, loss in losses.items()})
    stops = ledger.to_stop(losses)
    # run 1: alone, goes on. run 2: 2nd of 2 (keep 1). run 3: best of 3 (keep 1).
    # run 4: 2nd of 4 (keep 1). run 5: 5th of 5 (keep 1). run 6: best of 6 (keep 2).
    assert sorted(stops) == [2, 4, 5]
    assert stops[2] == "rung 1 (step 1), below the top 1/3: ranked 2 of 2 runs there"


def test_a_curve_that_starts_slow_is_judged_at_each_rung_against_its_peers() -> None:
    rule = Asha(1, 27, 3, guard=False)
    curves = {
        1: [(1, 1.0, 1.0), (3, 4.0, 0.9), (9, 10.0, 0.8)],
        2: [(1, 2.0, 2.0)],   # worse at rung 1 than run 1: stopped there
        3: [(1, 3.0, 0.5), (3, 5.0, 0.95)],  # best at rung 1, 2nd of 2 at rung 3: stopped there
    }
    stops = to_stop(rule, ledger_of(rule, curves).at_rungs, [1, 2, 3])
    assert set(stops) == {2, 3}
    assert stops[3].startswith("rung 2 (step 3)")


def test_maximize_and_nan() -> None:
    rule = Asha(1, 9, 3, minimize=False, guard=False)
    ledger = ledger_of(rule, {1: [(1, 1.0, 0.9)], 2: [(1, 2.0, 0.95)], 3: [(1, 3.0, math.nan)]})
    assert sorted(ledger.to_stop([1, 2, 3])) == [3]  # 2 beats 1 (higher is better); NaN is last


def test_a_ledger_takes_reports_twice_and_out_of_order() -> None:
    rule = Asha(1, 27, 3)
    reports = [(1, 1.0, 0.5), (3, 2.0, 0.4), (9, 3.0, 0.3)]
    once = ledger_of(rule, {7: reports})
    twice = Ledger(rule)
    twice.add(7, reports[2:])
    twice.add(7, reports)
    twice.add(7, reports[:1])
    assert once.at_rungs == twice.at_rungs


def test_of_reads_only_an_asha_early_stop() -> None:
    from hypd.study import EarlyStop

    assert Asha.of(None) is None
    assert Asha.of(EarlyStop("loss", 2)) is None
    assert Asha.of(EarlyStop("acc", 1, rule="asha", max_step=9, eta=3, minimize=False)) == Asha(1, 9, 3, False)
    assert Asha.of(EarlyStop("acc", 1, rule="asha", max_step=9, guard=False)) == Asha(1, 9, 3, guard=False)


# ---------------------------------------------------------------- properties

rules = st.builds(Asha, min_step=st.integers(1, 5), max_step=st.integers(6, 200), eta=st.integers(2, 5),
                  minimize=st.booleans(), guard=st.booleans())
textbook = st.builds(Asha, min_step=st.integers(1, 5), max_step=st.integers(6, 200), eta=st.integers(2, 5),
                     minimize=st.booleans(), guard=st.just(False))
curve = st.lists(st.tuples(st.integers(0, 250), st.floats(0, 1e3), st.floats(allow_nan=True)),
                 max_size=12).map(lambda c: sorted(c))
studies = st.dictionaries(st.integers(0, 40), curve, max_size=25)


@settings(max_examples=300, deadline=None)
@given(rules, studies)
def test_a_run_is_never_stopped_before_min_step(rule: Asha, curves: dict[int, list[tuple[int, float, float]]]) -> None:
    stops = ledger_of(rule, curves).to_stop(curves)
    for run in stops:
        assert max(step for step, _, _ in curves[run]) >= rule.min_step


@settings(max_examples=300, deadline=None)
@given(textbook, st.lists(st.floats(-1e6, 1e6) | st.just(math.nan), min_size=1, max_size=40), st.integers(0, 2))
def test_a_full_rung_lets_at_most_one_in_eta_go_on(rule: Asha, values: list[float], rung: int) -> None:
    """Runs that reach a rung together are judged together: of k >= eta, at most k // eta go
    on (and always one, if fewer than eta)."""
    rungs = rule.rungs()
    step = rungs[min(rung, len(rungs) - 1)]
    ledger = Ledger(rule)
    for run, v in enumerate(values):
        ledger.add(run, [(step, 1.0, v)])  # at every rung up to `step` at once
    going_on = len(values) - len(ledger.to_stop(range(len(values))))
    k = len(values)
    assert going_on == max(1, k // rule.eta)
    if k >= rule.eta:
        assert going_on <= k / rule.eta


@settings(max_examples=300, deadline=None)
@given(textbook, studies)
def test_each_run_that_goes_on_was_in_the_top_of_its_rung_when_it_got_there(
        rule: Asha, curves: dict[int, list[tuple[int, float, float]]]) -> None:
    ledger = ledger_of(rule, curves)
    sign = 1 if rule.minimize else -1

    def score(v: float) -> float:
        return sign * v if math.isfinite(v) else math.inf

    for run in set(curves) - set(ledger.to_stop(curves)):
        for i, me in ledger.at_rungs[run].items():
            peers = {o: a[i] for o, a in ledger.at_rungs.items() if i in a and a[i].time <= me.time}
            ahead = [o for o, a in peers.items() if (score(a.value), o) < (score(me.value), run)]
            assert len(ahead) < max(1, len(peers) // rule.eta)


@settings(max_examples=200, deadline=None)
@given(rules, studies)
def test_the_best_run_at_a_rung_is_never_stopped_there(rule: Asha, curves: dict[int, list[tuple[int, float, float]]]) -> None:
    ledger = ledger_of(rule, curves)
    for i in range(len(rule.rungs())):
        there = {run: a[i] for run, a in ledger.at_rungs.items() if i in a}
        finite = {run: a for run, a in there.items() if math.isfinite(a.value)}
        if not finite:
            continue
        sign = 1 if rule.minimize else -1
        best = min(finite, key=lambda r: (sign * finite[r].value, r))
        why = verdict(rule, ledger.at_rungs, best)
        assert why is None or not why.startswith(f"rung {i + 1} ")


# ---------------------------------------------------------------- the trend guard


def test_the_guard_spares_a_slow_starter_still_falling_and_stops_a_flat_one() -> None:
    # Rung 1 at step 3. Runs 1-3 got there first and fast, flat near 0.30-0.32 (noise
    # about 0.003). Run 4 is behind them at step 3 but still falling fast (0.9 -> 0.45 since
    # step 1); run 5 is as far behind and flat.
    flat = {1: 0.30, 2: 0.31, 3: 0.32}
    curves = {run: [(s, float(s), v + 0.003 * (-1) ** s) for s in range(6)] for run, v in flat.items()}
    curves[4] = [(0, 10.0, 1.2), (1, 11.0, 0.9), (2, 12.0, 0.6), (3, 13.0, 0.45)]
    curves[5] = [(0, 10.0, 0.47), (1, 11.0, 0.46), (2, 12.0, 0.45), (3, 13.0, 0.45)]
    guarded = ledger_of(Asha(3, 27, 3), curves).to_stop([4, 5])
    assert sorted(guarded) == [5]
    assert guarded[5] == "rung 1 (step 3), below the top 1/3: ranked 5 of 5 runs there"  # 4 ties, and goes first
    assert sorted(ledger_of(Asha(3, 27, 3, guard=False), curves).to_stop([4, 5])) == [4, 5]
    # Once run 4 flattens out behind, it is stopped too (judged again at each report).
    curves[4] += [(s, 10.0 + s, 0.44) for s in range(4, 9)]
    assert sorted(ledger_of(Asha(3, 27, 3), curves).to_stop([4, 5])) == [4, 5]


@settings(max_examples=300, deadline=None)
@given(rules, studies)
def test_the_guard_only_spares(rule: Asha, curves: dict[int, list[tuple[int, float, float]]]) -> None:
    """What ASHA stops with the guard, it stops without it too, for the same reason."""
    guarded = ledger_of(rule, curves).to_stop(curves)
    plain = ledger_of(Asha(rule.min_step, rule.max_step, rule.eta, rule.minimize, guard=False), curves).to_stop(curves)
    assert set(guarded) <= set(plain)
