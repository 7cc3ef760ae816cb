"""hypd.lifecycle: the rules of a run's life, one example each, and random histories of a
simulated world (hosts, logs, store, kills, timeouts, restarts) checked against the
promises the core keeps. Pure: no daemon, no processes, no sleeps."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hypd.capacity import Holding, HostRules, Released, free_gpu_slots
from hypd.gpus import GpuReading, GpuSnapshot
from hypd.lifecycle import (
    STORE_RETRY,
    Action,
    Alive,
    Attempt,
    Cleaned,
    Exited,
    HostDown,
    HostUp,
    Ingest,
    KeepaliveAsked,
    Launched,
    LaunchFailed,
    Lifecycle,
    LogGrew,
    Note,
    PauseStudy,
    Persist,
    Phase,
    Record,
    Release,
    Requeue,
    Retry,
    Signal,
    StopRequested,
    Stored,
    StoreFailed,
    StudyRules,
    Supersede,
    Tell,
    Tick,
    Unwatch,
    Watch,
)
from hypd.runstate import TERMINAL, RunState, StopIntent, check_transition


def of(actions: list[Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def records(actions: list[Action]) -> list[tuple[int, RunState]]:
    return [(r.run, r.state) for r in of(actions, Record)]


def start(lc: Lifecycle, run: int = 1, trial: int = 1, study: str = "s", host: str = "h",
          gpus: tuple[int, ...] = (0,), pid: int = 100, launched: bool = True, **kw: object) -> list[Action]:
    """What the shell does for a new run: queued, adopt as launching, then (by default)
    the host's answer that it started."""
    lc.queued(study, trial, run)
    out = lc.adopt(Attempt(run, f"{study}-{run}", study, trial, host, gpus, phase=Phase.LAUNCHING,
                           **kw))  # type: ignore[arg-type]
    assert out == []
    if launched:
        out = lc.handle(Launched(run, pid, f"t{pid}"))
        assert out == [Persist(run, (("pid", pid), ("proc_start", f"t{pid}")))]
    return out


# ------------------------------------------------------------------ launch, exit, log

def test_completed_only_once_its_whole_log_is_stored() -> None:
    lc = Lifecycle({"s": StudyRules()})
    start(lc)
    assert lc.handle(LogGrew(1, 10)) == [Ingest(1, 0, False)]
    assert lc.handle(LogGrew(1, 20)) == []  # one Ingest out at a time
    assert lc.handle(LogGrew(1, 20)) == []  # nothing new
    assert lc.handle(Stored(1, 10)) == [Ingest(1, 10, False)]
    assert lc.handle(Exited(1, 0, None, 30)) == []  # an Ingest is out: wait for it
    assert lc.handle(Stored(1, 20)) == [Ingest(1, 20, True)]  # the rest, as the end of the run
    out = lc.handle(Stored(1, 30))
    assert of(out, Record) == [Record(1, RunState.COMPLETED, "all stages exited 0", 0)]
    assert of(out, Tell) == [Tell("s", 1)]
    assert of(out, Release) == []  # its processes are not confirmed gone
    assert [a.id for a in lc.held("h")] == [1]
    assert lc.live() == []
    assert lc.handle(Cleaned(1)) == [Unwatch(1, "h"), Release(1, "h", (0,))]
    assert lc.held("h") == []
    assert lc.handle(Cleaned(1)) == []


# ------------------------------------------------------------------ the circuit breaker

def fail_runs(lc: Lifecycle, runs: range, study: str = "s", status: int = 1) -> list[Action]:
    out: list[Action] = []
    for run in runs:
        start(lc, run=run, trial=run, study=study, pid=100 + run)
        out += lc.handle(Exited(run, status, "main", 0))
    return out


def test_a_study_pauses_once_after_max_failures_runs_failed_in_a_row() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1, max_failures=3)})
    out = fail_runs(lc, range(1, 3))
    assert of(out, PauseStudy) == [] and len(of(out, Retry)) == 2  # its retries are still queued
    out = fail_runs(lc, range(3, 6))
    assert of(out, PauseStudy) == [PauseStudy("s", 3, "3 runs in a row failed")]  # once, not at 4 and 5


def test_a_completed_run_starts_the_count_again_and_a_killed_one_does_not_count() -> None:
    lc = Lifecycle({"s": StudyRules(max_failures=2)})
    fail_runs(lc, range(1, 2))
    start(lc, run=2, trial=2, pid=102)
    lc.handle(Exited(2, 0, "-", 0))
    start(lc, run=3, trial=3, pid=103)
    lc.handle(StopRequested(3, StopIntent.KILL))
    out = lc.handle(Exited(3, 143, "main", 0))
    assert records(out) == [(3, RunState.KILLED)] and of(out, PauseStudy) == []
    assert of(fail_runs(lc, range(4, 5)), PauseStudy) == []  # 1 in a row since the completed one
    assert of(fail_runs(lc, range(5, 6)), PauseStudy) == [PauseStudy("s", 5, "2 runs in a row failed")]


def test_resume_counts_from_zero_and_max_failures_0_never_pauses() -> None:
    lc = Lifecycle({"s": StudyRules(max_failures=2), "t": StudyRules(max_failures=0)})
    assert of(fail_runs(lc, range(1, 3)), PauseStudy) == [PauseStudy("s", 2, "2 runs in a row failed")]
    lc.resumed("s")
    assert of(fail_runs(lc, range(3, 4)), PauseStudy) == []
    assert of(fail_runs(lc, range(4, 5)), PauseStudy) == [PauseStudy("s", 4, "2 runs in a row failed")]
    assert of(fail_runs(lc, range(10, 30), study="t"), PauseStudy) == []


def test_failed_launches_count_and_studies_count_apart() -> None:
    lc = Lifecycle({"s": StudyRules(max_failures=2), "t": StudyRules(max_failures=2)})
    fail_runs(lc, range(1, 2), study="s")
    fail_runs(lc, range(2, 3), study="t")
    start(lc, run=3, trial=3, launched=False)
    out = lc.handle(LaunchFailed(3, "no such file or directory"))
    assert of(out, PauseStudy) == [PauseStudy("s", 3, "2 runs in a row failed")]
    # Its pause goes before the release of the run's slot, in that run's actions.
    assert out.index(of(out, PauseStudy)[0]) < out.index(of(out, Release)[0])


def test_exit_with_nothing_left_to_store_ends_at_once() -> None:
    lc = Lifecycle()
    start(lc)
    assert lc.handle(LogGrew(1, 5)) == [Ingest(1, 0, False)]
    assert lc.handle(Stored(1, 5)) == []  # all of it
    out = lc.handle(Exited(1, 0, None, 5))
    assert records(out) == [(1, RunState.COMPLETED)]


def test_failing_exit_is_failed_with_its_stage() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0)})
    start(lc)
    out = lc.handle(Exited(1, 2, "train", 0))
    assert of(out, Record) == [Record(1, RunState.FAILED, "stage train exited with status 2", 2, "train")]
    assert of(out, Note)[0].level == "warning"
    assert of(out, Tell) == [Tell("s", 1)] and of(out, Retry) == []
    out = Lifecycle().handle(Exited(9, 1, None, 0))
    assert out == []  # not an attempt it knows


