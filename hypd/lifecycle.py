"""The life of a run, as events in and actions out. Pure: no I/O, no asyncio, no clock.

The daemon feeds `Lifecycle.handle` what its hosts, its store and its users say (a run
started, bytes reached its log, the run's wrapper exited, its processes are gone, a host
went away or came back, a kill was asked for, time passed) and carries out the actions it
gets back (store these reports, record this ending, signal that run, retry that trial,
tell the search, hand these GPUs out again). Every rule about a run lives here, where it
can be tested by generated histories (tests/test_lifecycle.py) without a process, a
socket or a sleep.

The promises kept here:
- an attempt ends exactly once, and only after every byte its log received is stored;
- a trial runs again only where a retry is decided (a failure within its budget, or a
  lost host, unless the attempt was asked to end), and a lost attempt that comes back
  finished is recorded as it ended;
- a run's GPUs are handed out again only once its processes are confirmed gone;
- a trial whose attempts have all ended is handed to the search once (the shell tells
  the search and marks it told in one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hypd.runstate import RunState, StopIntent, counts_as_failure, ending
from hypd.study import StudySpec, format_duration

STORE_RETRY = 1.0  # seconds between tries of a store write that failed
# How the trial reads an attempt lost after it was asked to end: not as a failure.
_ASKED_END = {StopIntent.KILL: RunState.KILLED, StopIntent.EARLY_STOP: RunState.STOPPED}


class Phase(str, Enum):
    LAUNCHING = "launching"  # the host has not said yet that it started
    RUNNING = "running"
    LOST = "lost"  # its host has been away past its grace; its trial was dealt with
    ENDED = "ended"  # recorded; kept until its processes are confirmed gone


# ----------------------------------------------------------------------------- events

@dataclass(frozen=True)
class Launched:
    run: int
    pid: int
    start: str | None


@dataclass(frozen=True)
class LaunchFailed:
    run: int
    why: str
    reached_host: bool = True  # False: nothing reached the host (it was down): pending again


@dataclass(frozen=True)
class Alive:
    """A watched run (adopted, or seen again after its host came back) is alive."""

    run: int
    pid: int
    start: str | None


@dataclass(frozen=True)
class LogGrew:
    run: int
    size: int  # bytes of its log on the daemon's machine


@dataclass(frozen=True)
class Stored:
    """The run's reports up to `offset` of its log are committed."""

    run: int
    offset: int


@dataclass(frozen=True)
class StoreFailed:
    run: int
    why: str
    at: float


@dataclass(frozen=True)
class Exited:
    """The run's wrapper ended and its log is complete at `size` bytes."""

    run: int
    status: int | None  # from its exit file; None when it left none
    stage: str | None
    size: int
    cause: str | None = None  # how its host says it ended (Slurm's job state: TIMEOUT, NODE_FAIL...)


@dataclass(frozen=True)
class Queued:
    """The run's job waits in its batch host's queue (`reason`: the host's why, e.g.
    Priority, Resources); reason None: it left the queue and runs."""

    run: int
    reason: str | None


@dataclass(frozen=True)
class Cleaned:
    """No process of the run is left on its host; `ended` had to be ended."""

    run: int
    ended: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostDown:
    host: str
    why: str
    at: float


@dataclass(frozen=True)
class HostUp:
    host: str


@dataclass(frozen=True)
class StopRequested:
    run: int
    intent: StopIntent
    reason: str = ""  # why, when it was hypd's own decision beyond the intent
    at: float = 0.0


@dataclass(frozen=True)
class KeepaliveAsked:
    """The run printed `HYPD: keepalive 20m`: its own window from now on."""

    run: int
    seconds: float


@dataclass(frozen=True)
class Tick:
    now: float


Event = (Launched | LaunchFailed | Alive | LogGrew | Stored | StoreFailed | Exited | Queued | Cleaned | HostDown
         | HostUp | StopRequested | KeepaliveAsked | Tick)


# ----------------------------------------------------------------------------- actions

@dataclass(frozen=True)
class Ingest:
    """Read the run's log from its stored offset and store what it holds; answer with
    Stored or StoreFailed. `final`: the run has ended, an unterminated last line counts."""

    run: int
    offset: int
    final: bool


