"""hypd.store on real SQLite files (aiosqlite) in a temporary folder."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hypd.runstate import TERMINAL, TRANSITIONS, InvalidTransition, RunState
from hypd.store import RUN_COLUMNS, SCHEMA, SCHEMA_VERSION, Store, StoreError, StudyRow

P, R, C, F, K, S, L = (RunState.PENDING, RunState.RUNNING, RunState.COMPLETED, RunState.FAILED,
                       RunState.KILLED, RunState.STOPPED, RunState.LOST)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "hypd.db")
    yield s
    await s.close()


async def new_study(store: Store, name: str = "a", trials: int = 0) -> list[dict[str, Any]]:
    await store.add_study(name, f"/s/{name}.toml", f"# {name}", "/s", None)
    if not trials:
        return []
    return await store.add_trials(name, [(t, {"x": t}) for t in range(1, trials + 1)], None)


async def row(store: Store, run_id: int) -> dict[str, Any]:
    r = await store.run_by_id(run_id)
    assert r is not None
    return r


async def to(store: Store, run_id: int, *states: RunState) -> None:
    for st in states:
        await store.transition(run_id, st, f"to {st}")


def raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


# ------------------------------------------------------------------ opening

async def test_open_creates_the_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "hypd.db"
    s = await Store.open(path)
    try:
        assert path.exists()
        assert await s.writer.call(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert await s.writer.call(lambda db: db.execute("PRAGMA foreign_keys").fetchone()[0]) == 1
    finally:
        await s.close()
    tables = {r[0] for r in raw(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "studies", "trials", "runs", "transitions", "reports"} <= tables
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]  # persistent
    assert raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]


async def test_reopening_keeps_one_schema_version_row(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    for _ in range(3):
        await (await Store.open(path)).close()
    assert raw(path, "SELECT key, value FROM meta WHERE key LIKE 'schema%'") == [("schema_version", str(SCHEMA_VERSION))]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    await (await Store.open(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer hypd"):
        await Store.open(path)
    # Refused without changing it.
    assert raw(path, "SELECT value FROM meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION + 1),)]


async def test_a_store_from_before_added_columns_gets_them_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    s = await Store.open(path)
    await new_study(s, "a", trials=1)
    await s.close()
    with sqlite3.connect(path) as conn:  # as an older hypd wrote it
        conn.execute("ALTER TABLE studies DROP COLUMN pause_reason")
        conn.execute("ALTER TABLE runs DROP COLUMN exit_stage")
    s = await Store.open(path)
    try:
        await s.set_paused("a", True, "5 runs in a row failed")
        assert (await s.study("a")).pause_reason == "5 runs in a row failed"  # type: ignore[union-attr]
        assert (await s.run("a", 1))["exit_stage"] is None  # type: ignore[index]
    finally:
        await s.close()


# ------------------------------------------------------------------ studies

async def test_add_study_and_read_it_back(store: Store) -> None:
    await store.add_study("a", "/s/a.toml", "[study]\nname='a'", "/s", '{"seed":1}')
    row = await store.study("a")
    assert isinstance(row, StudyRow)
    assert (row.name, row.source, row.text, row.base_dir, row.paused, row.search_state, row.next_run_no,
            row.last_served) == ("a", "/s/a.toml", "[study]\nname='a'", "/s", False, '{"seed":1}', 1, 0)
    assert row.created > 0
    assert await store.study("nope") is None


async def test_studies_in_order_of_creation(store: Store) -> None:
    assert await store.studies() == []
    for name in ("z", "a", "m"):
        await new_study(store, name)
    assert [s.name for s in await store.studies()] == ["z", "a", "m"]


async def test_a_study_name_is_unique(store: Store) -> None:
    await new_study(store, "a")
    with pytest.raises(sqlite3.IntegrityError):
        await new_study(store, "a")


async def test_study_setters(store: Store) -> None:
    await new_study(store, "a")
    await store.set_paused("a", True)
    await store.set_search_state("a", "state-2")
    await store.set_last_served("a", 123.5)
    await store.update_study_source("a", "/t/a.toml", "new text", "/t")
    row = await store.study("a")
    assert row is not None
    assert (row.paused, row.search_state, row.last_served, row.source, row.text, row.base_dir) == (
        True, "state-2", 123.5, "/t/a.toml", "new text", "/t")
    await store.set_paused("a", False)
    assert (await store.study("a")).paused is False  # type: ignore[union-attr]


async def test_trial_outcomes_count_each_trial_once(store: Store) -> None:
    runs = await new_study(store, "a", trials=4)
    await to(store, runs[0]["id"], R, F)
    retry = await store.add_retry("a", 1, "retry")
    await to(store, retry["id"], R, C)  # trial 1: failed, then completed
    await to(store, runs[1]["id"], R, F)
    await to(store, (await store.add_retry("a", 2, "retry"))["id"], R, F)  # trial 2: failed twice
    await to(store, runs[2]["id"], R, L)
    await store.add_retry("a", 3, "retry")  # trial 3: lost, a retry pending
    await to(store, runs[3]["id"], R)
    assert await store.trial_outcomes() == {"a": {"completed": 1, "failed": 1, "pending": 1, "running": 1}}


# ------------------------------------------------------------------ trials and runs

async def test_add_trials_creates_pending_runs_with_consecutive_numbers(store: Store) -> None:
    await new_study(store, "a")
    runs = await store.add_trials("a", [(1, {"lr": 0.1}), (2, {"lr": 0.2}), (3, {"lr": 0.3})], "s1")
    assert [(r["run_no"], r["trial"], r["attempt"], r["name"]) for r in runs] == [
        (1, 1, 1, "a:1"), (2, 2, 1, "a:2"), (3, 3, 1, "a:3")]
    assert runs[1]["params"] == {"lr": 0.2}
    more = await store.add_trials("a", [(4, {"lr": 0.4})], None)
    assert [r["run_no"] for r in more] == [4]
    study = await store.study("a")
    assert study is not None and study.next_run_no == 5
    assert study.search_state == "s1"  # None leaves it as it was
    assert await store.trial_count("a") == 4
    assert await store.trial_counts() == {"a": 4}
    for r in runs + more:
        got = await row(store, r["id"])
        assert (got["state"], got["reason"], got["params"], got["reports"], got["log_offset"]) == (
            "pending", "new trial", r["params"], 0, 0)
        assert got["started"] is None and got["ended"] is None and got["gpus"] is None
        trans = await store.transitions(r["id"])
        assert [(t["from"], t["to"], t["reason"]) for t in trans] == [(None, "pending", "new trial")]


async def test_trials_of_another_study_number_their_own_runs(store: Store) -> None:
    await new_study(store, "a", trials=2)
    runs = await new_study(store, "b", trials=2)
    assert [r["name"] for r in runs] == ["b:1", "b:2"]


async def test_user_trials_are_marked(store: Store, tmp_path: Path) -> None:
    await new_study(store, "a")
    await store.add_trials("a", [(1, {"x": 1})], None, source="user")
    assert raw(tmp_path / "hypd.db", "SELECT source FROM trials") == [("user",)]


async def test_add_trials_is_all_or_nothing(store: Store) -> None:
    await new_study(store, "a", trials=1)
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_trials("a", [(2, {"x": 2}), (1, {"x": 1})], "changed")  # trial 1 exists
    assert await store.trial_count("a") == 1
    assert len(await store.runs(study="a")) == 1
    study = await store.study("a")
    assert study is not None and study.next_run_no == 2 and study.search_state is None
    assert [r["run_no"] for r in await store.add_trials("a", [(2, {})], None)] == [2]


async def test_add_trials_for_an_unknown_study(store: Store) -> None:
    with pytest.raises((StoreError, sqlite3.IntegrityError)):
        await store.add_trials("ghost", [(1, {})], None)
    assert await store.runs() == []
    assert await store.trial_count("ghost") == 0


async def test_add_retry(store: Store) -> None:
    first, _ = await new_study(store, "a", trials=2)
    retry = await store.add_retry("a", 1, "retry 1 of 2: failed")
    assert (retry["run_no"], retry["trial"], retry["attempt"], retry["params"], retry["name"]) == (
        3, 1, 2, {"x": 1}, "a:3")
    again = await store.add_retry("a", 1, "again")
    assert (again["run_no"], again["attempt"]) == (4, 3)
    got = await row(store, again["id"])
    assert (got["state"], got["reason"]) == ("pending", "again")
    assert [(t["from"], t["to"], t["reason"]) for t in await store.transitions(again["id"])] == [
        (None, "pending", "again")]
    assert [r["attempt"] for r in await store.runs(study="a", trial=1)] == [1, 2, 3]


async def test_add_retry_of_an_unknown_trial(store: Store) -> None:
    await new_study(store, "a", trials=1)
    with pytest.raises(StoreError, match="no trial 9"):
        await store.add_retry("a", 9, "x")
    assert (await store.study("a")).next_run_no == 2  # type: ignore[union-attr]
    assert len(await store.runs()) == 1
    await store.add_retry("a", 1, "still usable")  # no transaction left open


# ------------------------------------------------------------------ transitions

async def test_transition_records_and_sets_fields(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await store.transition(run["id"], R, "started on local:0,1", host="local", gpus=[0, 1], pid=4242,
                           deadline=99.0)
    got = await row(store, run["id"])
    assert (got["state"], got["reason"], got["host"], got["gpus"], got["pid"], got["deadline"]) == (
        "running", "started on local:0,1", "local", [0, 1], 4242, 99.0)
    assert got["started"] is not None and got["ended"] is None
    await store.transition(run["id"], C, "all stages exited 0", exit_code=0)
    got = await row(store, run["id"])
    assert (got["state"], got["exit_code"]) == ("completed", 0)
    assert got["ended"] >= got["started"]
    trans = await store.transitions(run["id"])
    assert [(t["from"], t["to"], t["reason"]) for t in trans] == [
        (None, "pending", "new trial"), ("pending", "running", "started on local:0,1"),
        ("running", "completed", "all stages exited 0")]
    assert trans[0]["at"] <= trans[1]["at"] <= trans[2]["at"]


@pytest.mark.parametrize("path", [
    (R, C), (R, F), (R, K), (R, S), (K,), (R, L, C), (R, L, F), (R, L, K), (R, L, R, C),
])
async def test_ended_is_set_for_terminal_states_and_lost_only(store: Store, path: tuple[RunState, ...]) -> None:
    (run,) = await new_study(store, "a", trials=1)
    for st in path:
        await store.transition(run["id"], st, f"to {st}")
        got = await row(store, run["id"])
        # A lost run's time stops counting (until it comes back and runs on).
        assert (got["ended"] is not None) == (st in TERMINAL or st is L), st
    assert [t["to"] for t in await store.transitions(run["id"])] == ["pending", *[s.value for s in path]]


async def test_explicit_times_are_kept(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await store.transition(run["id"], R, "x", started=10.0)
    await store.transition(run["id"], F, "y", ended=20.0)
    got = await row(store, run["id"])
    assert (got["started"], got["ended"]) == (10.0, 20.0)


async def test_lost_run_coming_back_keeps_its_start_time(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await store.transition(run["id"], R, "started", started=10.0)
    await store.transition(run["id"], L, "host vanished", ended=30.0)
    assert (await row(store, run["id"]))["ended"] == 30.0  # its time stops counting while lost
    await store.transition(run["id"], R, "host back, still alive")
    got = await row(store, run["id"])
    assert (got["started"], got["ended"]) == (10.0, None)


async def test_a_lost_run_has_an_end_until_it_comes_back(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await store.transition(run["id"], R, "started", started=10.0)
    await store.transition(run["id"], L, "host vanished")
    lost = await row(store, run["id"])
    assert lost["ended"] is not None and lost["ended"] >= 10.0
    await store.transition(run["id"], F, "exited 1 while its host was away")
    assert (await row(store, run["id"]))["ended"] >= lost["ended"]


FORBIDDEN_FROM: list[tuple[tuple[RunState, ...], RunState]] = [
    ((), C), ((), F), ((), S), ((), L), ((), P),
    ((R,), R), ((R, P), C),
    ((R, C), R), ((R, C), F), ((R, F), R), ((K,), R), ((R, S), C), ((R, K), P),
    ((R, L), P), ((R, L), L),
]


def test_forbidden_cases_are_forbidden() -> None:
    for path, bad in FORBIDDEN_FROM:
        current = path[-1] if path else P
        assert bad not in TRANSITIONS[current]


@pytest.mark.parametrize("path, bad", FORBIDDEN_FROM)
async def test_invalid_transition_leaves_the_run_unchanged(store: Store, path: tuple[RunState, ...],
                                                           bad: RunState) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await to(store, run["id"], *path)
    before = await row(store, run["id"])
    trans_before = await store.transitions(run["id"])
    with pytest.raises(InvalidTransition):
        await store.transition(run["id"], bad, "nope", exit_code=9, host="elsewhere")
    assert await row(store, run["id"]) == before
    assert await store.transitions(run["id"]) == trans_before
    # No transaction left open: the store still writes.
    await new_study(store, "b", trials=1)
    assert len(await store.runs(study="b")) == 1


async def test_transition_with_an_unwritable_column_is_rolled_back(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    for bad in ({"study": "b"}, {"run_no": 5}, {"bogus": 1}, {"id": 7}, {"params": {}}):
        with pytest.raises(StoreError, match="not a writable run column"):
            await store.transition(run["id"], R, "x", **bad)
    got = await row(store, run["id"])
    assert got["state"] == "pending" and got["started"] is None
    assert len(await store.transitions(run["id"])) == 1


async def test_transition_of_an_unknown_run(store: Store) -> None:
    with pytest.raises(StoreError, match="no run with id 77"):
        await store.transition(77, R, "x")
    await new_study(store, "a", trials=1)  # still usable


async def test_update_run(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await store.update_run(run["id"], pid=12, proc_start="abc", stop_intent="kill", stop_sent=5.0, gpus=[3])
    got = await row(store, run["id"])
    assert (got["pid"], got["proc_start"], got["stop_intent"], got["stop_sent"], got["gpus"]) == (
        12, "abc", "kill", 5.0, [3])
    with pytest.raises(StoreError):
        await store.update_run(run["id"], trial=2)


# ------------------------------------------------------------------ reports

async def test_add_reports_appends_with_consecutive_seq(store: Store, tmp_path: Path) -> None:
    (run,) = await new_study(store, "a", trials=1)
    rid = run["id"]
    await store.add_reports(rid, [(0, 1.0, {"loss": 0.5}), (1, 2.0, {"loss": 0.4, "acc": 0.1})], log_offset=100,
                            metrics={"loss": 0.4, "acc": 0.1}, objective=0.4, last_line="epoch 1")
    await store.add_reports(rid, [], log_offset=150, metrics={"loss": 0.4, "acc": 0.1}, objective=0.4,
                            last_line="epoch 1.5")
    await store.add_reports(rid, [(7, 3.0, {"loss": 0.2})], log_offset=200, metrics={"loss": 0.2, "acc": 0.1},
                            objective=0.2, last_line="epoch 2")
    got = await row(store, rid)
    assert (got["log_offset"], got["reports"], got["metrics"], got["objective"], got["last_line"]) == (
        200, 3, {"loss": 0.2, "acc": 0.1}, 0.2, "epoch 2")
    assert await store.reports(rid) == [
        {"step": 0, "at": 1.0, "values": {"loss": 0.5}},
        {"step": 1, "at": 2.0, "values": {"loss": 0.4, "acc": 0.1}},
        {"step": 7, "at": 3.0, "values": {"loss": 0.2}}]
    assert raw(tmp_path / "hypd.db", "SELECT seq FROM reports WHERE run_id=? ORDER BY seq", rid) == [(0,), (1,), (2,)]


async def test_reports_of_two_runs_are_apart(store: Store) -> None:
    a, b = await new_study(store, "a", trials=2)
    await store.add_reports(a["id"], [(0, 1.0, {"x": 1})], log_offset=1, metrics={}, objective=None, last_line="")
    await store.add_reports(b["id"], [(0, 1.0, {"x": 2}), (1, 1.0, {"x": 3})], log_offset=1, metrics={},
                            objective=None, last_line="")
    await store.add_reports(a["id"], [(1, 1.0, {"x": 4})], log_offset=2, metrics={}, objective=None, last_line="")
    assert [r["values"]["x"] for r in await store.reports(a["id"])] == [1, 4]
    assert [r["values"]["x"] for r in await store.reports(b["id"])] == [2, 3]
    assert (await row(store, a["id"]))["reports"] == 2


async def test_add_reports_is_atomic(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    rid = run["id"]
    await store.add_reports(rid, [(0, 1.0, {"loss": 1.0})], log_offset=10, metrics={"loss": 1.0}, objective=1.0,
                            last_line="one")
    before = await row(store, rid)
    # The reports are inserted, then the summary cannot be written: nothing of it stays.
    with pytest.raises(TypeError):
        await store.add_reports(rid, [(1, 2.0, {"loss": 0.5})], log_offset=20, metrics={"bad": object()},  # type: ignore[dict-item]
                                objective=0.5, last_line="two")
    assert await row(store, rid) == before
    assert len(await store.reports(rid)) == 1
    await store.add_reports(rid, [(1, 2.0, {"loss": 0.5})], log_offset=20, metrics={"loss": 0.5}, objective=0.5,
                            last_line="two")
    assert [r["step"] for r in await store.reports(rid)] == [0, 1]


# ------------------------------------------------------------------ queries

async def populate(store: Store) -> dict[str, int]:
    """a:1 completed, a:2 running, a:3 pending, a:4 failed, b:1 pending, b:2 running; a:5 retry of trial 4."""
    runs = await new_study(store, "a", trials=4) + await new_study(store, "b", trials=2)
    ids = {r["name"]: r["id"] for r in runs}
    await to(store, ids["a:1"], R, C)
    await to(store, ids["a:2"], R)
    await to(store, ids["a:4"], R, F)
    await to(store, ids["b:2"], R)
    ids["a:5"] = (await store.add_retry("a", 4, "retry"))["id"]
    return ids


async def test_runs_filters(store: Store) -> None:
    await populate(store)

    async def names(**kw: Any) -> list[str]:
        return [r["name"] for r in await store.runs(**kw)]

    assert await names() == ["a:1", "a:2", "a:3", "a:4", "b:1", "b:2", "a:5"]
    assert await names(state="pending") == ["a:3", "b:1", "a:5"]
    assert await names(states=["running", "completed"]) == ["a:1", "a:2", "b:2"]
    assert await names(states=["lost"]) == []
    assert await names(study="b") == ["b:1", "b:2"]
    assert await names(study="a", state="running") == ["a:2"]
    assert await names(study="a", trial=4) == ["a:4", "a:5"]
    assert await names(study="a", states=["pending", "failed"], trial=4) == ["a:4", "a:5"]
    assert await names(limit=2) == ["a:1", "a:2"]
    assert await names(state="pending", limit=1) == ["a:3"]
    assert await names(limit=0) == []
    assert await names(study="nope") == []
    assert await names(order="id DESC", limit=2) == ["a:5", "b:2"]


async def test_runs_columns(store: Store) -> None:
    await populate(store)
    full = await store.runs(limit=1)
    assert set(full[0]) == set(RUN_COLUMNS) | {"name"}
    assert isinstance(full[0]["params"], dict) and isinstance(full[0]["metrics"], dict)
    assert full[0]["gpus"] is None  # NULL stays None
    await store.update_run(full[0]["id"], gpus=[])
    assert (await store.runs(limit=1))[0]["gpus"] == []  # a CPU slot
    few = await store.runs(columns=("id", "state"), state="completed")
    assert few == [{"id": 1, "state": "completed"}]  # no name without study and run_no
    named = await store.runs(columns=("study", "run_no"), study="b")
    assert named == [{"study": "b", "run_no": 1, "name": "b:1"}, {"study": "b", "run_no": 2, "name": "b:2"}]


async def test_run_lookups(store: Store) -> None:
    ids = await populate(store)
    r = await store.run("a", 4)
    assert r is not None and r["id"] == ids["a:4"] and r["state"] == "failed"
    assert {"pid", "proc_start", "ctl_dir", "log_offset", "stop_intent", "stop_sent"} <= set(r)
    assert await store.run("a", 99) is None
    assert await store.run_by_id(999) is None


async def test_state_counts(store: Store) -> None:
    assert await store.state_counts() == {}
    await populate(store)
    assert await store.state_counts() == {
        "a": {"completed": 1, "running": 1, "pending": 2, "failed": 1},
        "b": {"pending": 1, "running": 1}}


async def test_told(store: Store) -> None:
    await new_study(store, "a", trials=2)
    assert await store.trial_told("a", 1) is None
    await store.set_told("a", 1, "completed")
    assert await store.trial_told("a", 1) == "completed"
    assert await store.trial_told("a", 2) is None
    await store.set_told("a", 1, "abandoned")
    assert await store.trial_told("a", 1) == "abandoned"
    assert await store.trial_told("a", 9) is None
    assert await store.trial_told("zz", 1) is None


async def untold(store: Store, study: str = "a") -> list[tuple[int, str, str, int]]:
    return [(t["trial"], t["state"], t["name"], t["attempt"]) for t in await store.untold_trials(study)]


async def test_untold_trials_are_the_ended_ones_not_yet_told(store: Store) -> None:
    runs = await new_study(store, "a", trials=6)
    await new_study(store, "b", trials=1)
    ids = {r["trial"]: r["id"] for r in runs}
    assert await untold(store) == []  # all pending
    await to(store, ids[1], R)
    await store.add_reports(ids[1], [(0, 1.0, {"loss": 0.5, "acc": 0.9})], log_offset=30,
                            metrics={"loss": 0.5, "acc": 0.9}, objective=0.5, last_line="x")
    await to(store, ids[1], C)
    await to(store, ids[2], R, F)
    await to(store, ids[3], R, L)  # lost: it may still come back
    await to(store, ids[4], K)  # killed before it started
    await to(store, ids[5], R, S)
    await to(store, ids[6], R)
    await to(store, (await store.runs(study="b"))[0]["id"], R, C)  # another study's
    assert await untold(store) == [(1, "completed", "a:1", 1), (2, "failed", "a:2", 1),
                                   (4, "killed", "a:4", 1), (5, "stopped", "a:5", 1)]
    (first,) = [t for t in await store.untold_trials("a") if t["trial"] == 1]
    last = {"run_id": ids[1], "name": "a:1", "attempt": 1, "state": "completed", "reason": "to completed",
            "metrics": {"loss": 0.5, "acc": 0.9}, "objective": 0.5}
    assert first == {"trial": 1, "params": {"x": 1}, **last, "attempts": 1, "failures": 0,
                     "replicates": [{"replicate": 1, **last}]}
    await to(store, ids[3], F)  # the lost one ended after all
    assert [t for t, *_ in await untold(store)] == [1, 2, 3, 4, 5]
    assert await untold(store, "b") == [(1, "completed", "b:1", 1)]
    assert await untold(store, "zz") == []


async def test_a_trial_with_an_attempt_to_come_is_not_untold(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    await to(store, run["id"], R, F)
    assert [t["failures"] for t in await store.untold_trials("a")] == [1]
    retry = await store.add_retry("a", 1, "retry 1")
    assert await untold(store) == []  # pending
    await to(store, retry["id"], R)
    assert await untold(store) == []  # running
    await to(store, retry["id"], L)
    assert await untold(store) == []  # lost
    await to(store, retry["id"], C)
    (t,) = await store.untold_trials("a")
    assert (t["state"], t["attempt"], t["name"], t["run_id"]) == ("completed", 2, retry["name"], retry["id"])
    assert (t["attempts"], t["failures"]) == (2, 1)


async def test_a_trial_with_replicates_is_untold_once_every_replicate_has_ended(store: Store) -> None:
    await store.add_study("r", "r.toml", "", "/", None)
    runs = await store.add_trials("r", [(1, {"x": 1}), (2, {"x": 2})], None, replicates=3)
    assert [(r["trial"], r["replicate"], r["attempt"], r["run_no"]) for r in runs] == \
        [(1, 1, 1, 1), (1, 2, 1, 2), (1, 3, 1, 3), (2, 1, 1, 4), (2, 2, 1, 5), (2, 3, 1, 6)]
    await to(store, runs[0]["id"], R, C)
    await to(store, runs[1]["id"], R, F)
    retry = await store.add_retry("r", 1, "retry 1", replicate=2)
    assert (retry["replicate"], retry["attempt"]) == (2, 2)  # attempts count within the replicate
    await to(store, runs[2]["id"], R, C)
    assert await store.untold_trials("r") == []  # replicate 2's retry is pending
    await to(store, retry["id"], R, F)
    (t,) = await store.untold_trials("r")
    assert [(r["replicate"], r["attempt"], r["state"]) for r in t["replicates"]] == \
        [(1, 1, "completed"), (2, 2, "failed"), (3, 1, "completed")]
    assert (t["attempts"], t["failures"]) == (4, 2)


async def test_best_runs_by_mean_ranks_trials_by_their_replicates_mean(store: Store) -> None:
    await store.add_study("r", "r.toml", "", "/", None)
    runs = await store.add_trials("r", [(1, {"x": 1}), (2, {"x": 2})], None, replicates=3)
    results = [1.0, 2.0, 6.0, 2.5, 2.5, None]  # trial 1: mean 3, best 1; trial 2: mean 2.5 (n=2)
    for run, value in zip(runs, results):
        await to(store, run["id"], R)
        if value is not None:
            await store.add_reports(run["id"], [(0, 1.0, {"loss": value})], log_offset=1,
                                    metrics={"loss": value}, objective=value, last_line="")
        await to(store, run["id"], C if value is not None else F)
    by_best = await store.best_runs("r", minimize=True)
    assert [r["trial"] for r in by_best] == [1, 2] and "mean" not in by_best[0]
    by_mean = await store.best_runs("r", minimize=True, by_mean=True)
    assert [(r["trial"], r["mean"], r["low"], r["high"], r["n"]) for r in by_mean] == \
        [(2, 2.5, 2.5, 2.5, 2), (1, 3.0, 1.0, 6.0, 3)]
    assert by_mean[0]["sem"] == 0.0 and by_mean[1]["sem"] == pytest.approx((7 / 3) ** 0.5)


async def test_a_store_from_before_replicates_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA.replace("    replicate INTEGER NOT NULL DEFAULT 1,   -- 1..N: the trial's runs with "
                                     "`replicates = N`\n", ""))
    old.execute("INSERT INTO studies (name, source, text, base_dir, created) VALUES ('a', 'a', '', '/', 0)")
    old.execute("INSERT INTO runs (study, run_no, trial, attempt, state, params, created) "
                "VALUES ('a', 1, 1, 1, 'pending', '{}', 0)")
    old.commit()
    assert "replicate" not in {r[1] for r in old.execute("PRAGMA table_info(runs)")}
    old.close()
    store = await Store.open(path)
    try:
        (run,) = await store.runs(study="a")
        assert run["replicate"] == 1
    finally:
        await store.close()


async def test_record_told_writes_the_search_state_and_the_marks_together(store: Store) -> None:
    runs = await new_study(store, "a", trials=3)
    for r in runs:
        await to(store, r["id"], R, C)
    await store.record_told("a", "state-1", [(1, "completed"), (3, "failed")])
    study = await store.study("a")
    assert study is not None and study.search_state == "state-1"
    assert [await store.trial_told("a", t) for t in (1, 2, 3)] == ["completed", None, "failed"]
    assert [t for t, *_ in await untold(store)] == [2]
    # None leaves the stored state as it is; no trials: the state alone.
    await store.record_told("a", None, [(2, "stopped")])
    assert (await store.study("a")).search_state == "state-1"  # type: ignore[union-attr]
    await store.record_told("a", "state-2", [])
    assert (await store.study("a")).search_state == "state-2"  # type: ignore[union-attr]
    assert await untold(store) == []


@pytest.mark.parametrize("study, told", [("a", [(2, "completed"), (9, "failed")]), ("zz", [(2, "completed")])])
async def test_record_told_is_all_or_nothing(store: Store, study: str, told: list[tuple[int, str]]) -> None:
    runs = await new_study(store, "a", trials=2)
    for r in runs:
        await to(store, r["id"], R, C)
    await store.record_told("a", "state-1", [(1, "completed")])
    with pytest.raises(StoreError, match="no (trial|study)"):
        await store.record_told(study, "state-2", told)
    assert (await store.study("a")).search_state == "state-1"  # type: ignore[union-attr]
    assert await store.trial_told("a", 2) is None
    assert not store.writer.in_transaction


async def test_told_marks_and_search_state_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    s = await Store.open(path)
    try:
        runs = await new_study(s, "a", trials=2)
        for r in runs:
            await to(s, r["id"], R, C)
        await s.record_told("a", "state-1", [(1, "completed")])
    finally:
        await s.close()
    s = await Store.open(path)
    try:
        assert (await s.study("a")).search_state == "state-1"  # type: ignore[union-attr]
        assert [t for t, *_ in await untold(s)] == [2]
    finally:
        await s.close()


async def finished(store: Store, study: str, trial: int, objective: float | None, state: RunState = C,
                   retry: bool = False) -> int:
    run = await store.add_retry(study, trial, "again") if retry else \
        (await store.add_trials(study, [(trial, {"t": trial})], None))[0]
    await store.transition(run["id"], R, "go")
    if state is not R:
        await store.transition(run["id"], state, "end")
    if objective is not None:
        await store.add_reports(run["id"], [], log_offset=0, metrics={}, objective=objective, last_line="")
    return run["id"]


@pytest.mark.parametrize("minimize", [True, False])
async def test_best_runs(store: Store, minimize: bool) -> None:
    await new_study(store, "a")
    await new_study(store, "other")
    r1 = await finished(store, "a", 1, 0.5)
    r1b = await finished(store, "a", 1, 0.3, retry=True)  # better when minimizing
    r1c = await finished(store, "a", 1, 0.9, retry=True)  # better when maximizing
    r2 = await finished(store, "a", 2, 0.4, state=S)  # early-stopped runs count
    await finished(store, "a", 2, 0.0, state=F, retry=True)  # failed runs do not
    await finished(store, "a", 3, 0.1, state=R)  # nor running ones
    await finished(store, "a", 4, None)  # nor runs without a result
    r5 = await finished(store, "a", 5, 0.7)
    await finished(store, "other", 1, -5.0)
    await finished(store, "other", 2, 50.0)
    best = await store.best_runs("a", minimize)
    if minimize:
        assert [r["id"] for r in best] == [r1b, r2, r5]
        assert [r["objective"] for r in best] == [0.3, 0.4, 0.7]
    else:
        assert [r["id"] for r in best] == [r1c, r5, r2]
        assert [r["objective"] for r in best] == [0.9, 0.7, 0.4]
    assert r1 not in [r["id"] for r in best]
    assert {r["trial"] for r in best} == {1, 2, 5}
    assert set(best[0]) == set(RUN_COLUMNS) | {"name"}
    assert [r["id"] for r in await store.best_runs("a", minimize, limit=2)] == [r["id"] for r in best[:2]]
    assert await store.best_runs("nope", minimize) == []


async def test_best_runs_one_per_trial_on_ties(store: Store) -> None:
    await new_study(store, "a")
    first = await finished(store, "a", 1, 0.5)
    await finished(store, "a", 1, 0.5, retry=True)
    other = await finished(store, "a", 2, 0.5)
    best = await store.best_runs("a", True)
    assert [r["trial"] for r in best] == [1, 2]
    assert best[1]["id"] == other
    assert best[0]["id"] in (first, first + 1)


# ------------------------------------------------------------------ many tasks, one connection

async def test_concurrent_writes_do_not_interleave(store: Store) -> None:
    await new_study(store, "a")
    await new_study(store, "b")
    # Many tasks write at once through the one connection: every transaction is whole.
    runs_a, runs_b = await asyncio.gather(
        store.add_trials("a", [(t, {"t": t}) for t in range(1, 21)], "sa"),
        store.add_trials("b", [(t, {"t": t}) for t in range(1, 21)], "sb"))
    everything = runs_a + runs_b
    await asyncio.gather(*(store.transition(r["id"], R, "go", host="h", gpus=[]) for r in everything),
                         store.set_paused("a", True), store.set_last_served("b", 5.0))
    await asyncio.gather(*(store.add_reports(r["id"], [(0, 1.0, {"l": 1.0}), (1, 2.0, {"l": 0.5})],
                                             log_offset=10, metrics={"l": 0.5}, objective=0.5, last_line="x")
                           for r in everything),
                         *(store.add_retry("a", t, "again") for t in range(1, 6)),
                         *(store.set_told("b", t, "completed") for t in range(1, 6)))
    assert await store.state_counts() == {"a": {"running": 20, "pending": 5}, "b": {"running": 20}}
    assert sorted(r["run_no"] for r in await store.runs(study="a")) == list(range(1, 26))
    for r in everything:
        assert [x["step"] for x in await store.reports(r["id"])] == [0, 1]
        assert len(await store.transitions(r["id"])) == 2
    assert (await store.study("a")).paused is True  # type: ignore[union-attr]
    assert (await store.study("b")).last_served == 5.0  # type: ignore[union-attr]
    assert [await store.trial_told("b", t) for t in (1, 5, 6)] == ["completed", "completed", None]


async def test_a_rollback_does_not_undo_another_tasks_write(store: Store) -> None:
    (run,) = await new_study(store, "a", trials=1)
    results = await asyncio.gather(
        store.transition(run["id"], C, "not allowed from pending"),
        store.set_paused("a", True),
        store.add_trials("a", [(2, {})], None),
        store.add_reports(run["id"], [(0, 1.0, {"x": 1})], log_offset=1, metrics={"bad": object()},  # type: ignore[dict-item]
                          objective=None, last_line=""),
        store.update_run(run["id"], pid=99),
        return_exceptions=True)
    assert isinstance(results[0], InvalidTransition)
    assert isinstance(results[3], TypeError)
    assert [r for i, r in enumerate(results) if i not in (0, 3)] == [None, [results[2][0]], None]  # type: ignore[index]
    assert (await store.study("a")).paused is True  # type: ignore[union-attr]
    assert [r["name"] for r in await store.runs()] == ["a:1", "a:2"]
    got = await row(store, run["id"])
    assert (got["state"], got["pid"], got["reports"]) == ("pending", 99, 0)
    assert await store.reports(run["id"]) == []


# ------------------------------------------------------------------ reopening

async def test_reopening_sees_everything(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    s = await Store.open(path)
    ids = await populate(s)
    await s.set_paused("b", True)
    await s.set_told("a", 1, "completed")
    await s.add_reports(ids["a:1"], [(0, 1.0, {"loss": 0.1})], log_offset=33, metrics={"loss": 0.1},
                        objective=0.1, last_line="done")
    before = (await s.runs(), await s.state_counts(), await s.studies(), await s.transitions(ids["a:4"]))
    await s.close()

    s = await Store.open(path)
    try:
        assert (await s.runs(), await s.state_counts(), await s.studies(), await s.transitions(ids["a:4"])) == before
        assert await s.trial_told("a", 1) == "completed"
        assert (await s.study("b")).paused is True  # type: ignore[union-attr]
        assert await s.reports(ids["a:1"]) == [{"step": 0, "at": 1.0, "values": {"loss": 0.1}}]
        assert (await s.run_by_id(ids["a:1"]))["log_offset"] == 33  # type: ignore[index]
        # Numbering carries on.
        assert [r["run_no"] for r in await s.add_trials("a", [(9, {})], None)] == [6]
    finally:
        await s.close()


async def test_another_reader_sees_committed_writes(store: Store, tmp_path: Path) -> None:
    # WAL: a second connection (the CLI reading, a test) sees each committed write.
    (run,) = await new_study(store, "a", trials=1)
    await store.transition(run["id"], R, "go")
    assert raw(tmp_path / "hypd.db", "SELECT state FROM runs WHERE id=?", run["id"]) == [("running",)]
    assert json.loads(raw(tmp_path / "hypd.db", "SELECT params FROM runs")[0][0]) == {"x": 1}