def test_final_ingest_stores_an_unterminated_last_line() -> None:
    lc = Lifecycle()
    start(lc)
    assert lc.handle(LogGrew(1, 15)) == [Ingest(1, 0, False)]
    assert lc.handle(Stored(1, 10)) == [Ingest(1, 10, False)]  # 5 bytes of an unterminated line
    assert lc.handle(Stored(1, 10)) == []
    assert lc.handle(Exited(1, 0, None, 15)) == [Ingest(1, 10, True)]  # now the last line counts
    out = lc.handle(Stored(1, 15))
    assert records(out) == [(1, RunState.COMPLETED)]


def test_exit_seen_while_an_ingest_is_out_that_stores_nothing() -> None:
    lc = Lifecycle()
    start(lc)
    assert lc.handle(LogGrew(1, 7)) == [Ingest(1, 0, False)]
    assert lc.handle(Exited(1, 1, None, 7)) == []
    assert lc.handle(Stored(1, 0)) == [Ingest(1, 0, True)]  # no full line: asked again, as final
    assert records(lc.handle(Stored(1, 7))) == [(1, RunState.FAILED)]


def test_log_short_of_the_exit_size_is_stored_as_it_is() -> None:
    lc = Lifecycle()
    start(lc)
    assert lc.handle(Exited(1, 0, None, 50)) == [Ingest(1, 0, True)]
    out = lc.handle(Stored(1, 40))  # progress: maybe a cap
    assert out == [Ingest(1, 40, True)]
    out = lc.handle(Stored(1, 40))  # no more there
    assert of(out, Note)[0].text.endswith("ends at byte 40 of 50")
    assert records(out) == [(1, RunState.COMPLETED)]


def test_a_stale_or_unasked_stored_is_ignored() -> None:
    lc = Lifecycle()
    start(lc)
    assert lc.handle(Stored(1, 99)) == []
    assert lc.handle(StoreFailed(1, "x", 0.0)) == []
    assert lc.handle(LogGrew(1, 10)) == [Ingest(1, 0, False)]


# ------------------------------------------------------------------ kills and timeouts

def test_kill_during_launch_signals_right_after_launched() -> None:
    lc = Lifecycle()
    start(lc, launched=False)
    assert lc.handle(StopRequested(1, StopIntent.KILL, at=5.0)) == \
        [Persist(1, (("stop_intent", "kill"), ("stop_sent", 5.0)))]
    out = lc.handle(Launched(1, 100, "t"))
    assert out == [Persist(1, (("pid", 100), ("proc_start", "t"))), Signal(1, "h")]
    assert lc.handle(StopRequested(1, StopIntent.KILL)) == []  # asked once
    out = lc.handle(Exited(1, None, None, 0))
    assert of(out, Record) == [Record(1, RunState.KILLED, "killed on request", None)]
    assert of(out, Tell) == [Tell("s", 1)]


def test_kill_during_a_launch_that_fails_is_killed_not_retried() -> None:
    lc = Lifecycle({"s": StudyRules(retries=3)})
    start(lc, launched=False)
    lc.handle(StopRequested(1, StopIntent.KILL))
    out = lc.handle(LaunchFailed(1, "no route to host"))
    assert records(out) == [(1, RunState.KILLED)]
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]
    assert of(out, Release) == [Release(1, "h", (0,))]


def test_kill_that_ends_after_a_clean_exit_is_completed() -> None:
    lc = Lifecycle()
    start(lc)
    assert of(lc.handle(StopRequested(1, StopIntent.KILL)), Signal) == [Signal(1, "h")]
    out = lc.handle(Exited(1, 0, None, 0))
    assert of(out, Record) == [Record(1, RunState.COMPLETED, "completed before the kill took effect", 0)]


def test_early_stop_is_stopped() -> None:
    lc = Lifecycle({"s": StudyRules(retries=2)})
    start(lc)
    lc.handle(StopRequested(1, StopIntent.EARLY_STOP))
    out = lc.handle(Exited(1, 143, None, 0))
    assert records(out) == [(1, RunState.STOPPED)] and of(out, Retry) == []
    assert of(out, Note)[0].level == "info"


def test_timeout_via_tick() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1, timeout_text="10m")})
    start(lc, deadline=600.0)
    assert lc.handle(Tick(599.0)) == []
    out = lc.handle(Tick(600.0))
    assert out == [Persist(1, (("stop_intent", "timeout"), ("stop_sent", 600.0))), Signal(1, "h")]
    assert lc.handle(Tick(700.0)) == []  # signalled once
    out = lc.handle(Exited(1, 143, None, 0))
    assert of(out, Record) == [Record(1, RunState.FAILED, "timeout after 10m", 143)]
    assert of(out, Retry) == [Retry("s", 1, "retry 1 of 1 after a failed attempt")]
    assert of(out, Tell) == []


def test_a_silent_run_is_ended_as_hung_after_its_keepalive() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1, timeout_text="1h", keepalive=300.0)})
    start(lc, deadline=3600.0)
    assert lc.handle(Tick(10.0)) == []  # the window opens at the first tick that sees it running
    lc.handle(LogGrew(1, 5))
    lc.handle(Stored(1, 5))
    assert lc.handle(Tick(200.0)) == []  # output since the last tick: the window opens again
    assert lc.handle(Tick(499.0)) == []
    out = lc.handle(Tick(500.0))
    assert out == [Persist(1, (("stop_intent", "keepalive"), ("stop_sent", 500.0),
                               ("stop_reason", "no output for 5m (keepalive)"))), Signal(1, "h")]
    assert lc.handle(Tick(900.0)) == []  # signalled once
    out = lc.handle(Exited(1, 143, None, 5))
    assert of(out, Record) == [Record(1, RunState.FAILED, "no output for 5m (keepalive)", 143)]
    assert of(out, Retry) == [Retry("s", 1, "retry 1 of 1 after a failed attempt")]  # as any failure


def test_a_run_that_prints_is_not_hung() -> None:
    lc = Lifecycle({"s": StudyRules(keepalive=60.0)})
    start(lc)
    for t in range(0, 600, 30):
        lc.handle(LogGrew(1, t + 1))
        lc.handle(Stored(1, t + 1))
        assert of(lc.handle(Tick(float(t))), Signal) == []


def test_a_run_may_widen_its_own_keepalive() -> None:
    lc = Lifecycle({"s": StudyRules(keepalive=60.0)})
    start(lc)
    lc.handle(Tick(0.0))
    asked = lc.handle(KeepaliveAsked(1, 1200.0))
    assert of(asked, Note)[0].text == "s-1: keepalive window set to 20m by the run"
    assert of(asked, Persist) == [Persist(1, (("keepalive", 1200.0),))]  # a restarted daemon keeps it
    assert lc.handle(Tick(1199.0)) == []
    out = lc.handle(Tick(1200.0))
    assert of(out, Signal) == [Signal(1, "h")]
    out = lc.handle(Exited(1, None, None, 0))
    assert of(out, Record) == [Record(1, RunState.FAILED, "no output for 20m (keepalive)", None)]


def test_keepalive_completed_before_the_signal_is_completed() -> None:
    lc = Lifecycle({"s": StudyRules(keepalive=10.0)})
    start(lc)
    lc.handle(Tick(0.0))
    assert of(lc.handle(Tick(10.0)), Signal)
    out = lc.handle(Exited(1, 0, None, 0))
    assert of(out, Record) == [Record(1, RunState.COMPLETED, "all stages exited 0", 0)]


