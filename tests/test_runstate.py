"""hypd.runstate: the transition table, how a run ended, what counts as a failure. Pure."""

from __future__ import annotations

import itertools

import pytest

from hypd.runstate import (
    LIVE,
    STATES,
    TERMINAL,
    TRANSITIONS,
    Ending,
    InvalidTransition,
    RunState,
    StopIntent,
    check_transition,
    counts_as_failure,
    ending,
)

P, R, C, F, K, S, L, Q = (RunState.PENDING, RunState.RUNNING, RunState.COMPLETED, RunState.FAILED,
                          RunState.KILLED, RunState.STOPPED, RunState.LOST, RunState.QUEUED)

ALLOWED = {
    (P, R), (P, K),
    (R, C), (R, F), (R, K), (R, S), (R, L), (R, P),
    (L, R), (L, C), (L, F), (L, K), (L, S),
    # a batch host's (Slurm's) queue: in and out of it, and every ending from it
    (R, Q), (Q, R), (Q, C), (Q, F), (Q, K), (Q, S), (Q, L), (Q, P), (L, Q),
}
ALL_PAIRS = list(itertools.product(RunState, RunState))


def test_states_and_sets() -> None:
    assert STATES == ("pending", "queued", "running", "completed", "failed", "killed", "stopped", "lost")
    assert TERMINAL == {C, F, K, S}
    assert LIVE == {R, Q, L}
    assert set(TRANSITIONS) == set(RunState)
    assert str(RunState.LOST) == "lost" and f"{RunState.PENDING}" == "pending"
    assert RunState("running") is R


def test_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


@pytest.mark.parametrize("a, b", sorted(ALLOWED))
def test_allowed(a: RunState, b: RunState) -> None:
    check_transition(a, b)
    check_transition(a.value, b.value)  # strings too


@pytest.mark.parametrize("a, b", [pair for pair in ALL_PAIRS if pair not in ALLOWED])
def test_forbidden(a: RunState, b: RunState) -> None:
    with pytest.raises(InvalidTransition, match=f"a {a.value} run cannot become {b.value}"):
        check_transition(a, b)
    with pytest.raises(InvalidTransition):
        check_transition(a.value, b.value)


def test_forbidden_count() -> None:
    assert len(ALL_PAIRS) - len(ALLOWED) == 64 - 22


def test_unknown_state_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_transition("sleeping", "running")
    assert issubclass(InvalidTransition, ValueError)


# ------------------------------------------------------------------ ending()

INTENTS = [None, StopIntent.KILL, StopIntent.TIMEOUT, StopIntent.EARLY_STOP]
CODES = [0, 1, 137, 143, None]
STAGES = [None, "-", "main", "train"]


def expected_ending(code: int | None, stage: str | None, intent: StopIntent | None) -> Ending:
    if code == 0:
        if intent is StopIntent.KILL:
            return Ending(C, "completed before the kill took effect")
        return Ending(C, "all stages exited 0")
    if intent is StopIntent.KILL:
        return Ending(K, "killed on request")
    if intent is StopIntent.TIMEOUT:
        return Ending(F, "timeout after 10m")
    if intent is StopIntent.EARLY_STOP:
        return Ending(S, "early-stopped: judged unpromising by the search")
    if code is None:
        return Ending(F, "ended without an exit status (its process group was killed)")
    prefix = "stage train " if stage == "train" else ""
    if code == 1:
        return Ending(F, f"{prefix}exited with status 1")
    return Ending(F, f"{prefix}killed by signal {code - 128}")


@pytest.mark.parametrize("code, stage, intent", list(itertools.product(CODES, STAGES, INTENTS)))
def test_ending_every_combination(code: int | None, stage: str | None, intent: StopIntent | None) -> None:
    got = ending(code, stage, intent, "10m")
    assert got == expected_ending(code, stage, intent)
    # The intent may come as its stored string.
    assert ending(code, stage, intent.value if intent else None, "10m") == got


@pytest.mark.parametrize("code, stage, reason", [
    (1, "train", "stage train exited with status 1"),
    (2, "main", "exited with status 2"),
    (2, "-", "exited with status 2"),
    (2, None, "exited with status 2"),
    (2, "", "exited with status 2"),
    (126, "setup", "stage setup exited with status 126"),
    (127, "eval", "stage eval exited with status 127"),
    (128, "x", "stage x exited with status 128"),
    (129, "x", "stage x killed by signal 1"),
    (137, None, "killed by signal 9"),
    (143, "train", "stage train killed by signal 15"),
    (139, "main", "killed by signal 11"),
])
def test_failure_reasons(code: int, stage: str | None, reason: str) -> None:
    assert ending(code, stage, None) == Ending(F, reason)


def test_timeout_reason_without_text() -> None:
    assert ending(143, "main", "timeout") == Ending(F, "timeout")
    assert ending(None, None, StopIntent.TIMEOUT, "1h30m") == Ending(F, "timeout after 1h30m")


def test_empty_intent_is_no_intent() -> None:
    assert ending(1, "main", "") == Ending(F, "exited with status 1")


def test_unknown_intent_is_refused() -> None:
    with pytest.raises(ValueError):
        ending(1, "main", "pause")


def test_stop_intent_values() -> None:
    assert [i.value for i in StopIntent] == ["kill", "timeout", "keepalive", "early_stop"]


# ------------------------------------------------------------------ counts_as_failure

@pytest.mark.parametrize("state, failure", [
    (P, False), (R, False), (C, False), (F, True), (K, False), (S, False), (L, True),
])
def test_counts_as_failure(state: RunState, failure: bool) -> None:
    assert counts_as_failure(state) is failure
    assert counts_as_failure(state.value) is failure


# ------------------------------------------------------------------ a batch host's endings

@pytest.mark.parametrize("cause, state, words", [
    ("NODE_FAIL", L, "node failed"), ("BOOT_FAIL", L, "boot"), ("PREEMPTED", L, "preempted"),
    ("TIMEOUT", F, "timeout"), ("OUT_OF_MEMORY", F, "out of memory"), ("CANCELLED", F, "cancelled outside"),
])
def test_a_batch_hosts_ending_says_why(cause: str, state: RunState, words: str) -> None:
    got = ending(None, None, None, "", cause)
    assert got.state is state and words in got.reason and cause in got.reason
    assert ending(143, "train", None, "", cause) == got  # killed by Slurm: its status is not the reason


def test_a_batch_hosts_ending_yields_to_a_clean_exit_and_to_hypds_own_intent() -> None:
    assert ending(0, "-", None, "", "NODE_FAIL").state is C  # its job ended after the run completed
    assert ending(None, None, StopIntent.KILL, "", "CANCELLED").state is K  # scancel was hypd's
    assert ending(None, None, StopIntent.TIMEOUT, "10m", "CANCELLED").reason == "timeout after 10m"
    assert ending(3, "train", None, "", "FAILED") == ending(3, "train", None)  # not a cause: the run's own
