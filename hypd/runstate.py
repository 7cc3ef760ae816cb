"""The state machine of a run (one attempt of a trial). Pure.

    pending -> running -> completed | failed | killed | stopped | lost
    running <-> queued                   (a batch host's job waits in its queue; requeued)
    queued  -> completed | failed | killed | lost | pending
    pending -> killed                    (killed before it started)
    running -> pending                   (its launch never reached its host)
    lost    -> running                   (its host came back and the run was still alive)
    lost    -> completed | failed | killed | stopped  (its host came back and told how it ended)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RunState(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"  # launched on a batch host (Slurm) and waiting in its queue
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    STOPPED = "stopped"  # early-stopped by the search
    LOST = "lost"  # its host vanished

    def __str__(self) -> str:
        return self.value


STATES = tuple(s.value for s in RunState)
TERMINAL = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.KILLED, RunState.STOPPED})
# States in which a process may exist somewhere and hypd must keep watching for it.
LIVE = frozenset({RunState.RUNNING, RunState.QUEUED, RunState.LOST})

TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.KILLED}),
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.FAILED, RunState.KILLED,
                                 RunState.STOPPED, RunState.LOST, RunState.PENDING, RunState.QUEUED}),
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.COMPLETED, RunState.FAILED, RunState.KILLED,
                                RunState.STOPPED, RunState.LOST, RunState.PENDING}),
    RunState.LOST: frozenset({RunState.RUNNING, RunState.QUEUED, RunState.COMPLETED, RunState.FAILED,
                              RunState.KILLED, RunState.STOPPED}),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.KILLED: frozenset(),
    RunState.STOPPED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


def check_transition(current: RunState | str, new: RunState | str) -> None:
    """Raise InvalidTransition unless current -> new is allowed."""
    a, b = RunState(current), RunState(new)
    if b not in TRANSITIONS[a]:
        raise InvalidTransition(f"a {a} run cannot become {b}")


class StopIntent(str, Enum):
    """Why hypd is ending a run; stored before the first signal so a restart knows."""

    KILL = "kill"
    TIMEOUT = "timeout"
    KEEPALIVE = "keepalive"  # it printed nothing for its keepalive window: hung
    EARLY_STOP = "early_stop"


@dataclass(frozen=True)
class Ending:
    state: RunState
    reason: str


# How a batch host (Slurm) says a job ended that is not the run's own doing or hypd's:
# the cluster's failures are infrastructure (lost: retried like a run whose host
# vanished), its limits are the run's.
HOST_ENDINGS: dict[str, Ending] = {
    "NODE_FAIL": Ending(RunState.LOST, "its node failed (Slurm NODE_FAIL)"),
    "BOOT_FAIL": Ending(RunState.LOST, "its node failed to boot (Slurm BOOT_FAIL)"),
    "PREEMPTED": Ending(RunState.LOST, "preempted by the cluster (Slurm PREEMPTED)"),
    "TIMEOUT": Ending(RunState.FAILED, "timeout: past its job's time limit (Slurm TIMEOUT)"),
    "DEADLINE": Ending(RunState.FAILED, "timeout: past its job's deadline (Slurm DEADLINE)"),
    "OUT_OF_MEMORY": Ending(RunState.FAILED, "out of memory (Slurm OUT_OF_MEMORY)"),
    "CANCELLED": Ending(RunState.FAILED, "cancelled outside hypd (Slurm CANCELLED)"),
}


def ending(exit_code: int | None, failed_stage: str | None, intent: StopIntent | str | None,
           timeout_text: str = "", cause: str | None = None) -> Ending:
    """How a run that is no longer alive ended.

    exit_code: from the run's exit file; None when the run left none (its wrapper was
    killed outright). intent: what hypd had asked for, if anything. cause: how its host
    says it ended when that was not the run's own exit (a key of HOST_ENDINGS).
    """
    intent = StopIntent(intent) if intent else None
    if exit_code == 0:
        if intent is StopIntent.KILL:
            return Ending(RunState.COMPLETED, "completed before the kill took effect")
        return Ending(RunState.COMPLETED, "all stages exited 0")
    if intent is StopIntent.KILL:
        return Ending(RunState.KILLED, "killed on request")
    if cause in HOST_ENDINGS and intent is None:
        return HOST_ENDINGS[cause]
    if intent is StopIntent.TIMEOUT:
        return Ending(RunState.FAILED, f"timeout{' after ' + timeout_text if timeout_text else ''}")
    if intent is StopIntent.KEEPALIVE:
        return Ending(RunState.FAILED, "no output (keepalive)")
    if intent is StopIntent.EARLY_STOP:
        return Ending(RunState.STOPPED, "early-stopped: judged unpromising by the search")
    if exit_code is None:
        return Ending(RunState.FAILED, "ended without an exit status (its process group was killed)")
    stage = f"stage {failed_stage} " if failed_stage and failed_stage not in ("-", "main") else ""
    if exit_code > 128:
        return Ending(RunState.FAILED, f"{stage}killed by signal {exit_code - 128}".strip())
    return Ending(RunState.FAILED, f"{stage}exited with status {exit_code}".strip())


def counts_as_failure(state: RunState | str) -> bool:
    """Endings that a study's `retries` answer with a new attempt."""
    return RunState(state) in (RunState.FAILED, RunState.LOST)