def test_no_keepalive_while_its_host_is_away_or_before_it_started() -> None:
    lc = Lifecycle({"s": StudyRules(keepalive=10.0)}, {"h": 1000.0})
    start(lc, launched=False)
    assert lc.handle(Tick(0.0)) == [] and lc.handle(Tick(50.0)) == []  # launching: not yet
    lc.handle(Launched(1, 100, "t100"))
    lc.handle(Tick(51.0))
    lc.handle(HostDown("h", "connection lost", 52.0))
    assert lc.handle(Tick(100.0)) == [] and lc.handle(Tick(500.0)) == []  # its output cannot reach us
    lc.handle(HostUp("h"))
    assert lc.handle(Tick(505.0)) == []  # the window opens again once it is back
    assert of(lc.handle(Tick(515.0)), Signal) == [Signal(1, "h")]


def test_keepalive_stop_after_a_restart_reads_as_hung() -> None:
    """A restarted daemon knows the intent (stored) but not the window's text."""
    lc = Lifecycle({"s": StudyRules(retries=0, keepalive=10.0)})
    lc.adopt(Attempt(1, "s-1", "s", 1, "h", (0,), Phase.RUNNING, pid=5, start="t5",
                     stop_intent=StopIntent.KEEPALIVE))
    out = lc.handle(Exited(1, 143, None, 0))
    assert of(out, Record) == [Record(1, RunState.FAILED, "no output (keepalive)", 143)]


def test_no_timeout_before_the_run_started() -> None:
    lc = Lifecycle()
    start(lc, launched=False, deadline=10.0)
    assert lc.handle(Tick(20.0)) == []


# ------------------------------------------------------------------ the store

def test_store_failure_then_recovery() -> None:
    lc = Lifecycle()
    start(lc)
    ingests: list[Ingest] = []
    notes: list[Note] = []

    def feed(e: object) -> list[Action]:
        out = lc.handle(e)  # type: ignore[arg-type]
        ingests.extend(of(out, Ingest))
        notes.extend(of(out, Note))
        return out

    feed(LogGrew(1, 10))
    assert feed(StoreFailed(1, "database is locked", at=5.0)) == [
        Note("warning", "s-1: cannot store reports now (database is locked); trying again from the last stored byte")]
    assert feed(LogGrew(1, 20)) == []  # no Ingest until the retry is due
    assert feed(Tick(5.0 + STORE_RETRY / 2)) == []
    assert feed(Tick(5.0 + STORE_RETRY)) == [Ingest(1, 0, False)]  # from the last stored byte
    assert feed(StoreFailed(1, "database is locked", at=6.0)) == []  # still the same trouble: no new warning
    assert feed(Exited(1, 0, None, 25)) == []
    assert feed(Tick(6.0 + STORE_RETRY)) == [Ingest(1, 0, True)]
    out = feed(Stored(1, 25))
    assert out[0] == Note("info", "s-1: the store takes reports again")
    assert records(out) == [(1, RunState.COMPLETED)]
    assert [i.offset for i in ingests] == [0, 0, 0]  # nothing was stored until the last one
    assert [n.level for n in notes] == ["warning", "info", "info"]  # trouble, recovery, completed


def test_store_recovery_goes_on_from_what_was_stored() -> None:
    lc = Lifecycle()
    start(lc)
    lc.handle(LogGrew(1, 10))
    assert lc.handle(Stored(1, 10)) == []
    assert lc.handle(LogGrew(1, 30)) == [Ingest(1, 10, False)]
    assert lc.handle(StoreFailed(1, "disk full", at=1.0))[0].level == "warning"  # type: ignore[union-attr]
    assert lc.handle(Tick(2.0)) == [Ingest(1, 10, False)]
    assert lc.handle(Stored(1, 20)) == [Note("info", "s-1: the store takes reports again"), Ingest(1, 20, False)]
    assert lc.handle(Stored(1, 30)) == []  # recovered once
    # A second trouble later is warned about again.
    assert lc.handle(LogGrew(1, 40)) == [Ingest(1, 30, False)]
    assert lc.handle(StoreFailed(1, "disk full", at=3.0))[0].level == "warning"  # type: ignore[union-attr]


# ------------------------------------------------------------------ failures and retries

def test_launch_failed_is_failed_and_retried_within_the_budget() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)})
    start(lc, launched=False)
    out = lc.handle(LaunchFailed(1, "no route to host"))
    assert of(out, Record) == [Record(1, RunState.FAILED, "launch failed: no route to host", None)]
    assert of(out, Retry) == [Retry("s", 1, "retry 1 of 1 after a failed attempt")]
    assert of(out, Tell) == []
    assert of(out, Release) == [Release(1, "h", (0,))]  # nothing started: nothing to wait for
    assert lc.held("h") == []
    start(lc, run=2, launched=False)
    out = lc.handle(LaunchFailed(2, "no route to host"))
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]  # the budget is spent


def test_a_launch_that_never_reached_its_host_is_pending_again_not_failed() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0)})
    start(lc, launched=False)
    out = lc.handle(LaunchFailed(1, "host h is down: connection lost", reached_host=False))
    assert out == [Requeue(1, "back to pending: host h is down: connection lost"), Release(1, "h", (0,))]
    assert lc.held("h") == [] and lc.book("s", 1).live == {1}  # still the trial's attempt
    start_again = lc.adopt(Attempt(1, "s-1", "s", 1, "h", (1,), phase=Phase.LAUNCHING))
    assert start_again == []
    assert lc.handle(Launched(1, 7, "t7")) == [Persist(1, (("pid", 7), ("proc_start", "t7")))]


def test_failure_of_an_attempt_beside_a_pending_one_waits_for_it() -> None:
    lc = Lifecycle({"s": StudyRules(retries=5)})
    lc.queued("s", 1, 2)  # another pending attempt of the same trial
    start(lc)
    out = lc.handle(Exited(1, 1, None, 0))
    assert of(out, Retry) == [] and of(out, Tell) == []
    assert lc.dropped("s", 1, 2, RunState.KILLED) == [Tell("s", 1)]


def test_replicates_are_retried_each_and_their_trial_told_once_the_last_ends() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)})
    for run, replicate in ((1, 1), (2, 2)):
        lc.queued("s", 1, run, replicate=replicate)
        lc.adopt(Attempt(run, f"s-{run}", "s", 1, "h", (run,), replicate=replicate))
        lc.handle(Launched(run, run * 10, "t"))
    out = lc.handle(Exited(1, 1, None, 0))  # replicate 1 fails: its own retry, no tell
    assert of(out, Retry) == [Retry("s", 1, "retry 1 of 1 after a failed attempt", 1)] and of(out, Tell) == []
    out = lc.handle(Exited(2, 0, None, 0))  # replicate 2 completes while the retry is not queued yet
    assert of(out, Tell) == []
    lc.queued("s", 1, 3, replicate=1)
    lc.adopt(Attempt(3, "s-3", "s", 1, "h", (1,), replicate=1))
    lc.handle(Launched(3, 30, "t"))
    out = lc.handle(Exited(3, 1, None, 0))  # its budget is spent: the trial is told, once
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]


# ------------------------------------------------------------------ hosts that go away

def lost(lc: Lifecycle, run: int = 1) -> list[Action]:
    assert lc.handle(HostDown("h", "connection reset", at=10.0)) == []
    assert lc.handle(Tick(69.0)) == []
    return lc.handle(Tick(70.0))


def test_lost_after_lost_after() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    out = lost(lc)
    assert of(out, Record) == [Record(1, RunState.LOST, "host h unreachable for 60s")]
    assert of(out, Retry) == [Retry("s", 1, "retry 1 of 1 after a lost attempt")]
    assert lc.handle(Tick(200.0)) == []  # lost once
    # Its processes may still be there: its GPU stays held until they are known gone.
    assert [a.id for a in lc.held("h")] == [1]
    assert [a.id for a in lc.live()] == [1]


