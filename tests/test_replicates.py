"""hypd.replicates (a trial's result from its replicates) and hypd.board (the leaderboard
as a person reads it). Pure."""

from __future__ import annotations

import math
import statistics

import pytest

from hypd.board import align_decimals, board_text, split_params
from hypd.replicates import combine, mean_and_sem, standard_error
from hypd.runstate import RunState


def rep(state: str, objective: float | None = None, **metrics: float) -> dict:
    return {"state": state, "objective": objective, "metrics": metrics}


def test_a_trial_is_the_mean_of_its_completed_replicates_with_its_sem() -> None:
    out = combine([rep("completed", 1.0, acc=0.5), rep("failed"), rep("completed", 3.0, acc=0.7),
                   rep("completed", 2.0)], "loss")
    assert out.state is RunState.COMPLETED and out.n == 3
    assert out.means == {"loss": 2.0, "acc": pytest.approx(0.6)}
    assert out.sems["loss"] == pytest.approx(statistics.stdev([1.0, 3.0, 2.0]) / math.sqrt(3))
    assert out.sems["acc"] == pytest.approx(statistics.stdev([0.5, 0.7]) / math.sqrt(2))


def test_one_completed_replicate_has_no_sem_and_non_finite_values_are_left_out() -> None:
    out = combine([rep("completed", 1.5, x=math.nan), rep("killed")], "loss")
    assert out.means == {"loss": 1.5} and out.sems == {}


@pytest.mark.parametrize(("states", "expected"), [
    (["failed", "failed", "failed"], RunState.FAILED),  # every replicate failed: the trial failed
    (["failed", "killed"], RunState.FAILED),
    (["killed", "killed"], RunState.KILLED),  # abandoned
    (["stopped", "failed"], RunState.STOPPED),
    (["failed", "completed"], RunState.COMPLETED),
])
def test_how_a_trial_ended_from_its_replicates(states: list[str], expected: RunState) -> None:
    assert combine([rep(s, 1.0 if s == "completed" else None) for s in states], "loss").state is expected


def test_standard_error_from_sums_agrees_with_the_direct_one() -> None:
    values = [0.31, 0.29, 0.35, 0.4]
    mean, sem = mean_and_sem(values)
    assert standard_error(mean, sum(v * v for v in values), len(values)) == pytest.approx(sem)
    assert standard_error(1.0, 1.0, 1) is None and standard_error(None, None, 0) is None


def test_align_decimals() -> None:
    assert align_decimals(["1.5", "10", "0.125", "-", "1e-05"]) == \
        [" 1.5  ", "10    ", " 0.125", "-", " 1e-05"]
    assert align_decimals(["a", "b"]) == ["a", "b"]


def test_split_params_names_the_ones_equal_in_every_row_once() -> None:
    rows = [{"params": {"lr": 0.1, "epochs": 5, "opt": "adam"}}, {"params": {"lr": 0.01, "epochs": 5, "opt": "sgd"}}]
    assert split_params(rows) == ({"epochs": 5}, ["lr", "opt"])
    assert split_params(rows[:1]) == ({}, ["lr", "epochs", "opt"])  # one row: nothing to compare


def board(runs: list[dict]) -> dict:
    return {"study": "s", "metric": "loss", "goal": "minimize",
            "objectives": [{"metric": "loss", "goal": "minimize", "use": "last"}], "runs": runs}


def run(no: int, objective: float, **params: object) -> dict:
    return {"name": f"s:{no}", "trial": no, "replicate": 1, "objective": objective, "state": "completed",
            "started": 100.0, "ended": 165.0, "params": params}


def test_the_leaderboard_has_a_column_per_varying_parameter_aligned_on_the_point() -> None:
    text = board_text(board([run(3, 0.0123, lr=0.1, epochs=20), run(1, 1.5, lr=0.01, epochs=20),
                             run(2, 12.25, lr=0.001, epochs=20)]))
    assert text.splitlines() == [
        "same in every row: epochs=20",
        "#  RUN  LOSS (min)  STATE      TIME   lr",
        "1  s:3   0.0123     completed  1m05s  0.1",
        "2  s:1   1.5        completed  1m05s  0.01",
        "3  s:2  12.25       completed  1m05s  0.001",
    ]


def test_a_replicated_leaderboard_shows_mean_range_and_count() -> None:
    rows = [{**run(4, 0.9, lr=0.1), "mean": 1.0, "low": 0.9, "high": 1.1, "n": 3, "sem": 0.06},
            {**run(7, 1.5, lr=0.01), "mean": 12.5, "low": 1.5, "high": 23.5, "n": 2, "sem": 11.0}]
    assert board_text(board(rows)).splitlines() == [
        "#  TRIAL  LOSS (min) MEAN [MIN–MAX] (N)  BEST RUN  lr",
        "1  5       1   [0.9– 1.1] (3)            s:4       0.1",  # trials are shown from 1
        "2  8      12.5 [1.5–23.5] (2)            s:7       0.01",
    ]