@dataclass(frozen=True)
class Persist:
    """Columns of a live run to store (its pid, its stop intent)."""

    run: int
    fields: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Signal:
    """Ask the run's host to end it: SIGTERM now, SIGKILL after the grace."""

    run: int
    host: str


@dataclass(frozen=True)
class Watch:
    """Ask the run's host (back, or new to this daemon) to watch it again, its log from
    `offset` on."""

    run: int
    host: str
    offset: int
    pid: int | None
    start: str | None


@dataclass(frozen=True)
class Unwatch:
    run: int
    host: str


@dataclass(frozen=True)
class Record:
    """A transition of the run to store."""

    run: int
    state: RunState
    reason: str
    exit_code: int | None = None
    stage: str | None = None  # the stage that failed


@dataclass(frozen=True)
class Retry:
    study: str
    trial: int
    reason: str
    replicate: int = 1


@dataclass(frozen=True)
class Requeue:
    """A run whose launch never reached its host: pending again, not a failure."""

    run: int
    reason: str


@dataclass(frozen=True)
class Supersede:
    """Other attempts of a trial's replicate are not needed any more: end the pending
    ones, stop the running ones."""

    study: str
    trial: int
    keep: int  # the attempt that settled the trial's replicate
    reason: str
    replicate: int = 1


@dataclass(frozen=True)
class Tell:
    """Every attempt of every replicate of the trial has ended: the search is to learn
    its outcome."""

    study: str
    trial: int


@dataclass(frozen=True)
class Release:
    """The run's processes are gone: its GPUs (or CPU slot) may take new work."""

    run: int
    host: str
    gpus: tuple[int, ...]
    study: str = field(default="", compare=False)  # for the shell (what to fetch); not the core's concern


@dataclass(frozen=True)
class PauseStudy:
    """The study's runs keep failing: start nothing new until a user resumes it. `run` is
    the last failure (the shell quotes its log's last line in the reason)."""

    study: str
    run: int
    reason: str


@dataclass(frozen=True)
class Note:
    """A line for the daemon's log."""

    level: str  # "info" | "warning" | "error"
    text: str


Action = (Ingest | Persist | Signal | Watch | Unwatch | Record | Retry | Requeue | Supersede | Tell | Release
          | PauseStudy | Note)


# ----------------------------------------------------------------------------- state

@dataclass(frozen=True)
class StudyRules:
    retries: int = 0
    timeout_text: str = ""  # how a timeout reads in a reason ("10m")
    keepalive: float | None = None  # seconds a running attempt may print nothing before it is ended as hung
    max_failures: int = 5  # runs failed in a row that pause the study (0: never)


def study_rules(spec: StudySpec) -> StudyRules:
    return StudyRules(spec.retries, format_duration(spec.timeout or 0), spec.keepalive, spec.max_failures)


@dataclass
class Attempt:
    """What the core knows of one attempt it watches (launching, running, lost, or
    ended with processes not yet confirmed gone)."""

    id: int
    name: str
    study: str
    trial: int
    host: str
    gpus: tuple[int, ...] = ()
    phase: Phase = Phase.LAUNCHING
    pid: int | None = None
    start: str | None = None
    deadline: float | None = None
    stop_intent: StopIntent | None = None
    stop_reason: str = ""
    log_size: int = 0
    stored: int = 0
    ingesting: bool = False  # an Ingest is out, not yet answered
    asked: int = 0  # log_size when the last Ingest went out
    asked_final: bool = False
    store_retry_at: float | None = None
    store_trouble: bool = False
    exit: tuple[int | None, str | None] | None = None
    exit_size: int = 0
    cause: str | None = None  # Exited.cause
    queued: str | None = None  # why its job waits in its host's queue; None: not queued
    queued_since: float | None = None  # the last tick's clock when it was queued
    clean: bool = False
    unreachable_since: float | None = None
    keepalive: float | None = None  # the window the run asked for itself (beats its study's)
    quiet_since: float | None = None  # when its log last grew (as the ticks saw it)
    heard: int = -1  # its log size then
    replicate: int = 1  # which of its trial's replicates (1..N) it is an attempt of


@dataclass
class TrialBook:
    """One replicate of a trial (a trial without replicates has one): its attempts."""

    failures: int = 0  # attempts that failed or were lost
    live: set[int] = field(default_factory=set)  # attempts not ended (pending ones included)
    settled: bool = False  # an attempt completed: the others are not needed
    retry_due: bool = False  # a Retry went out and its attempt is not queued yet