def test_lost_without_budget_tells_the_search() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0)}, lost_after={"h": 60.0})
    start(lc)
    out = lost(lc)
    assert records(out) == [(1, RunState.LOST)] and of(out, Tell) == [Tell("s", 1)]


def test_host_back_within_the_grace_its_run_goes_on() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    lc.handle(LogGrew(1, 10))
    lc.handle(Stored(1, 10))  # -> Ingest(1, 10) out
    assert lc.handle(HostDown("h", "timeout", at=10.0)) == []
    assert lc.handle(Tick(40.0)) == []
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 10, 100, "t100")]
    assert lc.handle(Alive(1, 100, "t100")) == []
    assert lc.handle(Tick(1000.0)) == []  # back: not lost
    lc.handle(Stored(1, 10))
    out = lc.handle(Exited(1, 0, None, 10))
    assert of(out, Record) == [Record(1, RunState.COMPLETED, "all stages exited 0", 0)]
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]


def test_host_down_then_up_within_the_grace_records_the_real_exit() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0), "t": StudyRules(retries=2)}, lost_after={"h": 60.0})
    start(lc)
    start(lc, run=2, trial=2, study="t", gpus=(1,), pid=200)
    lc.handle(HostDown("h", "timeout", at=10.0))
    assert lc.handle(Tick(50.0)) == []
    out = lc.handle(HostUp("h"))
    assert out == [Watch(1, "h", 0, 100, "t100"), Watch(2, "h", 0, 200, "t200")]
    # Both ended while it was away: the host tells how.
    out = lc.handle(Exited(1, 3, None, 0)) + lc.handle(Exited(2, 0, None, 0)) + lc.handle(Tick(500.0))
    assert of(out, Record) == [Record(1, RunState.FAILED, "exited with status 3", 3),
                               Record(2, RunState.COMPLETED, "all stages exited 0", 0)]
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1), Tell("t", 2)]


def test_lost_run_back_alive_while_its_retry_is_pending_is_stopped() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    lost(lc)
    lc.queued("s", 1, 2)  # the shell's answer to the Retry
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 0, 100, "t100")]
    out = lc.handle(Alive(1, 100, "t100"))
    assert out == [Persist(1, (("stop_intent", "kill"), ("stop_sent", 0.0),
                               ("stop_reason", "ended: its trial was retried while its host was away"))),
                   Signal(1, "h")]
    assert [a.id for a in lc.held("h")] == [1]
    out = lc.handle(Exited(1, None, None, 0))
    [rec] = of(out, Record)
    assert rec.state is RunState.KILLED and "retried while its host was away" in rec.reason
    assert rec.reason.count("while its host was away") == 1
    assert of(out, Tell) == [] and of(out, Retry) == []  # the retry settles the trial
    assert lc.handle(Cleaned(1)) == [Unwatch(1, "h"), Release(1, "h", (0,))]


def test_lost_run_back_having_completed_supersedes_the_retry() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    lost(lc)
    lc.queued("s", 1, 2)
    lc.handle(HostUp("h"))
    out = lc.handle(Exited(1, 0, None, 0))
    [rec] = of(out, Record)
    assert rec.state is RunState.COMPLETED and "while its host was away" in rec.reason
    assert of(out, Supersede) == [Supersede("s", 1, 1, "superseded: s-1 completed after its host came back")]
    assert of(out, Tell) == []
    assert lc.dropped("s", 1, 2, RunState.KILLED) == [Tell("s", 1)]  # the shell drops the pending retry


def test_lost_run_back_having_completed_after_its_retry_failed_out() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    lost(lc)
    start(lc, run=2, host="g")
    assert of(lc.handle(Exited(2, 1, None, 0)), Tell) == [Tell("s", 1)]
    lc.handle(HostUp("h"))
    out = lc.handle(Exited(1, 0, None, 0))
    assert records(out) == [(1, RunState.COMPLETED)] and of(out, Tell) == [Tell("s", 1)]


def test_lost_run_back_alive_with_nothing_else_for_its_trial_is_adopted() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0)}, lost_after={"h": 60.0})
    start(lc)
    assert of(lost(lc), Tell) == [Tell("s", 1)]
    lc.handle(HostUp("h"))
    out = lc.handle(Alive(1, 100, "t100"))
    assert out == [Record(1, RunState.RUNNING, "host h is back; run adopted")]
    assert records(lc.handle(Exited(1, 0, None, 0))) == [(1, RunState.COMPLETED)]


def test_killed_run_whose_host_is_lost_is_not_retried() -> None:
    lc = Lifecycle({"s": StudyRules(retries=2)}, lost_after={"h": 60.0})
    start(lc)
    lc.handle(HostDown("h", "timeout", at=10.0))
    assert lc.handle(StopRequested(1, StopIntent.KILL, at=11.0)) == \
        [Persist(1, (("stop_intent", "kill"), ("stop_sent", 11.0)))]  # no Signal: the host is away
    out = lc.handle(Tick(70.0))
    assert records(out) == [(1, RunState.LOST)]
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 0, 100, "t100"), Signal(1, "h")]
    assert records(lc.handle(Exited(1, None, None, 0))) == [(1, RunState.KILLED)]


def test_exited_run_is_not_lost_while_its_log_waits_for_the_store() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc)
    assert lc.handle(Exited(1, 0, None, 10)) == [Ingest(1, 0, True)]
    lc.handle(StoreFailed(1, "locked", at=1.0))
    lc.handle(HostDown("h", "timeout", at=2.0))
    out = lc.handle(Tick(100.0))  # the store retry is due; the host is long gone
    assert out == [Ingest(1, 0, True)]
    out = lc.handle(Stored(1, 10))
    assert records(out) == [(1, RunState.COMPLETED)] and of(out, Retry) == []


def test_lost_while_launching_then_launched_is_as_if_seen_alive() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc, launched=False)
    lost(lc)
    lc.queued("s", 1, 2)
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 0, None, None)]
    out = lc.handle(Launched(1, 100, "t"))  # its launch got there after all
    assert out == [Persist(1, (("pid", 100), ("proc_start", "t"))),
                   Persist(1, (("stop_intent", "kill"), ("stop_sent", 0.0),
                               ("stop_reason", "ended: its trial was retried while its host was away"))),
                   Signal(1, "h")]
    # With nothing else for its trial, it is adopted back.
    lc = Lifecycle({"s": StudyRules(retries=0)}, lost_after={"h": 60.0})
    start(lc, launched=False)
    lost(lc)
    lc.handle(HostUp("h"))
    assert records(lc.handle(Launched(1, 100, "t"))) == [(1, RunState.RUNNING)]


def test_lost_while_launching_then_launch_failed_ends_it() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    start(lc, launched=False)
    assert of(lost(lc), Retry) == [Retry("s", 1, "retry 1 of 1 after a lost attempt")]
    out = lc.handle(LaunchFailed(1, "connection lost"))
    assert of(out, Record) == [Record(1, RunState.FAILED, "launch failed: connection lost")]
    assert of(out, Retry) == [] and of(out, Tell) == []  # its trial was dealt with when it was lost
    assert of(out, Release) == [Release(1, "h", (0,))]


