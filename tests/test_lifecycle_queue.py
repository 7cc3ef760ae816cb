"""The lifecycle core with a batch host (Slurm): a run's job waits in the queue
(`queued`, with the host's reason), leaves it, comes back to it when requeued, and ends
as the host says (its node failed: lost and retried; its time limit: failed)."""

from __future__ import annotations

from hypd.lifecycle import (
    Attempt,
    Cleaned,
    Exited,
    Launched,
    Lifecycle,
    Persist,
    Phase,
    Queued,
    Record,
    Release,
    Retry,
    StopRequested,
    StudyRules,
    Tick,
    Unwatch,
)
from hypd.runstate import RunState, StopIntent


def launched(lc: Lifecycle, run: int = 1, deadline: float | None = None) -> None:
    lc.queued("s", 1, run)
    lc.adopt(Attempt(run, f"s:{run}", "s", 1, "cluster", (), phase=Phase.LAUNCHING, deadline=deadline))
    lc.handle(Launched(run, 4242, "slurm"))


def records(out: list) -> list[tuple[RunState, str]]:
    return [(a.state, a.reason) for a in out if isinstance(a, Record)]


def test_queued_with_its_reason_then_running() -> None:
    lc = Lifecycle({"s": StudyRules()})
    launched(lc)
    assert records(lc.handle(Queued(1, "Priority"))) == [(RunState.QUEUED, "queued: Priority")]
    assert lc.handle(Queued(1, "Priority")) == []  # the same look again: nothing
    assert lc.handle(Queued(1, "Resources")) == [Persist(1, (("reason", "queued: Resources"),))]
    assert records(lc.handle(Queued(1, None))) == [(RunState.RUNNING, "left the queue of host cluster: running")]
    assert lc.handle(Queued(1, None)) == []


def test_a_requeued_job_is_queued_again_as_the_same_run() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)})
    launched(lc)
    lc.handle(Queued(1, None))
    out = lc.handle(Queued(1, "BeginTime"))
    assert records(out) == [(RunState.QUEUED, "queued: BeginTime")]
    assert not [a for a in out if isinstance(a, Retry)]
    assert [a.id for a in lc.live()] == [1]


def test_no_timeout_and_no_keepalive_while_queued() -> None:
    lc = Lifecycle({"s": StudyRules(keepalive=5.0)})
    launched(lc, deadline=10.0)
    lc.handle(Queued(1, "Resources"))
    for now in (1.0, 20.0, 40.0):
        assert lc.handle(Tick(now)) == []
    lc.handle(Queued(1, None))  # queued from 0 to 40 s: its deadline moves from 10 to 50 s
    assert lc.handle(Tick(41.0)) == []
    out = lc.handle(Tick(50.0))
    assert [a.fields[0] for a in out if isinstance(a, Persist)] == [("stop_intent", "timeout")]


def test_node_failure_is_lost_and_retried_and_frees_its_slot() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)})
    launched(lc)
    lc.handle(Queued(1, None))
    out = lc.handle(Exited(1, None, None, 0, cause="NODE_FAIL"))
    assert records(out) == [(RunState.LOST, "its node failed (Slurm NODE_FAIL)")]
    assert [a for a in out if isinstance(a, Retry)] == [Retry("s", 1, "retry 1 of 1 after a lost attempt")]
    assert lc.handle(Cleaned(1)) == [Unwatch(1, "cluster"), Release(1, "cluster", ())]


def test_time_limit_is_a_timeout_failure_and_oom_says_so() -> None:
    lc = Lifecycle({"s": StudyRules(retries=0)})
    launched(lc, 1)
    assert records(lc.handle(Exited(1, 143, "train", 0, cause="TIMEOUT"))) == [
        (RunState.FAILED, "timeout: past its job's time limit (Slurm TIMEOUT)")]
    lc.queued("s", 2, 2)
    lc.adopt(Attempt(2, "s:2", "s", 2, "cluster", (), phase=Phase.LAUNCHING))
    lc.handle(Launched(2, 4243, "slurm"))
    assert records(lc.handle(Exited(2, None, None, 0, cause="OUT_OF_MEMORY"))) == [
        (RunState.FAILED, "out of memory (Slurm OUT_OF_MEMORY)")]


def test_a_queued_job_killed_is_killed() -> None:
    lc = Lifecycle({"s": StudyRules(retries=2)})
    launched(lc)
    lc.handle(Queued(1, "Priority"))
    lc.handle(StopRequested(1, StopIntent.KILL, at=1.0))
    out = lc.handle(Exited(1, None, None, 0, cause="CANCELLED"))
    assert records(out) == [(RunState.KILLED, "killed on request")]
    assert not [a for a in out if isinstance(a, Retry)]


def test_a_lost_run_whose_job_the_cluster_ended_as_lost_is_not_recorded_twice() -> None:
    lc = Lifecycle({"s": StudyRules(retries=1)})
    # found at start: recorded lost before (its node failed), watched again
    lc.adopt(Attempt(1, "s:1", "s", 1, "cluster", (), phase=Phase.LOST, pid=4242, start="slurm"))
    out = lc.handle(Exited(1, None, None, 0, cause="NODE_FAIL"))
    assert records(out) == [] and not [a for a in out if isinstance(a, Retry)]
    assert lc.handle(Cleaned(1)) == [Unwatch(1, "cluster"), Release(1, "cluster", ())]


def test_time_waiting_in_the_queue_does_not_count_against_the_timeout() -> None:
    lc = Lifecycle({"s": StudyRules()})
    lc.handle(Tick(0.0))
    launched(lc, deadline=10.0)
    lc.handle(Queued(1, "Priority"))
    lc.handle(Tick(100.0))
    lc.handle(Queued(1, None))  # ran from 100 s on: its 10 s end at 110 s
    assert lc.attempts[1].deadline == 110.0
    assert lc.handle(Tick(105.0)) == []
    assert [a for a in lc.handle(Tick(111.0)) if isinstance(a, Persist) and a.fields[0] == ("stop_intent", "timeout")]
