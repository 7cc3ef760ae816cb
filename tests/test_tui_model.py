"""hypd.tui.model's computations for the dashboard, as plain functions over plain dicts."""

from __future__ import annotations

from typing import Any

from hypd.display import runtime
from hypd.tui.model import (
    TrialPoint,
    best_so_far,
    describe_trials,
    help_rows,
    int_ticks,
    param_series,
    progress_cells,
    step_line,
    study_done,
    study_live,
    study_total,
    trial_points,
)


def study(total: int, **outcomes: int) -> dict[str, Any]:
    """A summary as op `studies` gives it: trials by outcome (here each took one attempt)."""
    done = outcomes.get("completed", 0) + outcomes.get("stopped", 0)
    return {"name": "s", "max_trials": total, "total": total, "done": done, "outcomes": outcomes, "counts": outcomes}


# ------------------------------------------------------------------ progress


def test_a_finished_study_with_none_done_has_an_empty_bar() -> None:
    assert progress_cells({**study(6, failed=6), "finished": True}, 10) == (0, 0)
    # Retried attempts that failed as well fill nothing either.
    assert progress_cells({**study(6, failed=6), "counts": {"failed": 12}, "finished": True}, 10) == (0, 0)


def test_the_bar_is_full_only_when_every_trial_is_done() -> None:
    assert progress_cells(study(6, completed=6), 10) == (10, 0)
    assert progress_cells(study(6, completed=4, stopped=2), 10) == (10, 0)
    assert progress_cells(study(1000, completed=999), 10) == (9, 0)  # not full until it is
    assert progress_cells(study(1000, completed=1), 10) == (1, 0)  # one done shows
    assert progress_cells(study(6, completed=3, running=2, failed=1), 10) == (5, 3)
    assert progress_cells(study(0), 10) == (0, 0)


def test_done_and_total_are_trials_as_the_daemon_counts_them() -> None:
    # A trial done after a retry counts once; attempts are in `counts`, apart.
    summary = {**study(8, completed=2, failed=1), "counts": {"completed": 2, "failed": 3}}
    assert (study_done(summary), study_total(summary)) == (2, 8)
    assert progress_cells(summary, 8) == (2, 0)


def test_what_a_kill_of_the_study_ends() -> None:
    assert study_live(study(6, running=2, pending=3, completed=1)) == {"running": 2, "pending": 3}
    assert study_live(study(6, completed=6)) == {}


# ------------------------------------------------------------------ runtime


def test_a_lost_runs_time_stops_at_its_end() -> None:
    lost = {"state": "lost", "started": 100.0, "ended": 160.0}
    assert runtime(lost, now=10_000.0) == 60.0
    assert runtime({"state": "running", "started": 100.0, "ended": None}, now=160.0) == 60.0


# ------------------------------------------------------------------ a study's trials


def run(trial: int, state: str, objective: float | None, attempt: int = 1, **params: Any) -> dict[str, Any]:
    """A run of trial `trial` as shown (the daemon stores trials from 0, shows them from 1)."""
    return {"name": f"s:{trial}{'abc'[attempt - 1]}", "trial": trial - 1, "attempt": attempt, "state": state,
            "objective": objective, "params": params or {"x": trial}}


def test_one_point_per_trial_by_how_it_ended() -> None:
    runs = [run(1, "completed", 3.0), run(2, "failed", 9.0), run(2, "completed", 2.0, attempt=2),
            run(3, "stopped", 1.5), run(4, "failed", None), run(5, "failed", 7.0),
            run(6, "failed", 1.0), run(6, "pending", None, attempt=2),  # being retried: not yet
            run(7, "killed", 0.5), run(8, "running", 0.1)]
    points = trial_points(runs, minimize=True)
    assert [(p.trial, p.state, p.value) for p in points] == [
        (1, "completed", 3.0), (2, "completed", 2.0), (3, "stopped", 1.5), (4, "failed", None), (5, "failed", 7.0)]
    assert points[1].run == "s:2b"
    assert describe_trials(points) == "5 trials · 1 stopped · 2 failed · 1 without a result"


def test_best_so_far_is_a_step_line_over_results() -> None:
    points = [TrialPoint(1, "completed", 3.0, {}, ""), TrialPoint(2, "failed", 0.1, {}, ""),
              TrialPoint(3, "completed", 4.0, {}, ""), TrialPoint(4, "stopped", 1.0, {}, ""),
              TrialPoint(6, "completed", 2.0, {}, "")]
    assert best_so_far(points, minimize=True) == ([1, 3, 4, 6], [3.0, 3.0, 1.0, 1.0])
    assert best_so_far(points, minimize=False) == ([1, 3, 4, 6], [3.0, 4.0, 4.0, 4.0])
    # Held flat until the next trial, then a jump: no slope between two results.
    assert step_line([1, 3, 4], [3.0, 3.0, 1.0]) == ([1, 3, 3, 4, 4], [3.0, 3.0, 3.0, 3.0, 1.0])
    assert step_line([1, 3], [3.0, 1.0], until=6) == ([1, 3, 3, 6], [3.0, 3.0, 1.0, 1.0])
    assert step_line([], [], until=6) == ([], [])


def test_a_scatter_per_parameter_that_varies() -> None:
    runs = [run(1, "completed", 0.5, lr=0.001, opt="adam", seed=0),
            run(2, "completed", 0.2, lr=0.1, opt="sgd", seed=0),
            run(3, "failed", 0.9, lr=0.01, opt="adam", seed=0),
            run(4, "failed", None, lr=0.05, opt="sgd", seed=0),
            run(5, "stopped", 0.7, lr=0.02, opt="sgd", seed=0)]
    series = {s.name: s for s in param_series(trial_points(runs, minimize=True))}
    assert set(series) == {"lr", "opt"}  # seed never varies
    lr = series["lr"]
    assert lr.by_state == {"completed": ([0.001, 0.1], [0.5, 0.2]), "failed": ([0.01], [0.9]),
                           "stopped": ([0.02], [0.7])}
    assert lr.log and not lr.labels and lr.count == 4  # the failed trial with no result is not drawn
    opt = series["opt"]
    assert opt.labels == ["adam", "sgd"]  # a choice: its values at 1, 2, ...
    assert opt.by_state["completed"] == ([1, 2], [0.5, 0.2]) and not opt.log


def test_trial_ticks_start_at_one() -> None:
    assert int_ticks([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 7, first=1) == [1, 2, 4, 6, 8, 10]
    assert int_ticks([1, 5, 9], 3, first=1) == [1, 5]
    assert int_ticks([3, 40], 5, first=1) == [1, 10, 20, 30, 40]
    assert int_ticks([1], 5, first=1) == [1]
    assert int_ticks([0, 1, 2], 5) == [0, 1, 2]  # steps may start at 0
    assert int_ticks([0.5, 1], 5) == []


# ------------------------------------------------------------------ help


def test_help_rows_group_keys_of_one_action_and_say_which_the_footer_shows() -> None:
    bindings = [("Dashboard", "k", "kill", "Kill", "", True), ("Dashboard", "f", "filter_study", "Study",
                                                                  "only the highlighted study's runs", False),
                ("Confirm", "n", "answer(False)", "No", "", True), ("Confirm", "esc", "answer(False)", "No", "", True),
                ("Table", "↑", "cursor(-1)", "Up", "", False)]
    rows = help_rows(bindings)
    assert [(r.section, r.keys, r.text, r.in_footer) for r in rows] == [
        ("Dashboard", "k", "Kill", True), ("Dashboard", "f", "only the highlighted study's runs", False),
        ("Confirm", "n / esc", "No", True), ("Table", "↑", "Up", False)]