def test_no_signal_without_a_pid() -> None:
    lc = Lifecycle(lost_after={"h": 60.0})
    # Adopted at start while its launch was under way: no pid yet.
    assert lc.adopt(Attempt(1, "s-1", "s", 1, "h", (0,), phase=Phase.RUNNING)) == [Watch(1, "h", 0, None, None)]
    assert of(lc.handle(StopRequested(1, StopIntent.KILL)), Signal) == []
    lc.handle(HostDown("h", "timeout", at=0.0))
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 0, None, None)]
    assert lc.handle(Alive(1, 100, "t")) == [Persist(1, (("pid", 100), ("proc_start", "t"))), Signal(1, "h")]


def test_signal_waits_for_the_host() -> None:
    lc = Lifecycle(lost_after={"h": 60.0})
    start(lc)
    lc.handle(HostDown("h", "timeout", at=1.0))
    assert of(lc.handle(StopRequested(1, StopIntent.KILL)), Signal) == []
    assert lc.handle(HostUp("h")) == [Watch(1, "h", 0, 100, "t100"), Signal(1, "h")]
    assert lc.handle(Alive(1, 100, "t100")) == [Signal(1, "h")]


# ------------------------------------------------------------------ processes gone

def test_cleaned_before_the_record_releases_once_after_both() -> None:
    lc = Lifecycle()
    start(lc)
    lc.handle(LogGrew(1, 10))
    assert lc.handle(Exited(1, 0, None, 10)) == []  # the Ingest is out
    assert lc.handle(Cleaned(1)) == []  # gone, but not recorded yet
    assert [a.id for a in lc.held("h")] == [1]
    out = lc.handle(Stored(1, 10))
    assert records(out) == [(1, RunState.COMPLETED)]
    assert of(out, Release) == [Release(1, "h", (0,))]
    assert lc.handle(Cleaned(1)) == [] and lc.held("h") == []


def test_cleaned_after_the_record_releases_once() -> None:
    lc = Lifecycle()
    start(lc, gpus=(2, 3))
    out = lc.handle(Exited(1, 0, None, 0))
    assert of(out, Release) == []
    assert lc.handle(Cleaned(1)) == [Unwatch(1, "h"), Release(1, "h", (2, 3))]
    assert lc.handle(Cleaned(1)) == []


def test_leftover_processes_are_warned_about() -> None:
    lc = Lifecycle()
    start(lc)
    lc.handle(Exited(1, 0, None, 0))
    out = lc.handle(Cleaned(1, (123, 124)))
    assert out[0] == Note("warning", "s-1: ended 2 process(es) it left behind (pids 123, 124)")
    assert of(out, Release) == [Release(1, "h", (0,))]


# ------------------------------------------------------------------ a restart

def test_restart_adopts_running_lost_and_ended_runs() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)}, lost_after={"h": 60.0})
    running = Attempt(1, "s-1", "s", 1, "h", (0,), phase=Phase.RUNNING, pid=100, start="t", stored=10, log_size=12)
    assert lc.adopt(running) == [Watch(1, "h", 12, 100, "t")]
    # A lost attempt whose retry (3) is pending: the retry tells.
    lc.queued("s", 2, 3)
    assert lc.adopt(Attempt(2, "s-2", "s", 2, "h", (1,), phase=Phase.LOST, pid=200, start="u")) == \
        [Watch(2, "h", 0, 200, "u")]
    # Ended, its processes not confirmed gone.
    lc.adopt(Attempt(4, "s-4", "s", 4, "h", (2,), phase=Phase.ENDED, pid=400))
    assert sorted(a.id for a in lc.held("h")) == [1, 2, 4]
    assert sorted(a.id for a in lc.live()) == [1, 2]
    assert lc.dropped("s", 2, 3, RunState.KILLED) == [Tell("s", 2)]
    assert lc.handle(Cleaned(4)) == [Unwatch(4, "h"), Release(4, "h", (2,))]
    # The running one reads on from its stored offset.
    lc.handle(Exited(1, 0, None, 12))
    assert records(lc.handle(Stored(1, 12))) == [(1, RunState.COMPLETED)]


def test_restart_keeps_the_retry_budget_and_a_settled_trial() -> None:
    lc = Lifecycle({"s": StudyRules(retries=2)})
    a = Attempt(2, "s-2", "s", 1, "h", (0,), phase=Phase.RUNNING, pid=1)
    lc.adopt(a, failures=2)  # two earlier attempts of its trial failed
    out = lc.handle(Exited(2, 1, None, 0))
    assert of(out, Retry) == [] and of(out, Tell) == [Tell("s", 1)]
    lc = Lifecycle({"s": StudyRules(retries=2)})
    lc.adopt(Attempt(3, "s-3", "s", 5, "h", (0,), phase=Phase.RUNNING, pid=1,
                     stop_intent=StopIntent.TIMEOUT), settled=True)  # another attempt completed
    out = lc.handle(Exited(3, 143, None, 0))
    assert records(out) == [(3, RunState.FAILED)] and of(out, Retry) == [] and of(out, Tell) == [Tell("s", 5)]


# ================================================================== random histories
#
# A simulated world: two hosts with two GPUs each, runs whose logs grow in chunks (some
# lines left unterminated), exits with random status, processes left behind, a store that
# fails for a while, hosts that drop and come back, kills, early stops, timeouts, ticks,
# and restarts of the daemon (a fresh core rebuilt from what the store holds). The shell
# is modelled as the daemon drives the core; its checks and the invariants below are the
# promises of hypd/lifecycle.py.

HOSTS = ("h0", "h1")
GPU_INDEXES = (0, 1)
MAX_PER_GPU = {"h0": 1, "h1": 2}
RULES = {"a": StudyRules(retries=1, timeout_text="1m"), "b": StudyRules(retries=2, keepalive=45.0),
         "c": StudyRules(retries=0)}
TIMEOUT = {"a": 150.0, "b": None, "c": 60.0}
REPLICATES = {"a": 1, "b": 2, "c": 1}  # b's trials run twice (its replicates have their own retries)
LOST_AFTER = {h: 30.0 for h in HOSTS}
MAX_TRIALS = 7
MIB_PER_RUN = 2000


@dataclass
class Run:
    """One attempt: what the store holds of it, and what its host really does."""

    id: int
    study: str
    trial: int
    replicate: int = 1
    # -- the store (survives a restart)
    state: RunState = RunState.PENDING
    host: str = ""
    gpus: tuple[int, ...] = ()
    stored: int = 0
    pid: int | None = None
    start: str | None = None
    stop_intent: StopIntent | None = None
    deadline: float | None = None
    released: bool = False
    failures: int = 0  # FAILED or LOST records it had
    grew_at: float = 0.0  # when its log here last grew (or it was placed)
    # -- the world
    launch: str = ""  # "" (not launched) | "pending" | "started" | "failed"
    alive: bool = False
    procs: bool = False  # a process of it exists (its main one, or ones it left behind)
    leftovers: tuple[int, ...] = ()
    remote: bytes = b""  # its log as written on its host
    local: bytes = b""  # its log here
    exit: tuple[int | None, str | None] | None = None
    exit_size: int = 0
    signaled: bool = False
    # -- the host's watch of it (lost when the connection or the daemon goes)
    watched: bool = False
    alive_due: bool = False
    exit_reported: bool = False
    clean_reported: bool = False
    clean_seen: bool = False  # the core now running was told its processes are gone
    exit_seen: bool = False  # the core now running was told it exited

    @property
    def name(self) -> str:
        return f"{self.study}-{self.id}"


