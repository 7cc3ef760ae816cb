"""Which job is which run, and what one look at the queue says of each. Pure.

The Slurm host gives the tracker each tick's `squeue` (parsed), the exit files read after
it, and the size of each run's log here and on the cluster; the tracker answers with the
lifecycle events that follow (hypd.lifecycle: Launched, LaunchFailed, Alive, Queued,
LogGrew, Exited, Cleaned). A run's end is said only once its whole log is here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypd import lifecycle as lc
from hypd.slurm.commands import Job
from hypd.wrapper import parse_exit_file

MISSING_POLLS = 3  # looks at the queue in a row without a run's job before it is given up on
START = "slurm"  # a run's proc_start: its pid column holds its job id


@dataclass
class Tracked:
    run: int
    ctl: str  # its control folder on the cluster: run.sh, exit, log; the job's comment
    log: str  # the daemon's copy of its log
    job: str | None = None
    launching: bool = False  # Launched not said yet
    submitting: bool = False  # its sbatch is under way
    alive_told: bool = False
    queue_told: str | None = "?"  # the last Queued reason said ("?": none said yet)
    size_told: int = 0
    missing: int = 0
    acct_asked: bool = False
    ended: bool = False

    @property
    def remote_log(self) -> str:
        return f"{self.ctl}/log"

    @property
    def exit_file(self) -> str:
        return f"{self.ctl}/exit"


@dataclass(frozen=True)
class Look:
    """One tick's reading. jobs: from squeue; exits: run -> exit file text (None: none);
    sizes: run -> (its log here, its log on the cluster; -1: none yet); acct: job ->
    (state, exit status) from sacct, for jobs squeue no longer shows (None: not asked or
    not available)."""

    jobs: tuple[Job, ...]
    exits: dict[int, str | None]
    sizes: dict[int, tuple[int, int]]
    acct: dict[str, tuple[str, int | None]] | None = None


class Tracker:
    def __init__(self) -> None:
        self.runs: dict[int, Tracked] = {}

    # ------------------------------------------------------------ what the host is asked

    def launching(self, run: int, ctl: str, log: str) -> Tracked:
        t = self.runs[run] = Tracked(run, ctl, log, launching=True, submitting=True)
        return t

    def watch(self, run: int, ctl: str, log: str, job: str | None) -> None:
        t = self.runs.get(run)
        if t is None or t.ended:
            self.runs[run] = Tracked(run, ctl, log, job=job)
        else:
            # Watched anew (its login node is back): its job, seen again, is said alive
            # again, which brings back a run recorded lost meanwhile (or ends it if retried).
            t.alive_told = False
            if t.job is None and job is not None:
                t.job = job

    def forget(self, run: int) -> None:
        self.runs.pop(run, None)

    def job_of(self, run: int) -> str | None:
        t = self.runs.get(run)
        return t.job if t is not None else None

    def live(self) -> list[Tracked]:
        return [t for t in self.runs.values() if not t.ended]

    def acct_wanted(self) -> list[str]:
        """Jobs squeue stopped showing before their end was seen: sacct is asked, once
        (its answer, if the cluster keeps accounting, comes with the next look)."""
        wanted = [t for t in self.live() if t.job and t.missing >= 2 and not t.acct_asked]
        for t in wanted:
            t.acct_asked = True
        return [t.job for t in wanted if t.job]

    def submitted(self, run: int, job: str) -> list[object]:
        """sbatch answered with the run's job id."""
        t = self.runs.get(run)
        if t is None:
            return []
        t.submitting = False
        if t.job is None:
            t.job = job
        if not t.launching:
            return []  # a look at the queue found it first
        t.launching, t.alive_told = False, True
        return [lc.Launched(run, int(job), START)]

    # ------------------------------------------------------------ one look

    def look(self, look: Look) -> list[object]:
        by_id = {j.id: j for j in look.jobs}
        by_comment: dict[str, Job] = {}
        for j in look.jobs:
            if j.comment and (j.comment not in by_comment or int(j.id) > int(by_comment[j.comment].id)):
                by_comment[j.comment] = j
        out: list[object] = []
        for t in self.live():
            job = by_id.get(t.job) if t.job else by_comment.get(t.ctl)
            out += self._log(t, look.sizes.get(t.run))
            if job is not None:
                out += self._seen(t, job, look)
            else:
                out += self._missing(t, look)
        return out

    def _log(self, t: Tracked, sizes: tuple[int, int] | None) -> list[object]:
        if sizes is None or sizes[0] <= t.size_told:
            return []
        t.size_told = sizes[0]
        return [lc.LogGrew(t.run, sizes[0])]

    def _complete(self, t: Tracked, look: Look) -> bool:
        """Its whole log is here (as the cluster has it after the job ended)."""
        here, there = look.sizes.get(t.run, (0, -1))
        return here >= there

    def _seen(self, t: Tracked, job: Job, look: Look) -> list[object]:
        out: list[object] = []
        t.missing = 0
        if t.job is None:
            t.job = job.id
        if t.launching and not t.submitting:
            t.launching, t.alive_told = False, True
            out.append(lc.Launched(t.run, int(job.id), START))
        elif t.launching:
            return out  # sbatch's answer says it
        phase = job.phase
        if phase != "ended" and not t.alive_told:
            t.alive_told = True
            out.append(lc.Alive(t.run, int(job.id), START))
        if phase == "queued":
            reason = job.reason or job.state.lower()
            if reason != t.queue_told:
                t.queue_told = reason
                out.append(lc.Queued(t.run, reason))
        elif phase == "running":
            if t.queue_told is not None:
                t.queue_told = None
                out.append(lc.Queued(t.run, None))
        elif self._complete(t, look):
            out += self._end(t, look.exits.get(t.run), job.state)
        return out

    def _missing(self, t: Tracked, look: Look) -> list[object]:
        if t.submitting:
            return []
        t.missing += 1
        exit_text = look.exits.get(t.run)
        if exit_text is not None and parse_exit_file(exit_text) is not None and self._complete(t, look):
            return self._end(t, exit_text, None)
        acct = (look.acct or {}).get(t.job or "")
        if acct is not None and self._complete(t, look):
            return self._end(t, exit_text, acct[0], acct[1])
        if t.missing < MISSING_POLLS or (t.job is not None and not t.acct_asked):
            return []
        if t.launching:  # sbatch never answered, and no job carries its folder: it never reached Slurm
            self.forget(t.run)
            return [lc.LaunchFailed(t.run, "its job never reached the cluster's queue", reached_host=False)]
        return self._end(t, exit_text, None)

    def _end(self, t: Tracked, exit_text: str | None, state: str | None, code: int | None = None
             ) -> list[object]:
        t.ended = True
        parsed = parse_exit_file(exit_text) if exit_text is not None else None
        status, stage = parsed if parsed is not None else (code, None)
        if status is None and state == "COMPLETED":
            status, stage = 0, "-"
        return [lc.Exited(t.run, status, stage, t.size_told, cause=state), lc.Cleaned(t.run)]
