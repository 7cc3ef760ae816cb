"""A study that goes wrong, end to end: the circuit breaker, what `info`, `ls`, `studies`
and `wait` say about failed runs, and how trials are counted and numbered."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from conftest import DaemonProc, wait_for
from hypd.cli import WAIT_NO_RESULT, WAIT_PAUSED
from hypd.ipc import ExitCode

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = {parallel}
retries = {retries}
{extra}

[params]
x = {{ type = "choice", values = {values} }}

[run]
command = "{command}"
"""

# A typo'd import, as a user's train.py would have: a traceback on stderr.
MISSING_MODULE = r"python3 -c 'print(\"starting\", flush=True); import hypd_no_such_module'"


def study(daemon: DaemonProc, name: str, command: str, n: int = 12, parallel: int = 2, retries: int = 0,
          extra: str = "") -> str:
    return str(daemon.write_study(name, STUDY.format(name=name, values=list(range(1, n + 1)), parallel=parallel,
                                                     retries=retries, command=command, extra=extra)))


def test_a_study_whose_runs_all_fail_pauses_itself_and_says_why(daemon: DaemonProc) -> None:
    daemon.cli("submit", study(daemon, "typo", MISSING_MODULE, retries=1))
    summary = wait_for(lambda: next(s for s in daemon.call("studies") if s["name"] == "typo")["paused"] and
                       next(s for s in daemon.call("studies") if s["name"] == "typo"), 60, what="typo to pause")
    why = "5 runs in a row failed — last error: ModuleNotFoundError: No module named 'hypd_no_such_module'"
    assert summary["pause_reason"] == why
    wait_for(lambda: not daemon.runs(state="running"), 30, what="the runs under way to end")
    runs = daemon.runs(study="typo")
    # 5 failures and what was under way then (parallel 2), not 12 trials × 2 attempts.
    assert 5 <= len([r for r in runs if r["state"] == "failed"]) <= 6
    assert len([r for r in runs if r["state"] != "pending"]) <= 6

    studies = daemon.cli("studies").stdout
    assert f"typo paused: {why}" in studies and "`hypd resume typo`" in studies
    line = next(line for line in studies.splitlines() if line.startswith("typo "))
    assert line.split()[2:4] == ["paused", "0/12"]  # trials, not attempts

    waited = daemon.cli("wait", "typo", check=False)
    assert waited.returncode == WAIT_PAUSED and why in waited.stderr
    assert f"study typo paused: {why}" in (daemon.home / "daemon.log").read_text()

    info = daemon.cli("info", "typo:1").stdout
    assert "exit       status 1 in its command" in info
    tail = info.split("log end", 1)[1].splitlines()[1:]
    assert tail[0].strip() == "starting" and tail[1].strip().startswith("Traceback")  # stderr too
    assert [t.strip() for t in tail[-2:]] == ["ModuleNotFoundError: No module named 'hypd_no_such_module'",
                                              "[hypd] stage main failed (status 1)"]
    ls = daemon.cli("ls", "--study", "typo", "--state", "failed").stdout.splitlines()
    assert ls[1].endswith("[exited with status 1] ModuleNotFoundError: No module named 'hypd_no_such_module'")

    # Resumed, it gets another 5 in a row before pausing again.
    daemon.cli("resume", "typo")
    assert daemon.call("studies")[0]["pause_reason"] == ""
    wait_for(lambda: next(s for s in daemon.call("studies") if s["name"] == "typo")["paused"], 60,
             what="typo to pause again")
    failed = len(daemon.runs(study="typo", state="failed"))
    assert 10 <= failed <= 12


def test_wait_exit_status_and_counting_trials_not_attempts(daemon: DaemonProc) -> None:
    # Every run fails, retried once each; no breaker: the study finishes with no result.
    daemon.cli("submit", study(daemon, "doomed", "exit 3", n=3, parallel=3, retries=1, extra="max_failures = 0"))
    waited = daemon.cli("wait", "doomed", "--every", "0.2", check=False, timeout=90)
    assert waited.returncode == WAIT_NO_RESULT, waited.stderr
    # Not a terminal: plain lines, the last one the final count.
    lines = waited.stdout.splitlines()
    assert lines[-2].startswith("doomed: 0/3 done · 0 running · 3 failed · 3 retried")
    assert lines[-1] == "study doomed finished: 0 completed, 3 failed, 0 killed, 0 stopped (3 retried)"
    assert "\r" not in waited.stdout

    # Trials number from 1 everywhere: {trial}, HYPD_TRIAL, the CLI.
    daemon.cli("submit", study(daemon, "fine", "echo trial={trial} env=$HYPD_TRIAL x={x}", n=3, parallel=1))
    waited = daemon.cli("wait", "fine", check=False, timeout=90)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.splitlines()[-1] == "study fine finished: 3 completed, 0 failed, 0 killed, 0 stopped"
    assert daemon.run("fine:1")["last_line"] == "trial=1 env=1 x=1"
    assert daemon.cli_json("ls", "--study", "fine")[-1]["trial"] == 1  # (newest first)
    assert "(trial 1, attempt 1" in daemon.cli("info", "fine:1").stdout
    line = next(line for line in daemon.cli("studies").stdout.splitlines() if line.startswith("fine "))
    assert line.split()[2:4] == ["finished", "3/3"]
    doomed = next(line for line in daemon.cli("studies").stdout.splitlines() if line.startswith("doomed "))
    assert doomed.split()[2:9] == ["finished", "0/3", "0", "0", "3", "0", "3"]  # failed 3, retried 3

    assert daemon.cli("wait", "nosuch", check=False).returncode == ExitCode.NOT_FOUND


def test_wait_on_a_terminal_draws_one_line_and_exits_3_when_the_daemon_goes(daemon: DaemonProc) -> None:
    daemon.cli("submit", study(daemon, "long", "sleep 60", n=2, parallel=2))
    daemon.wait_state("long:1", "running")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hypd", "wait", "long"], env=daemon.env, stdin=follower,
                            stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    seen = b""

    def read() -> bytes:
        nonlocal seen
        seen += os.read(leader, 4096)
        return seen
    wait_for(lambda: b"2 running" in read(), 20, what="a progress line")
    daemon.stop(kill_runs=True)
    assert proc.wait(30) == ExitCode.NO_DAEMON
    assert b"\r\x1b[2Klong: 0/2 done \xc2\xb7 2 running" in seen
    assert b"went away" in proc.stderr.read()  # type: ignore[union-attr]
    os.close(leader)