def read_end(data: bytes, offset: int, final: bool, cap: int | None) -> int:
    """The offset a read of `data` from `offset` stores up to: complete lines (all of
    it when final), at most about `cap` bytes of them."""
    rest = data[offset:]
    if cap is not None and len(rest) > cap:
        cut = rest.rfind(b"\n", 0, cap)
        if cut < 0:
            cut = rest.find(b"\n")
        if cut >= 0:
            return offset + cut + 1
    if final:
        return len(data)
    return offset + rest.rfind(b"\n") + 1


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Lifecycle(RULES, LOST_AFTER)
        self.now = 0.0
        self.runs: dict[int, Run] = {}
        self.next_run = 1
        self.next_trial = 1
        self.retries: Counter[tuple[str, int, int]] = Counter()  # per replicate of a trial
        self.told: set[tuple[str, int]] = set()
        self.last_end: dict[tuple[str, int, int], Run] = {}  # the attempt of each replicate recorded ended last
        self.up = {h: True for h in HOSTS}
        self.store_down = False
        self.ingests: dict[int, Ingest] = {}  # out, not yet answered
        self.readings = {h: self._reading(h) for h in HOSTS}
        self.released: dict[str, list[Released]] = {h: [] for h in HOSTS}
        self.notes: list[Note] = []

    # ------------------------------------------------------------------ the shell

    def carry(self, actions: list[Action]) -> None:
        for action in actions:
            self.carry_one(action)

    def trial_runs(self, study: str, trial: int, replicate: int | None = None) -> list[Run]:
        return [r for r in self.runs.values() if (r.study, r.trial) == (study, trial)
                and replicate in (None, r.replicate)]

    def carry_one(self, a: Action) -> None:
        if isinstance(a, Ingest):
            run = self.runs[a.run]
            assert a.run not in self.ingests, f"two Ingests out for {run.name}"
            assert a.offset == run.stored, f"{run.name}: ingest from {a.offset}, stored {run.stored}"
            self.ingests[a.run] = a
        elif isinstance(a, Persist):
            run = self.runs[a.run]
            for key, value in a.fields:
                if key == "pid":
                    run.pid = value  # type: ignore[assignment]
                elif key == "proc_start":
                    run.start = value  # type: ignore[assignment]
                elif key == "stop_intent":
                    run.stop_intent = StopIntent(value)
                    if run.stop_intent is StopIntent.KEEPALIVE:  # never before its window of silence
                        window = RULES[run.study].keepalive
                        assert window is not None and self.now - run.grew_at >= window, \
                            f"{run.name} ended as hung {self.now - run.grew_at}s after its log grew"
        elif isinstance(a, Signal):
            run = self.runs[a.run]
            assert run.pid is not None, f"{run.name} signalled before its pid is known"
            if self.up[run.host] and run.alive:
                run.signaled = True
        elif isinstance(a, Watch):
            run = self.runs[a.run]
            if self.up[run.host]:
                run.watched, run.alive_due = True, run.alive
                run.exit_reported = run.clean_reported = False
        elif isinstance(a, Unwatch):
            self.runs[a.run].watched = False
        elif isinstance(a, Record):
            run = self.runs[a.run]
            check_transition(run.state, a.state)  # one terminal record; LOST only from running
            assert not (a.state is RunState.LOST and run.exit_seen), f"{run.name} lost after its exit was seen"
            if a.state in TERMINAL:
                assert run.exit is not None, f"{run.name} recorded {a.state} while it runs"
                assert run.stored >= run.exit_size, f"{run.name} ended with its log stored to {run.stored} of {run.exit_size}"
            if a.state in (RunState.FAILED, RunState.LOST):
                run.failures += 1
            if a.state is not RunState.RUNNING:
                self.last_end[(run.study, run.trial, run.replicate)] = run
            run.state = a.state
        elif isinstance(a, Retry):
            others = self.trial_runs(a.study, a.trial, a.replicate)
            assert not any(r.state in (RunState.PENDING, RunState.RUNNING) for r in others), a
            assert not any(r.state is RunState.COMPLETED for r in others), f"retry of a completed replicate: {a}"
            key = (a.study, a.trial, a.replicate)
            self.retries[key] += 1
            assert self.retries[key] <= RULES[a.study].retries, f"over the budget: {a}"
            cause = self.last_end[key]  # the attempt whose end the Retry answers
            assert cause.state in (RunState.FAILED, RunState.LOST), f"{a} after {cause.name} {cause.state}"
            assert cause.stop_intent not in (StopIntent.KILL, StopIntent.EARLY_STOP), \
                f"{a} after {cause.name} was asked to end ({cause.stop_intent})"
            run = self.new_run(a.study, a.trial, a.replicate)
            self.core.queued(a.study, a.trial, run.id, replicate=a.replicate)
        elif isinstance(a, Supersede):
            assert self.runs[a.keep].state is RunState.COMPLETED and self.runs[a.keep].replicate == a.replicate
            for run in self.trial_runs(a.study, a.trial, a.replicate):
                if run.state is RunState.PENDING:
                    run.state, run.released = RunState.KILLED, True  # it held nothing
                    self.carry(self.core.dropped(run.study, run.trial, run.id, RunState.KILLED, run.replicate))
                elif run.state is RunState.RUNNING and run.id != a.keep:
                    self.carry(self.core.handle(StopRequested(run.id, StopIntent.KILL, a.reason, self.now)))
        elif isinstance(a, Tell):
            live = [r.name for r in self.trial_runs(a.study, a.trial)
                    if r.state in (RunState.PENDING, RunState.RUNNING)]
            assert not live, f"told {a} while {live} are live"
            self.told.add((a.study, a.trial))
        elif isinstance(a, Release):
            run = self.runs[a.run]
            assert not run.released, f"{run.name} released twice"
            assert run.state in TERMINAL, f"{run.name} released while {run.state}"
            assert not run.procs, f"{run.name} released while its processes are there"
            assert run.clean_seen or run.launch == "failed", f"{run.name} released before it was Cleaned"
            assert (a.host, a.gpus) == (run.host, run.gpus)
            run.released = True
            self.released[run.host] += [Released(g, self.now, MIB_PER_RUN) for g in run.gpus]
        elif isinstance(a, Note):
            assert a.level in ("info", "warning", "error")
            self.notes.append(a)
        else:
            raise AssertionError(f"unknown action {a!r}")

    def new_run(self, study: str, trial: int, replicate: int = 1) -> Run:
        run = Run(self.next_run, study, trial, replicate)
        self.next_run += 1
        self.runs[run.id] = run
        return run

    def _reading(self, host: str) -> GpuSnapshot:
        here = [r for r in getattr(self, "runs", {}).values() if r.host == host and r.procs]
        return GpuSnapshot(tuple(GpuReading(g, f"GPU-{g}", "H100", 80_000,
                                            MIB_PER_RUN * sum(g in r.gpus for r in here), 0)
                                 for g in GPU_INDEXES), "nvml", self.now)

    def can(self, rule: str) -> list[Run]:
        """The runs a rule of the world may act on now."""
        test = {
            "resolve_launch": lambda r: r.launch == "pending",
            "write": lambda r: r.alive,
            "sync_log": lambda r: self.reachable(r) and len(r.local) < len(r.remote),
            "exit": lambda r: r.alive,
            "signal_takes_effect": lambda r: r.alive and r.signaled,
            "report_exit": lambda r: self.reachable(r) and r.exit is not None and not r.exit_reported,
            "clean": lambda r: self.reachable(r) and r.exit is not None and (r.procs or not r.clean_reported),
            "answer_watch": lambda r: self.reachable(r) and r.alive_due,
            "stop": lambda r: r.state in (RunState.PENDING, RunState.RUNNING, RunState.LOST),
        }[rule]
        return [r for r in self.runs.values() if test(r)]

    def pick(self, runs: list[Run], i: int) -> Run | None:
        return runs[i % len(runs)] if runs else None

    # ------------------------------------------------------------------ placing and launching

    @rule(host=st.sampled_from(HOSTS), study=st.sampled_from(sorted(RULES)), new=st.booleans(),
          i=st.integers(0, 50), at_once=st.booleans())
    def place(self, host: str, study: str, new: bool, i: int, at_once: bool) -> None:
        if not self.up[host]:
            return
        rules = HostRules(host, max_per_gpu=MAX_PER_GPU[host])
        slots = free_gpu_slots(rules, self.readings[host], [Holding(a.gpus) for a in self.core.held(host)],
                               self.released[host])
        if not slots:
            return
        pending = [r for r in self.runs.values() if r.state is RunState.PENDING]
        if new or not pending:
            if self.next_trial > MAX_TRIALS:
                return
            # Every replicate of a new trial is queued at once (as the store adds them).
            replicates = [self.new_run(study, self.next_trial, r) for r in range(1, REPLICATES[study] + 1)]
            self.next_trial += 1
            for r in replicates:
                self.core.queued(r.study, r.trial, r.id, replicate=r.replicate)
            run = replicates[0]
        else:
            run = pending[i % len(pending)]
        run.state, run.host, run.gpus, run.launch = RunState.RUNNING, host, (slots[i % len(slots)],), "pending"
        run.grew_at = self.now
        timeout = TIMEOUT[run.study]
        run.deadline = self.now + timeout if timeout else None
        self.carry(self.core.adopt(Attempt(run.id, run.name, run.study, run.trial, run.host, run.gpus,
                                           phase=Phase.LAUNCHING, deadline=run.deadline, replicate=run.replicate)))
        if at_once:  # the host says at once that it started
            self.resolve_launch(self.can("resolve_launch").index(run), True)

    @precondition(lambda self: bool(self.can("resolve_launch")))
    @rule(i=st.integers(0, 50), ok=st.sampled_from([True, True, True, False]))
    def resolve_launch(self, i: int, ok: bool) -> None:
        run = self.pick(self.can("resolve_launch"), i)
        if run is None:
            return
        if ok and self.up[run.host]:
            self.start_process(run)
            run.watched = True
            self.carry(self.core.handle(Launched(run.id, run.id * 10, f"t{run.id}")))
        else:
            self.fail_launch(run)
            self.carry(self.core.handle(LaunchFailed(run.id, "connection refused")))

    def start_process(self, run: Run) -> None:
        run.launch, run.alive, run.procs = "started", True, True

    def fail_launch(self, run: Run) -> None:
        run.launch, run.exit, run.exit_size = "failed", (None, None), 0

    # ------------------------------------------------------------------ runs

    @precondition(lambda self: bool(self.can("write")))
    @rule(i=st.integers(0, 50), chunk=st.sampled_from([b"loss=1\n", b"abc", b"\n", b"x=2\ny=", b"lr=0.1\n" * 3]),
          sync=st.booleans())
    def write(self, i: int, chunk: bytes, sync: bool) -> None:
        run = self.pick(self.can("write"), i)
        if run is not None:
            run.remote += chunk
            if sync and self.reachable(run):  # reaches this machine at once
                run.local, run.grew_at = run.remote, self.now
                self.carry(self.core.handle(LogGrew(run.id, len(run.local))))

    @precondition(lambda self: bool(self.can("sync_log")))
    @rule(i=st.integers(0, 50))
    def sync_log(self, i: int) -> None:
        run = self.pick(self.can("sync_log"), i)
        if run is not None:
            run.local, run.grew_at = run.remote, self.now
            self.carry(self.core.handle(LogGrew(run.id, len(run.local))))

    def reachable(self, run: Run) -> bool:
        return run.watched and self.up[run.host]

    @precondition(lambda self: bool(self.can("exit")))
    @rule(i=st.integers(0, 50), status=st.sampled_from([0, 0, 1, 2, 137, None]), stage=st.sampled_from([None, "train"]),
          leftovers=st.booleans(), dice=st.integers(0, 1))
    def exit(self, i: int, status: int | None, stage: str | None, leftovers: bool, dice: int) -> None:
        run = self.pick(self.can("exit"), i)
        if run is not None and dice == 0:
            self.end_process(run, status, stage, leftovers)

    def end_process(self, run: Run, status: int | None, stage: str | None, leftovers: bool) -> None:
        run.alive = False
        run.exit, run.exit_size = (status, stage), len(run.remote)
        run.leftovers = (run.id * 10 + 1,) if leftovers else ()

    @precondition(lambda self: bool(self.can("signal_takes_effect")))
    @rule(i=st.integers(0, 50), status=st.sampled_from([None, 143, 0]))
    def signal_takes_effect(self, i: int, status: int | None) -> None:
        run = self.pick(self.can("signal_takes_effect"), i)
        if run is not None:
            self.end_process(run, status, None, False)

    @precondition(lambda self: bool(self.can("report_exit")))
    @rule(i=st.integers(0, 50))
    def report_exit(self, i: int) -> None:
        run = self.pick(self.can("report_exit"), i)
        if run is not None:
            run.local, run.exit_reported = run.remote, True  # the host sends the rest of the log first
            run.exit_seen = True
            status, stage = run.exit
            self.carry(self.core.handle(Exited(run.id, status, stage, len(run.local))))

    @precondition(lambda self: bool(self.can("clean")))
    @rule(i=st.integers(0, 50))
    def clean(self, i: int) -> None:
        run = self.pick(self.can("clean"), i)
        if run is not None:
            ended = run.leftovers if run.procs else ()
            run.procs, run.leftovers, run.clean_reported, run.clean_seen = False, (), True, True
            self.carry(self.core.handle(Cleaned(run.id, ended)))

    @precondition(lambda self: bool(self.can("answer_watch")))
    @rule(i=st.integers(0, 50))
    def answer_watch(self, i: int) -> None:
        run = self.pick(self.can("answer_watch"), i)
        if run is not None:
            run.alive_due = False
            if run.alive:
                self.carry(self.core.handle(Alive(run.id, run.id * 10, f"t{run.id}")))

    # ------------------------------------------------------------------ the store

    @precondition(lambda self: bool(self.ingests))
    @rule(i=st.integers(0, 50), cap=st.sampled_from([None, None, 8]))
    def answer_ingest(self, i: int, cap: int | None) -> None:
        if not self.ingests:
            return
        run_id = sorted(self.ingests)[i % len(self.ingests)]
        ingest = self.ingests.pop(run_id)
        run = self.runs[run_id]
        if self.store_down:
            self.carry(self.core.handle(StoreFailed(run_id, "database is locked", self.now)))
            return
        end = read_end(run.local, ingest.offset, ingest.final, cap)
        assert end >= run.stored
        run.stored = end
        self.carry(self.core.handle(Stored(run_id, end)))

    @rule(dice=st.integers(0, 2))
    def store_flips(self, dice: int) -> None:
        if dice == 0 or self.store_down:
            self.store_down = not self.store_down

    # ------------------------------------------------------------------ hosts, users, time

    @rule(host=st.sampled_from(HOSTS), dice=st.integers(0, 2))
    def host_down(self, host: str, dice: int) -> None:
        if self.up[host] and dice == 0:
            self.up[host] = False
            for run in self.runs.values():
                if run.host == host:
                    run.watched = False
            self.carry(self.core.handle(HostDown(host, "connection lost", self.now)))

    @rule(host=st.sampled_from(HOSTS), answer=st.booleans())
    def host_up(self, host: str, answer: bool = False) -> None:
        if not self.up[host]:
            self.up[host] = True
            self.carry(self.core.handle(HostUp(host)))
            while answer and self.can("answer_watch"):  # the host answers the Watches at once
                self.answer_watch(0)

    @rule(host=st.sampled_from(HOSTS), back=st.booleans())
    def long_outage(self, host: str, back: bool) -> None:
        """The host is away past its grace (and comes back, its runs answering at once)."""
        if self.up[host]:
            self.host_down(host, 0)
            self.tick(LOST_AFTER[host])
            if back:
                self.host_up(host, answer=True)

    @rule(host=st.sampled_from(HOSTS))
    def read_gpus(self, host: str) -> None:
        if self.up[host]:
            self.readings[host] = self._reading(host)

    @rule(dt=st.sampled_from([1.0, 5.0, 20.0, 40.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.carry(self.core.handle(Tick(self.now)))

    @precondition(lambda self: bool(self.can("stop")))
    @rule(i=st.integers(0, 50), intent=st.sampled_from([StopIntent.KILL, StopIntent.EARLY_STOP]),
          dice=st.integers(0, 2))
    def stop(self, i: int, intent: StopIntent, dice: int) -> None:
        run = self.pick(self.can("stop"), i)
        if run is None or dice != 0:
            return
        if run.state is RunState.PENDING:
            run.state, run.released = RunState.KILLED, True  # it held nothing
            self.carry(self.core.dropped(run.study, run.trial, run.id, RunState.KILLED, run.replicate))
        else:
            self.carry(self.core.handle(StopRequested(run.id, intent, at=self.now)))

    @rule(commit=st.booleans(), started=st.booleans(), dice=st.integers(0, 7))
    def restart(self, commit: bool, started: bool, dice: int) -> None:
        """The daemon stops and starts again: what was out is lost (or was committed),
        and a fresh core is built from the store as the shell does at start: pending
        attempts queued; running and lost ones adopted, with what the store knows of
        their trials (failures, a completed attempt); ones recorded ended whose GPUs were
        not released yet (the shell stores a Release) adopted as ENDED, to be Cleaned."""
        if dice != 0:
            return
        for run_id, ingest in self.ingests.items():
            run = self.runs[run_id]
            if commit and not self.store_down:
                run.stored = read_end(run.local, ingest.offset, ingest.final, None)
        self.ingests.clear()
        for run in self.runs.values():
            run.watched = run.clean_seen = run.exit_seen = False
            if run.launch == "pending":  # the launch was under way: it got there, or not
                if started and self.up[run.host]:
                    self.start_process(run)
                else:
                    self.fail_launch(run)
        self.core = Lifecycle(RULES, LOST_AFTER)
        phases = {RunState.RUNNING: Phase.RUNNING, RunState.LOST: Phase.LOST}
        for run in sorted(self.runs.values(), key=lambda r: r.id):
            trial = self.trial_runs(run.study, run.trial, run.replicate)
            failures = sum(r.failures for r in trial)
            if run.state is RunState.PENDING:
                self.core.queued(run.study, run.trial, run.id, failures, run.replicate)
            elif run.state in phases or (run.state in TERMINAL and not run.released):
                attempt = Attempt(run.id, run.name, run.study, run.trial, run.host, run.gpus,
                                  phase=phases.get(run.state, Phase.ENDED), pid=run.pid, start=run.start,
                                  deadline=run.deadline, stop_intent=run.stop_intent, log_size=len(run.local),
                                  stored=run.stored, replicate=run.replicate)
                self.carry(self.core.adopt(attempt, failures=failures,
                                           settled=any(r.state is RunState.COMPLETED for r in trial)))
        for host in HOSTS:
            if not self.up[host]:
                self.carry(self.core.handle(HostDown(host, "unreachable at start", self.now)))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def gpus_not_overfilled(self) -> None:
        holders = Counter((r.host, g) for r in self.runs.values() if r.launch == "pending" or r.procs
                          for g in r.gpus)
        for (host, gpu), n in holders.items():
            assert n <= MAX_PER_GPU[host], f"{n} runs on {host} GPU {gpu}"

    @invariant()
    def new_attempts_only_through_retries(self) -> None:
        per_trial = Counter((r.study, r.trial, r.replicate) for r in self.runs.values())
        for trial, n in per_trial.items():
            assert n == 1 + self.retries[trial], f"{trial}: {n} attempts, {self.retries[trial]} retries"

    @invariant()
    def trials_that_ended_are_told(self) -> None:
        for trial in {(r.study, r.trial) for r in self.runs.values()}:
            if not any(r.state in (RunState.PENDING, RunState.RUNNING) for r in self.trial_runs(*trial)):
                assert trial in self.told, f"{trial} ended but was not told"

    def teardown(self) -> None:
        """Once hosts and store are back, every stop asked for reaches its run; once the
        runs end, everything settles: every attempt recorded ended and its GPUs released,
        every trial told, nothing left in the core."""
        self.store_down = False
        for host in HOSTS:
            self.host_up(host, answer=True)
        for run in self.can("resolve_launch"):  # launches under way get there
            self.start_process(run)
            run.watched = True
            self.carry(self.core.handle(Launched(run.id, run.id * 10, f"t{run.id}")))
        while self.can("answer_watch"):
            self.answer_watch(0)
        self.tick(1.0)
        for run in self.can("exit"):
            assert run.stop_intent is None or run.signaled, f"{run.name} was never signalled ({run.stop_intent})"
            attempt = self.core.attempts.get(run.id)
            if attempt is not None and attempt.phase is Phase.RUNNING and run.deadline is not None:
                assert run.deadline > self.now or run.stop_intent is not None, f"{run.name} not timed out"
        for _ in range(100):
            for run in self.runs.values():
                if run.state is RunState.PENDING:
                    run.state, run.released = RunState.KILLED, True  # it held nothing
                    self.carry(self.core.dropped(run.study, run.trial, run.id, RunState.KILLED, run.replicate))
            for run in self.can("exit"):
                self.end_process(run, 0, None, False)
            for _ in range(len(self.runs)):
                self.report_exit(0)
                self.clean(0)
                self.answer_ingest(0, None)
            self.tick(40.0)
            if all(r.state in TERMINAL and r.released for r in self.runs.values()):
                break
        stuck = [(r.name, r.state.value, r.released) for r in self.runs.values()
                 if r.state not in TERMINAL or not r.released]
        assert not stuck, f"never settled: {stuck}"
        assert self.core.live() == [] and all(self.core.held(h) == [] for h in HOSTS)
        assert self.core.attempts == {}
        assert {(r.study, r.trial) for r in self.runs.values()} <= self.told


TestLifecycleHistories = LifecycleMachine.TestCase
# About 10 s; HYPD_HISTORIES=20000 for a longer search.
TestLifecycleHistories.settings = settings(max_examples=int(os.environ.get("HYPD_HISTORIES", "700")),
                                           stateful_step_count=60, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
# Room to shrink a failure (several minutes at worst) rather than end in a timeout.
TestLifecycleHistories.pytestmark = [pytest.mark.timeout(900)]
