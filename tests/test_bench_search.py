"""The search benchmarks' simulations keep to the protocol they claim (bench/async_search.py,
bench/learning_curves.py): cheap runs with hypd's random and Sobol searches."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import async_search  # noqa: E402
import learning_curves  # noqa: E402


def test_async_run_completes_the_budget_with_at_most_four_in_flight(monkeypatch) -> None:
    in_flight, most = 0, 0
    real = async_search.Hypd

    class Counting(real):  # type: ignore[misc, valid-type]
        def ask(self):
            nonlocal in_flight, most
            got = super().ask()
            in_flight += got is not None
            most = max(most, in_flight)
            return got

        def tell(self, key, params, values):
            nonlocal in_flight
            in_flight -= 1
            super().tell(key, params, values)

    monkeypatch.setitem(async_search.SYSTEMS, "random", Counting)
    for name in ("branin", "constrained", "mixed", "noisy"):
        trace = async_search.run(async_search.PROBLEMS[name], "random", 20, seed=1)
        assert len(trace.regret) == 20
        assert most == async_search.WORKERS
        finite = [r for r in trace.regret if math.isfinite(r)]
        assert finite
        if name != "noisy":  # with noise the best observed may be a worse true value
            assert all(a >= b >= 0 for a, b in zip(finite, finite[1:]))  # the best so far only improves


def test_async_runs_are_the_same_for_a_seed() -> None:
    a = async_search.run(async_search.PROBLEMS["mixed"], "random", 12, seed=3)
    b = async_search.run(async_search.PROBLEMS["mixed"], "random", 12, seed=3)
    assert a.regret == b.regret


def test_learning_curves_cross_and_hypds_rules_save_gpu_time() -> None:
    none = learning_curves.simulate("none", seed=0, trials=16, min_step=3)
    assert none.stopped == 0 and not none.best_stopped
    for rule in ("default", "asha"):  # hypd's trend rule, ASHA with its guard
        stopped = learning_curves.simulate(rule, seed=0, trials=16, min_step=3)
        assert stopped.stopped > 0 and stopped.total < none.total, rule
        assert stopped.trace[-1][1] == 0.0, rule  # the best configuration completed
        assert [gap for _, gap in stopped.trace] == sorted((gap for _, gap in stopped.trace), reverse=True)
    pairs_crossed, best_behind = learning_curves.crossing(16, seed=0, step=3)
    assert pairs_crossed > 0.05  # the problem is not one where the first epochs tell all


def test_reported_gap_is_relative_to_the_best_evaluated() -> None:
    trace = async_search.Trace([1.0], [0.0], 0.0, reported_true=-2.7, best_true_evaluated=-3.0)
    assert math.isclose(trace.reported_gap(), 0.1)
    assert async_search.Trace([1.0], [0.0], 0.0, -3.0, -3.0).reported_gap() == 0.0
    # random search reports no best of its own (no model): no gap, not a made-up one
    random_run = async_search.run(async_search.PROBLEMS["noisy"], "random", 8, seed=2)
    assert random_run.reported_gap() is None and math.isfinite(random_run.best_true_evaluated)