# ----------------------------------------------------------------------------- per-trial and per-study rules

class TrialBooks:
    """Each trial's replicates and their attempts: the retry budget, whether a replicate is
    settled, and when the trial is handed to the search (once no attempt of it is left)."""

    def __init__(self, rules: dict[str, StudyRules]) -> None:
        self.rules = rules  # the core's own dict (the shell keeps it current)
        # (study, trial) -> replicate -> its book
        self.trials: dict[tuple[str, int], dict[int, TrialBook]] = {}

    def book(self, study: str, trial: int, replicate: int = 1) -> TrialBook:
        return self.trials.setdefault((study, trial), {}).setdefault(replicate, TrialBook())

    def live(self, study: str, trial: int) -> bool:
        return any(b.live or b.retry_due for b in self.trials.get((study, trial), {}).values())

    def queued(self, study: str, trial: int, run: int, failures: int = 0, replicate: int = 1) -> None:
        book = self.book(study, trial, replicate)
        book.live.add(run)
        book.retry_due = False
        book.failures = max(book.failures, failures)

    def forget(self, study: str) -> None:
        for key in [k for k in self.trials if k[0] == study]:
            del self.trials[key]

    def after_end(self, study: str, trial: int, state: RunState, replicate: int = 1) -> list[Action]:
        """Retry a failure within the budget (each replicate has its own); otherwise, once
        no attempt of any replicate of the trial is left, hand the trial to the search."""
        book = self.book(study, trial, replicate)
        if state is RunState.COMPLETED:
            book.settled = True
        if counts_as_failure(state) and not book.settled:
            book.failures += 1
            retries = self.rules.get(study, StudyRules()).retries
            if book.failures <= retries and not book.live:
                book.retry_due = True
                return [Retry(study, trial, f"retry {book.failures} of {retries} after a {state.value} attempt",
                              replicate)]
        if self.live(study, trial):
            return []  # another attempt of this trial will tell
        return [Tell(study, trial)]

    def completed_after_loss(self, a: Attempt) -> list[Action]:
        """A lost attempt came back and completed. Its replicate was dealt with when it was
        lost (retried, or given up); a completion still settles it: the retry is not needed."""
        book = self.book(a.study, a.trial, a.replicate)
        if book.settled:
            return []
        book.settled = True
        if book.live:
            return [Supersede(a.study, a.trial, a.id, f"superseded: {a.name} completed after its host came back",
                              a.replicate)]
        return [] if self.live(a.study, a.trial) else [Tell(a.study, a.trial)]


class FailureBreaker:
    """The circuit breaker: a study whose last `max_failures` runs all failed (a typo in its
    command, a missing module) pauses once, instead of burning every trial and retry. A
    completed or early-stopped run starts the count again; a killed one says nothing of the
    study's health."""

    def __init__(self, rules: dict[str, StudyRules]) -> None:
        self.rules = rules  # the core's own dict (the shell keeps it current)
        self.failed_in_row: dict[str, int] = {}  # study -> runs failed since its last success (or resume)

    def reset(self, study: str) -> None:
        self.failed_in_row.pop(study, None)

    def count(self, a: Attempt, state: RunState) -> list[Action]:
        if state in (RunState.COMPLETED, RunState.STOPPED):
            self.reset(a.study)
            return []
        if state is not RunState.FAILED:
            return []
        n = self.failed_in_row[a.study] = self.failed_in_row.get(a.study, 0) + 1
        limit = self.rules.get(a.study, StudyRules()).max_failures
        if limit and n == limit:  # once: the runs still going when it pauses may fail too
            return [PauseStudy(a.study, a.id, f"{n} runs in a row failed")]
        return []


def silent_past(a: Attempt, window: float | None, now: float) -> bool:
    """Keepalive: has the running attempt's log not grown for `window` seconds? Silence is
    measured by the ticks: from the first tick that saw it running, and again from each
    tick that saw its log grow. A host that is away says nothing of its runs' output: the
    watch waits until it is back (the lost rule covers it)."""
    if window is None or a.phase is not Phase.RUNNING or a.stop_intent is not None or a.exit is not None:
        return False
    if a.unreachable_since is not None or a.quiet_since is None or a.log_size != a.heard \
            or a.queued is not None:  # waiting in a queue is not silence
        a.quiet_since, a.heard = now, a.log_size
        return False
    return now - a.quiet_since >= window


