"""Slurm's commands as hypd uses them, and what their output says. Pure.

One `squeue` a tick reads every job of the user's (all states: Slurm keeps ended jobs for
MinJobAge, with how they ended), so hypd's runs cost the same one command however many
there are. A job is hypd's run by its comment, the run's control folder on the shared
filesystem. `sacct` (only where the cluster keeps accounting) is asked about jobs that
`squeue` no longer shows, once each; `sinfo` says how many GPUs of the partition are idle.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hypd.slurm.config import SlurmConfig

JOB_FORMAT = "%i|%T|%r|%N|%k"  # id, state, reason, nodes, comment (last: it may hold anything)
# The comment is the run's control folder: the one thing that finds a job whose id was not
# stored (the daemon died between sbatch and storing it), so nothing is submitted twice.

QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                          "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
# Everything else (RUNNING, CONFIGURING, COMPLETING, SUSPENDED, STOPPED, SIGNALING, ...)
# holds the job's resources: running.


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # Slurm's, e.g. PENDING, RUNNING, COMPLETED, TIMEOUT, NODE_FAIL
    reason: str = ""  # why it is pending (Priority, Resources, ...); "" when none
    nodes: str = ""
    comment: str = ""

    @property
    def phase(self) -> str:
        """"queued" | "running" | "ended"."""
        if self.state in QUEUED_STATES:
            return "queued"
        if self.state in ENDED_STATES:
            return "ended"
        return "running"


# ----------------------------------------------------------------------------- commands

def squeue_argv() -> list[str]:
    return ["squeue", "--me", "--noheader", "--states=all", "--format=" + JOB_FORMAT]


def sinfo_argv(partition: str | None) -> list[str]:
    return ["sinfo", "--noheader", "--Node", *([f"--partition={partition}"] if partition else []),
            "--Format=NodeList:|,StateLong:|,Gres:|,GresUsed:"]


def sacct_argv(jobs: Iterable[str]) -> list[str]:
    return ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=" + ",".join(jobs),
            "--format=JobID,State,ExitCode"]


def sbatch_argv(config: SlurmConfig, *, gpus: int, ctl_dir: str, log: str, label: str, script: str) -> list[str]:
    """Submit one run: its output appended to `log` (a requeued job goes on writing where
    it was), its GPUs as GRES, the user's own options last (they may override ours)."""
    argv = ["sbatch", "--parsable", f"--job-name=hypd:{label}" if label else "--job-name=hypd",
            f"--comment={ctl_dir}", f"--output={log}", "--open-mode=append", f"--chdir={ctl_dir}"]
    if config.partition:
        argv.append(f"--partition={config.partition}")
    if config.account:
        argv.append(f"--account={config.account}")
    if gpus:
        argv.append(f"--gres=gpu:{gpus}")
    argv += list(config.sbatch)
    argv.append(script)
    return argv


def scancel_argv(jobs: Sequence[str]) -> list[str]:
    return ["scancel", *jobs]


def shell_line(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# ----------------------------------------------------------------------------- output

def parse_sbatch(out: str) -> str | None:
    """The job id from `sbatch --parsable` ("123" or "123;cluster"); None if there is none."""
    for line in out.splitlines():
        word = line.strip().split(";")[0]
        if word.isdigit():
            return word
    return None


def parse_squeue(out: str) -> list[Job]:
    """Jobs from `squeue --format=JOB_FORMAT`; lines that are not (a warning) are skipped."""
    jobs = []
    for line in out.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) != 5 or not re.fullmatch(r"\d+(_\d+)?", parts[0]):
            continue
        job, state, reason, nodes, comment = parts
        state = state.strip().upper().split()[0] if state.strip() else "UNKNOWN"
        reason = "" if reason.strip() in ("None", "(null)") else reason.strip().strip("()")
        jobs.append(Job(job, state, reason, nodes.strip(), "" if comment == "(null)" else comment.strip()))
    return jobs


def parse_sacct(out: str) -> dict[str, tuple[str, int | None]]:
    """job id -> (state, exit status) from `sacct --parsable2 --format=JobID,State,ExitCode`."""
    found: dict[str, tuple[str, int | None]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        state = parts[1].split()[0].upper() if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0"
        code, _, _signal = parts[2].partition(":")
        found[parts[0]] = (state, int(code) if code.isdigit() else None)
    return found


def parse_sinfo(out: str) -> int | None:
    """Idle GPUs over the partition's nodes that take jobs, from `sinfo_argv`'s output
    ("node|idle|gpu:4|gpu:2(IDX:0-1)"); None when nothing could be read."""
    idle = 0
    seen = False
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 4:
            continue
        seen = True
        state = parts[1].lower()
        if any(s in state for s in ("down", "drain", "fail", "maint", "reserved", "not_responding", "unknown")):
            continue
        idle += max(0, _gpu_count(parts[2]) - _gpu_count(parts[3]))
    return idle if seen else None


def _gpu_count(gres: str) -> int:
    """GPUs in a GRES list such as "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:1", "gpu:2(IDX:0-1)"."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres):
        item = re.sub(r"\(.*?\)", "", item).strip()
        fields = item.split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        count = fields[-1]
        if count.isdigit():
            total += int(count)
    return total
