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


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "take", "claim", "commit", "settle", "result"]),
                          st.integers(0, 5)), max_size=50))
def test_a_trial_being_replaced_is_never_launched_and_a_launched_one_never_replaced(
        ops: list[tuple[str, int]]) -> None:
    q = AheadQueue()
    launched: set[int] = set()
    now = 0.0
    for op, n in ops:
        now += 1.0
        if op == "add" and n not in launched and n not in q.refreshing and n not in q.withdrawing:
            q.add([n], now, q.results)
        elif op == "take":
            was_withdrawing = n in q.withdrawing
            assert q.take(n, now) is not was_withdrawing
            if not was_withdrawing:
                launched.add(n)
        elif op == "claim":
            q.claim([n])
        elif op == "commit":
            assert not set(q.commit(n)) & launched  # a trial launched is never replaced
        elif op == "settle":
            q.settle()
        else:
            q.results += 1
        assert not (q.asked.keys() & q.refreshing.keys() or q.asked.keys() & q.withdrawing
                    or q.refreshing.keys() & q.withdrawing)
        assert all(lead >= 0 for lead in q.leads) and all(b >= 0 for b in q.behind)


def test_a_slot_that_frees_during_the_fit_takes_the_stale_suggestion() -> None:
    q = AheadQueue()
    q.add([3, 4], 10.0, 0)
    q.results = 1
    stale, _ = refresh_plan(q.queued(), q.results, 2, 0)
    q.claim(stale)
    assert q.take(3, 12.0)  # during the fit: launched, stale as it is, rather than wait
    assert q.commit(2) == [4]  # only the other one is replaced
    assert not q.take(4, 13.0)
    q.settle()
    assert list(q.leads) == [2.0] and list(q.behind) == [1] and q.summary()["ready"] == 0


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