def queue_changed(a: Attempt, reason: str | None, clock: float) -> list[Action]:
    """A running attempt's job waits in its batch host's queue (`reason`), or left it (None).
    Its timeout counts from when it runs, and the keepalive leaves it alone while it waits."""
    was, a.queued = a.queued, reason
    if reason is None:
        # The time it waited moves its deadline on.
        if a.deadline is not None and a.queued_since is not None and clock > a.queued_since:
            a.deadline += clock - a.queued_since
        a.queued_since = None
        return [Record(a.id, RunState.RUNNING, f"left the queue of host {a.host}: running")]
    if a.queued_since is None:
        a.queued_since = clock
    if was is None:
        return [Record(a.id, RunState.QUEUED, f"queued: {reason}")]
    return [Persist(a.id, (("reason", f"queued: {reason}"),))]


# ----------------------------------------------------------------------------- the log's way to the store

def ask_ingest(a: Attempt, progressed: bool) -> list[Action]:
    """The next read of the run's log to store, if there is one to make: only with something
    new to read (bytes since the last ask, a read that made progress, which may have
    stopped at its cap) or at the run's end (its unterminated last line now counts)."""
    final = a.exit is not None
    if a.stored < a.log_size and (a.log_size > a.asked or progressed or (final and not a.asked_final)):
        a.ingesting, a.asked, a.asked_final = True, a.log_size, final
        return [Ingest(a.id, a.stored, final)]
    return []


def log_stored(a: Attempt, offset: int) -> tuple[list[Action], bool]:
    """A read is stored up to `offset`: the notes it is worth, and whether it made progress."""
    out: list[Action] = []
    a.ingesting = False
    progressed = offset > a.stored
    a.stored = max(a.stored, offset)
    if a.store_trouble:
        a.store_trouble = False
        out.append(Note("info", f"{a.name}: the store takes reports again"))
    if a.asked_final and not progressed and a.exit is not None and a.stored < a.exit_size:
        # The log here ends short of what the host wrote (its copy could not be kept
        # whole): what there is, is stored.
        out.append(Note("warning", f"{a.name}: its log here ends at byte {a.stored} of {a.exit_size}"))
        a.exit_size = a.stored
    return out, progressed


def store_failed(a: Attempt, why: str, at: float) -> list[Action]:
    """A read could not be stored: tried again from the last stored byte after a pause."""
    a.ingesting = False
    a.asked_final = False  # asked again once the store is back
    a.store_retry_at = at + STORE_RETRY
    if a.store_trouble:
        return []
    a.store_trouble = True
    return [Note("warning", f"{a.name}: cannot store reports now ({why}); trying again from the last stored byte")]


# ----------------------------------------------------------------------------- the core

