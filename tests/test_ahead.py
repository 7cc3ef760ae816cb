"""Suggestions asked ahead: the queue's rules (pure, property-based), and the refresh
against a real store and a real Ax search in its process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.ahead import AheadQueue, Asked, depth_for, refresh_plan
from hypd.runstate import RunState
from hypd.search import WITHDRAWN, load_suggester
from hypd.store import Store
from hypd.studies import Studies
from hypd.study import parse_study

queues = st.lists(st.builds(Asked, st.integers(0, 50), st.floats(0, 100), st.integers(0, 10)),
                  max_size=6, unique_by=lambda a: a.trial)


@settings(max_examples=300, deadline=None)
@given(queues, st.integers(0, 12), st.integers(0, 4), st.integers(0, 5))
def test_the_plan_replaces_only_stale_ones_and_never_overfills_or_overspends(
        queued: list[Asked], results: int, depth: int, room: int) -> None:
    stale, add = refresh_plan(queued, results, depth, room)
    by_trial = {a.trial: a for a in queued}
    assert set(stale) <= by_trial.keys()
    assert all(by_trial[t].results < results for t in stale)  # a fresh one is never asked again
    assert all(a.trial in stale for a in queued if a.results < results)  # every stale one is
    assert 0 <= add <= room
    assert len(queued) + add <= max(depth, len(queued))
    if len(queued) < depth and room > 0:
        assert add > 0  # a short queue is topped up while the budget allows


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "take", "claim", "unclaim", "result"]),
                          st.integers(0, 5)), max_size=40))
def test_a_trial_claimed_for_replacement_is_never_launched_and_a_launched_one_never_claimed(
        ops: list[tuple[str, int]]) -> None:
    q = AheadQueue()
    launched: set[int] = set()
    claimed: set[int] = set()
    now = 0.0
    for op, trial in ops:
        now += 1.0
        if op == "add" and trial not in launched and trial not in claimed:
            q.add([trial], now, q.results)
        elif op == "take":
            if q.take(trial, now):
                assert trial not in claimed
                launched.add(trial)
            else:
                assert trial in claimed
        elif op == "claim":
            q.claim([trial])
            if trial in q.replacing:
                assert trial not in launched
                claimed.add(trial)
        elif op == "unclaim":
            q.unclaim([trial])
            claimed.discard(trial)
        else:
            q.results += 1
        assert not (q.asked.keys() & q.replacing)
        assert all(lead >= 0 for lead in q.leads) and all(b >= 0 for b in q.behind)


def test_depth_is_small_and_at_most_the_parallel_slots() -> None:
    assert depth_for(1, 2) == 1 and depth_for(8, 2) == 2 and depth_for(0, 2) == 0


STUDY = """
[study]
name = "ahead"
objective = { metric = "loss" }
algorithm = "ax"
max_trials = 6
parallel = 2
seed = 4
[params]
x = { type = "float", low = 0.0, high = 1.0 }
y = { type = "float", low = 0.0, high = 1.0 }
[run]
command = "true"
"""

ax_warnings = pytest.mark.filterwarnings(
    r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")


@pytest.fixture
async def studies(tmp_path: Path) -> AsyncIterator[Studies]:
    store = await Store.open(tmp_path / "hypd.db")
    s = Studies(store)
    yield s
    s.close()
    await store.close()


async def agree(studies: Studies) -> set[int]:
    """What a daemon restarted now would load: the stored search state and the stored
    trials name the same live trials. Returns them."""
    row = await studies.store.study("ahead")
    assert row is not None and row.search_state is not None
    search = load_suggester(parse_study(STUDY), row.search_state)
    in_search = {t for t, trial in search._client._experiment.trials.items()  # type: ignore[attr-defined]
                 if trial.status_reason != WITHDRAWN}
    in_store = {r["trial"] for r in await studies.store.runs(study="ahead", columns=("trial",))}
    assert in_search == in_store
    return in_store


async def complete(studies: Studies, trial: int, loss: float) -> None:
    (run,) = await studies.store.runs(study="ahead", trial=trial, columns=("id",))
    await studies.store.transition(run["id"], RunState.RUNNING, "started")
    await studies.store.transition(run["id"], RunState.COMPLETED, "done", metrics={"loss": loss}, objective=loss)
    await studies.tell("ahead")


@ax_warnings
@pytest.mark.slow
async def test_a_stale_suggestion_is_asked_again_in_one_transaction_without_eating_the_budget(
        studies: Studies) -> None:
    rt, _ = await studies.create(parse_study(STUDY), "ahead.toml", STUDY, ".")
    await studies.new_trials(rt, 2)  # the slots' trials, asked when they freed
    assert await agree(studies) == {0, 1}
    assert studies.wants_ahead(rt)
    replaced, runs = await studies.ask_ahead(rt)
    assert replaced == [] and [r["trial"] for r in runs] == [2]
    queued_run = runs[0]
    assert rt.ahead.summary()["ready"] == 1 and not studies.wants_ahead(rt)
    assert await agree(studies) == {0, 1, 2}

    await complete(studies, 0, 0.5)  # a result: trial 2 was asked with less data
    assert studies.wants_ahead(rt)
    replaced, runs = await studies.ask_ahead(rt)
    assert replaced == [2]
    (fresh,) = runs
    assert fresh["trial"] == 3 and (fresh["id"], fresh["run_no"]) == (queued_run["id"], queued_run["run_no"])
    (stored,) = await studies.store.runs(study="ahead", trial=3)
    assert stored["state"] == "pending" and stored["params"] == fresh["params"] != queued_run["params"]
    assert await agree(studies) == {0, 1, 3}
    assert rt.trials == 3 and rt.ahead.summary()["replaced"] == 1

    # The withdrawn trial does not count against max_trials: six trials run in all.
    await studies.new_trials(rt, 10)
    assert await agree(studies) == {0, 1, 3, 4, 5, 6}
    assert rt.trials == 6 and not studies.wants_ahead(rt)
