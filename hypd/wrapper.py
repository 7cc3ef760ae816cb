"""The shell script that runs one run's stages on a host. Pure text generation.

The same script runs on the local machine and on SSH hosts. It is started in its own
session (process group) so it outlives the daemon and the SSH connection, writes its pid
first, runs the stages in order, and records `<exit status> <stage>` in an exit file
with an atomic rename, so whoever looks later (a restarted daemon) learns how it ended.

Files in the run's control folder:
    run.sh   this script
    pid      the script's pid (= its process group id)
    exit     "<status> <stage>" once it has ended; stage is "-" when all succeeded. A
             run killed as a whole (its group signalled) leaves none: the daemon, which
             stored why it signalled, knows how it ended.
    log      stdout and stderr of every stage (the daemon starts it with output there)

Every stage (and the setup line) sees HYPD_CTL=<control folder> in its environment.

One shell for everything a user writes: bash. The host watcher starts the script with
/bin/sh (dash on Debian and Ubuntu), so its first line re-executes it with bash where
there is one (same pid, so the same process group); the setup line then runs in that
bash — `source ~/venv/bin/activate` works — and what it exports reaches every stage,
each run by `bash -c`. The script itself keeps to POSIX sh, so a host without bash still
runs it, setup and stages under sh.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STAGE_MARK = "[hypd]"
IN_BASH = "--in-bash"  # the argument the script passes itself when it re-executes with bash
MARKER_VAR = "HYPD_CTL"  # exported by the script: its control folder, the mark of the run's processes


@dataclass(frozen=True)
class RunScript:
    run: str  # "study:N"
    ctl_dir: str
    run_dir: str
    workdir: str
    env: Mapping[str, str]
    stages: Sequence[tuple[str, str]]  # (name, rendered command line)
    setup: str = ""  # a line run before the stages (e.g. activate a virtualenv)
    prepare: PrepareStep | None = None  # the study's [prepare], run once per host before its runs


@dataclass(frozen=True)
class PrepareStep:
    """A study's [prepare] on one host: its command, and its folder there, named by the
    hash of its command and files (a changed one is a new folder: it runs again)."""

    command: str
    dir: str
    # Seconds between the lines a run waiting for another run's prepare prints: the wait is
    # output, so a study's keepalive does not end a run as hung while it waits.
    heartbeat: float = 30.0


def prepare_heartbeat(keepalive: float | None) -> float:
    """How often a run waiting for the prepare step says so: a third of the study's
    keepalive window (between 1 and 30 s), so that the wait never looks like a hang."""
    return 30.0 if keepalive is None else min(30.0, max(1.0, keepalive / 3))


def script_text(spec: RunScript) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"# hypd run {spec.run}: generated; the daemon reads ./exit when this ends.",
        f'if [ "$1" != {IN_BASH} ] && command -v bash >/dev/null 2>&1; then exec bash "$0" {IN_BASH}; fi',
        f"ctl={q(spec.ctl_dir)}",
        'echo $$ > "$ctl/pid.tmp" && mv -f "$ctl/pid.tmp" "$ctl/pid"',
        "finish() {",
        "  printf '%s %s\\n' \"$1\" \"$2\" > \"$ctl/exit.tmp\" && mv -f \"$ctl/exit.tmp\" \"$ctl/exit\"",
        '  exit "$1"',
        "}",
        f'if [ "$1" = {IN_BASH} ]; then run_shell=bash; else run_shell=/bin/sh; fi',
        # A run never writes into an earlier run's outputs (one the daemon's store has lost):
        # a folder already there with files in it is renamed, and the log says so.
        f"if [ -n \"$(ls -A {q(spec.run_dir)} 2>/dev/null)\" ]; then aside={q(spec.run_dir)}.set-aside-$(date +%s); "
        f"mv {q(spec.run_dir)} \"$aside\" && echo {q(f'{STAGE_MARK} {spec.run_dir} held an earlier run')}\"'s files; moved to $aside\"; fi",
        f"mkdir -p {q(spec.run_dir)} || finish 126 setup",
        f"cd {q(spec.workdir)} || {{ echo {q(f'{STAGE_MARK} cannot enter workdir {spec.workdir}')}; finish 126 setup; }}",
    ]
    for key, value in spec.env.items():
        lines.append(f"export {key}={q(value)}")
    # After the run's own env, so nothing overrides it: every process the run starts
    # inherits this marker, which is how the host watcher finds the ones that escaped the
    # process group (setsid) once the run has ended.
    lines.append(f"export {MARKER_VAR}={q(spec.ctl_dir)}")
    if spec.setup:
        lines.append(f"stage=setup; {spec.setup} || finish $? setup")
    if spec.prepare is not None:
        lines += prepare_lines(spec.prepare)
    for name, command in spec.stages:
        lines.append(f"stage={q(name)}")
        if len(spec.stages) > 1:
            lines.append(f"echo {q(f'{STAGE_MARK} stage {name} started')} \"$(date '+%Y-%m-%d %H:%M:%S')\"")
        lines += [
            f"$run_shell -c {q(command)}",
            "rc=$?",
            f'[ "$rc" -eq 0 ] || {{ echo {q(f"{STAGE_MARK} stage {name} failed")} "(status $rc)"; finish "$rc" {q(name)}; }}',
        ]
    lines += ["stage=-", "finish 0 -", ""]
    return "\n".join(lines)


PREPARE_STAGE = "prepare"


def prepare_lines(step: PrepareStep) -> list[str]:
    """Run the study's prepare command once on this host: the first run to get here runs it
    (its output in that run's log) while the others wait on the lock (flock, released
    however the holder ends; a line every `heartbeat` seconds while they wait), and leaves `done` (or `failed`, with its status) in the
    prepare's folder; a run that finds `done` goes on at once, one that finds `failed`
    fails too (stage `prepare`) without running it again. Without flock(1) on the host
    the runs do not wait for each other."""
    q = shlex.quote
    d = step.dir
    return [
        f"prepare_dir={q(d)}; export HYPD_PREPARE_DIR=\"$prepare_dir\"",
        'mkdir -p "$prepare_dir" || finish 126 prepare',
        'exec 9>"$prepare_dir.lock"',
        # flock -w gives up with status 1 after the heartbeat: say so and wait again; any
        # other failure goes on unlocked, as on a host without flock.
        "if command -v flock >/dev/null 2>&1; then",
        f"  until flock -w {step.heartbeat:g} 9; rc=$?; [ \"$rc\" -ne 1 ]; do "
        f"echo {q(f'{STAGE_MARK} waiting for the prepare step on this host')}; done",
        "fi",
        'if [ -f "$prepare_dir.failed" ]; then',
        f"  echo {q(f'{STAGE_MARK} the prepare step failed on this host earlier')} \"($(cat \"$prepare_dir.failed\"))\"",
        f"  finish 125 {PREPARE_STAGE}",
        'elif [ ! -f "$prepare_dir.done" ]; then',
        f"  stage={PREPARE_STAGE}; echo {q(f'{STAGE_MARK} preparing {d}')}",
        f"  $run_shell -c {q(step.command)}",
        "  rc=$?",
        f'  if [ "$rc" -ne 0 ]; then echo "$rc" > "$prepare_dir.failed"; '
        f'echo {q(f"{STAGE_MARK} the prepare step failed")} "(status $rc)"; finish "$rc" {PREPARE_STAGE}; fi',
        '  date +%s > "$prepare_dir.done"',
        "fi",
        "exec 9>&-",
    ]


def parse_exit_file(text: str) -> tuple[int, str] | None:
    """(status, stage) from an exit file, or None if it is not (yet) complete."""
    parts = text.split()
    if len(parts) != 2:
        return None
    try:
        return int(parts[0]), parts[1]
    except ValueError:
        return None


def gpu_env(gpus: Sequence[int]) -> dict[str, str]:
    """What a run needs to see exactly its GPUs, numbered as NVML numbers them."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