class Lifecycle:
    def __init__(self, rules: dict[str, StudyRules] | None = None, lost_after: dict[str, float] | None = None
                 ) -> None:
        self.rules: dict[str, StudyRules] = dict(rules or {})
        self.lost_after: dict[str, float] = dict(lost_after or {})  # host -> seconds
        self.attempts: dict[int, Attempt] = {}
        self.trials = TrialBooks(self.rules)
        self.breaker = FailureBreaker(self.rules)
        self.hosts_down: dict[str, float] = {}  # host -> since
        self.clock = 0.0  # the last Tick's time: what a queued attempt's wait is measured by

    # ------------------------------------------------------------ what the shell tells first

    def book(self, study: str, trial: int, replicate: int = 1) -> TrialBook:
        return self.trials.book(study, trial, replicate)

    def queued(self, study: str, trial: int, run: int, failures: int = 0, replicate: int = 1) -> None:
        """A pending attempt exists (a new trial, a retry, or one found at start)."""
        self.trials.queued(study, trial, run, failures, replicate)

    def replaced(self, study: str, trial: int) -> None:
        """A trial that never started is gone (asked ahead, then asked again with more data):
        its pending attempts now belong to another trial, queued anew."""
        self.trials.trials.pop((study, trial), None)

    def dropped(self, study: str, trial: int, run: int, state: RunState, replicate: int = 1) -> list[Action]:
        """A pending attempt ended before it started (killed, superseded)."""
        self.book(study, trial, replicate).live.discard(run)
        return self.trials.after_end(study, trial, state, replicate)

    def adopt(self, attempt: Attempt, failures: int = 0, settled: bool = False) -> list[Action]:
        """A run launched now (phase LAUNCHING), or one found at start: running, lost, or
        recorded ended with its processes not confirmed gone (phase ENDED). `failures`
        and `settled` say what the store knows of its trial at start: attempts that
        failed or were lost, and whether one completed."""
        self.attempts[attempt.id] = attempt
        book = self.book(attempt.study, attempt.trial, attempt.replicate)
        book.failures = max(book.failures, failures)
        book.settled = book.settled or settled
        if attempt.phase in (Phase.LAUNCHING, Phase.RUNNING):
            book.live.add(attempt.id)  # a lost one was dealt with already; an ended one is over
        if attempt.phase is Phase.LAUNCHING:
            return []
        return [Watch(attempt.id, attempt.host, attempt.log_size, attempt.pid, attempt.start)]

    def resumed(self, study: str) -> None:
        """A user resumed (or resubmitted) the study: its failures in a row count from 0."""
        self.breaker.reset(study)

    def forget_study(self, study: str) -> None:
        """A study removed (none of its runs live): its rules and trial books go. Attempts
        whose processes are not confirmed gone stay: they still hold their GPUs."""
        self.rules.pop(study, None)
        self.breaker.reset(study)
        self.trials.forget(study)

    def held(self, host: str) -> list[Attempt]:
        """Attempts whose GPUs or CPU slot on `host` are taken: every one whose processes
        are not confirmed gone, lost ones included (a lost run may still be there, and
        may come back)."""
        return [a for a in self.attempts.values() if a.host == host]

    def live(self) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.phase is not Phase.ENDED]

    # ------------------------------------------------------------ events

    def handle(self, event: Event) -> list[Action]:
        method = getattr(self, "_on_" + type(event).__name__)
        return method(event)  # type: ignore[no-any-return]

    def _attempt(self, run: int) -> Attempt | None:
        return self.attempts.get(run)

    def _on_Launched(self, e: Launched) -> list[Action]:
        a = self._attempt(e.run)
        if a is not None and a.phase is Phase.LOST and a.pid is None:
            # Lost while its launch was under way, and it started after all: as if seen alive.
            return self._on_Alive(Alive(e.run, e.pid, e.start))
        if a is None or a.phase is not Phase.LAUNCHING:
            return []
        a.phase, a.pid, a.start = Phase.RUNNING, e.pid, e.start
        out: list[Action] = [Persist(a.id, (("pid", e.pid), ("proc_start", e.start)))]
        if a.stop_intent is not None:  # a kill asked for while it was being launched
            out.append(Signal(a.id, a.host))
        return out

    def _on_LaunchFailed(self, e: LaunchFailed) -> list[Action]:
        a = self._attempt(e.run)
        was_lost = a is not None and a.phase is Phase.LOST and a.pid is None  # lost while launching
        if a is None or not (a.phase is Phase.LAUNCHING or was_lost):
            return []
        a.clean = True  # nothing started
        if not e.reached_host and a.phase is Phase.LAUNCHING and a.stop_intent is None:
            del self.attempts[a.id]  # still its trial's attempt under way: a pending one
            return [Requeue(a.id, f"back to pending: {e.why}"), Release(a.id, a.host, a.gpus, a.study)]
        if a.stop_intent is not None:  # it was to end anyway: as asked, not as a failure
            end = ending(None, None, a.stop_intent, self.rules.get(a.study, StudyRules()).timeout_text)
            return self._end(a, end.state, f"{a.stop_reason or end.reason} (its launch failed: {e.why})", None,
                             was_lost)
        return self._end(a, RunState.FAILED, f"launch failed: {e.why}", None, was_lost)

    def _on_Alive(self, e: Alive) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is Phase.ENDED:
            return []
        out: list[Action] = []
        if a.pid != e.pid or a.start != e.start:
            a.pid, a.start = e.pid, e.start
            out.append(Persist(a.id, (("pid", e.pid), ("proc_start", e.start))))
        if a.phase is Phase.LAUNCHING:
            a.phase = Phase.RUNNING
        elif a.phase is Phase.LOST:
            book = self.book(a.study, a.trial, a.replicate)
            if a.stop_intent is None and (book.settled or len(book.live - {a.id}) > 0):
                # Its trial got another attempt while the host was away: one is enough.
                out += self._stop(a, StopIntent.KILL, "ended: its trial was retried while its host was away")
                return out
            a.phase = Phase.RUNNING
            book.live.add(a.id)
            out.append(Record(a.id, RunState.RUNNING, f"host {a.host} is back; run adopted"))
        if a.stop_intent is not None:
            out.append(Signal(a.id, a.host))  # again: the host may not have had it
        return out

    def _on_LogGrew(self, e: LogGrew) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is Phase.ENDED or e.size <= a.log_size:
            return []
        a.log_size = e.size
        return self._advance(a)

    def _advance(self, a: Attempt, progressed: bool = False) -> list[Action]:
        """Store what the log holds beyond the stored offset; once the run has exited and
        its whole log is stored, record how it ended."""
        if a.phase is Phase.ENDED or a.ingesting or a.store_retry_at is not None:
            return []
        if a.exit is not None and a.stored >= a.exit_size:
            return self._finish(a)
        return ask_ingest(a, progressed)

    def _on_Stored(self, e: Stored) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or not a.ingesting:
            return []
        out, progressed = log_stored(a, e.offset)
        return out + self._advance(a, progressed)

    def _on_StoreFailed(self, e: StoreFailed) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or not a.ingesting:
            return []
        return store_failed(a, e.why, e.at)

    def _on_Exited(self, e: Exited) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is Phase.ENDED or a.exit is not None:
            return []
        a.exit = (e.status, e.stage)
        a.exit_size = e.size
        a.cause = e.cause
        a.log_size = max(a.log_size, e.size)
        return self._advance(a)

    def _on_Queued(self, e: Queued) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is not Phase.RUNNING or a.exit is not None or e.reason == a.queued:
            return []
        return queue_changed(a, e.reason, self.clock)

    def _finish(self, a: Attempt) -> list[Action]:
        """Its exit is seen and its whole log stored: record how it ended."""
        code, stage = a.exit if a.exit is not None else (None, None)
        rules = self.rules.get(a.study, StudyRules())
        end = ending(code, stage, a.stop_intent, rules.timeout_text, a.cause)
        was_lost = a.phase is Phase.LOST
        if was_lost and end.state is RunState.LOST:  # lost already, and its trial dealt with then
            a.phase = Phase.ENDED
            return self._release(a) if a.clean else []
        # hypd's own reason for ending it (a superseded attempt, a hung one) reads better
        # than the bare intent's, unless the run got to complete (or be stopped) anyway.
        own = bool(a.stop_reason) and end.state in (RunState.KILLED, RunState.FAILED, RunState.STOPPED)
        reason = a.stop_reason if own else end.reason
        if was_lost and not (own and end.state is RunState.KILLED):
            reason += " (while its host was away)"
        failed_stage = stage if end.state is RunState.FAILED and stage not in (None, "-") else None
        return self._end(a, end.state, reason, code, was_lost, failed_stage)

    def _end(self, a: Attempt, state: RunState, reason: str, code: int | None, was_lost: bool = False,
             stage: str | None = None) -> list[Action]:
        a.phase = Phase.ENDED
        out: list[Action] = [Record(a.id, state, reason, code, stage)]
        level = "info" if state in (RunState.COMPLETED, RunState.KILLED, RunState.STOPPED) else "warning"
        out.append(Note(level, f"{a.name} {state.value}: {reason}"))
        out += self.breaker.count(a, state)
        self.book(a.study, a.trial, a.replicate).live.discard(a.id)
        if not was_lost:
            out += self.trials.after_end(a.study, a.trial, state, a.replicate)
        elif state is RunState.COMPLETED:
            out += self.trials.completed_after_loss(a)
        if a.clean:
            out += self._release(a)
        return out

    def _on_Cleaned(self, e: Cleaned) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.clean:
            return []
        a.clean = True
        out: list[Action] = []
        if e.ended:
            out.append(Note("warning", f"{a.name}: ended {len(e.ended)} process(es) it left behind "
                                       f"(pids {', '.join(map(str, e.ended[:10]))})"))
        if a.phase is Phase.ENDED:
            out += self._release(a)
        return out

    def _release(self, a: Attempt) -> list[Action]:
        del self.attempts[a.id]
        return [Unwatch(a.id, a.host), Release(a.id, a.host, a.gpus, a.study)]

    def _on_HostDown(self, e: HostDown) -> list[Action]:
        self.hosts_down.setdefault(e.host, e.at)
        for a in self.attempts.values():
            if a.host == e.host and a.unreachable_since is None:
                a.unreachable_since = e.at
        return []

    def _on_HostUp(self, e: HostUp) -> list[Action]:
        self.hosts_down.pop(e.host, None)
        out: list[Action] = []
        for a in list(self.attempts.values()):
            if a.host != e.host:
                continue
            a.unreachable_since = None
            if a.phase is Phase.ENDED and a.clean:
                continue
            # Watched again from what is here: exits that happened meanwhile come back
            # with their real status, and the log goes on from the local copy's end.
            out.append(Watch(a.id, a.host, a.log_size, a.pid, a.start))
            if a.stop_intent is not None and a.phase is not Phase.ENDED and a.pid is not None:
                out.append(Signal(a.id, a.host))
        return out

    def _on_StopRequested(self, e: StopRequested) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is Phase.ENDED:
            return []
        return self._stop(a, e.intent, e.reason, e.at)

    def _stop(self, a: Attempt, intent: StopIntent, reason: str = "", at: float = 0.0) -> list[Action]:
        if a.stop_intent is not None:
            return []
        a.stop_intent = intent
        a.stop_reason = reason
        fields: tuple[tuple[str, object], ...] = (("stop_intent", intent.value), ("stop_sent", at))
        if reason:  # hypd's own words, which its record ends with (after a restart too)
            fields += (("stop_reason", reason),)
        out: list[Action] = [Persist(a.id, fields)]
        # Without a pid (its launch is under way) the Signal goes once it is known.
        if a.pid is not None and a.host not in self.hosts_down:
            out.append(Signal(a.id, a.host))
        return out

    def _on_KeepaliveAsked(self, e: KeepaliveAsked) -> list[Action]:
        a = self._attempt(e.run)
        if a is None or a.phase is Phase.ENDED:
            return []
        a.keepalive = e.seconds
        return [Persist(a.id, (("keepalive", e.seconds),)),  # kept across a restart (its line is read once)
                Note("info", f"{a.name}: keepalive window set to {format_duration(e.seconds)} by the run")]

    def _on_Tick(self, e: Tick) -> list[Action]:
        self.clock = e.now
        out: list[Action] = []
        for a in list(self.attempts.values()):
            if a.store_retry_at is not None and e.now >= a.store_retry_at:
                a.store_retry_at = None
                out += self._advance(a, progressed=True)
            if a.phase is Phase.RUNNING and a.stop_intent is None and a.deadline is not None \
                    and a.queued is None and e.now >= a.deadline:
                out += self._stop(a, StopIntent.TIMEOUT, at=e.now)
            out += self._keepalive(a, e.now)
            since = a.unreachable_since
            # A run whose exit was seen is not lost: only its log is left to store, here.
            if (a.phase in (Phase.RUNNING, Phase.LAUNCHING) and a.exit is None and since is not None
                    and e.now - since >= self.lost_after.get(a.host, 120.0)):
                out += self._lose(a, e.now - since)
        return out

    def _keepalive(self, a: Attempt, now: float) -> list[Action]:
        """End as hung a running attempt whose log has not grown for its keepalive window."""
        window = a.keepalive or self.rules.get(a.study, StudyRules()).keepalive
        if not silent_past(a, window, now):
            return []
        return self._stop(a, StopIntent.KEEPALIVE, f"no output for {format_duration(window or 0)} (keepalive)", now)

    def _lose(self, a: Attempt, away: float) -> list[Action]:
        """Its host has been away past its grace: its slot no longer counts and its trial
        is retried elsewhere (within the budget), or given up."""
        a.phase = Phase.LOST
        reason = f"host {a.host} unreachable for {_duration(away)}"
        self.book(a.study, a.trial, a.replicate).live.discard(a.id)
        # One asked to end (killed, early-stopped) is not run again for being lost.
        as_trial = _ASKED_END.get(a.stop_intent, RunState.LOST) if a.stop_intent else RunState.LOST
        return [Record(a.id, RunState.LOST, reason), Note("warning", f"{a.name} lost: {reason}"),
                *self.trials.after_end(a.study, a.trial, as_trial, a.replicate)]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
