"""hypd.wrapper: the generated run script, run for real with /bin/sh in a temporary
folder; the exit file parser; the GPU environment."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypd.wrapper import (
    STAGE_MARK,
    PrepareStep,
    RunScript,
    gpu_env,
    parse_exit_file,
    prepare_heartbeat,
    script_text,
)


@dataclass
class Result:
    rc: int
    exit: str | None
    log: str
    pid: int
    script_pid: int | None
    ctl: Path
    run_dir: Path
    workdir: Path


def run_script(tmp_path: Path, stages: Sequence[tuple[str, str]], env: Mapping[str, str] | None = None,
               setup: str = "", workdir: Path | None = None, path: str | None = None,
               prepare: PrepareStep | None = None) -> Result:
    ctl = tmp_path / "ctl"
    ctl.mkdir(exist_ok=True)
    run_dir = tmp_path / "runs" / "r1"
    if workdir is None:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
    spec = RunScript(run="s:1", ctl_dir=str(ctl), run_dir=str(run_dir), workdir=str(workdir), env=env or {},
                     stages=stages, setup=setup, prepare=prepare)
    script = ctl / "run.sh"
    script.write_text(script_text(spec))
    with open(ctl / "log", "wb") as log:
        proc = subprocess.Popen(["/bin/sh", str(script)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
                                env=None if path is None else {**os.environ, "PATH": path})
        rc = proc.wait(timeout=20)
    exit_path = ctl / "exit"
    pid_path = ctl / "pid"
    return Result(rc, exit_path.read_text() if exit_path.exists() else None, (ctl / "log").read_text(),
                  proc.pid, int(pid_path.read_text()) if pid_path.exists() else None, ctl, run_dir, workdir)


# ------------------------------------------------------------------ running the script

def test_the_prepare_step_runs_once_and_a_failed_one_fails_the_runs_after_it(tmp_path: Path) -> None:
    where = tmp_path / "prep" / "abc"
    count = tmp_path / "count"
    step = PrepareStep(f"echo x >> {count}; echo data > \"$HYPD_PREPARE_DIR/d\"", str(where))
    stage = [("main", 'cat "$HYPD_PREPARE_DIR/d"')]
    first = run_script(tmp_path, stage, prepare=step)
    second = run_script(tmp_path, stage, prepare=step)
    assert (first.exit, second.exit) == ("0 -\n", "0 -\n") and "data" in second.log
    assert count.read_text() == "x\n" and (tmp_path / "prep" / "abc.done").exists()
    failing = PrepareStep(f"echo y >> {count}; exit 4", str(tmp_path / "prep" / "def"))
    assert run_script(tmp_path, stage, prepare=failing).exit == "4 prepare\n"
    again = run_script(tmp_path, stage, prepare=failing)  # not run again: the run fails with it
    assert again.exit == "125 prepare\n" and "failed on this host earlier" in again.log
    assert count.read_text() == "x\ny\n"


def test_a_run_waiting_for_another_runs_prepare_says_so_every_heartbeat(tmp_path: Path) -> None:
    # Another run holds the prepare's lock (as flock(1) takes it) for a while: this one waits,
    # printing a line each heartbeat (output a keepalive sees), then finds it done and goes on.
    where = tmp_path / "prep" / "abc"
    where.parent.mkdir()
    (tmp_path / "prep" / "abc.done").write_text("1\n")
    step = PrepareStep("echo should-not-run", str(where), heartbeat=0.3)
    with open(f"{where}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        releaser = threading.Timer(1.6, fcntl.flock, (lock, fcntl.LOCK_UN))
        releaser.start()
        try:
            r = run_script(tmp_path, [("main", "echo trained")], prepare=step)
        finally:
            releaser.join()
    assert r.exit == "0 -\n", r.log
    assert r.log.count("waiting for the prepare step on this host") >= 3
    assert "trained" in r.log and "should-not-run" not in r.log


def test_the_prepare_heartbeat_is_a_third_of_the_keepalive_within_bounds() -> None:
    assert prepare_heartbeat(None) == 30.0
    assert prepare_heartbeat(60.0) == 20.0
    assert prepare_heartbeat(600.0) == 30.0
    assert prepare_heartbeat(1.5) == 1.0


def test_success_writes_zero_dash_and_the_pid(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", "echo hello")])
    assert r.rc == 0
    assert r.exit == "0 -\n"
    assert parse_exit_file(r.exit) == (0, "-")
    assert r.script_pid == r.pid
    assert "hello" in r.log
    assert sorted(p.name for p in r.ctl.iterdir()) == ["exit", "log", "pid", "run.sh"]  # no .tmp left


def test_stages_run_in_order_in_the_workdir(tmp_path: Path) -> None:
    stages = [(name, f"echo {name} $(pwd) >> order.txt") for name in ("prep", "train", "eval")]
    r = run_script(tmp_path, stages)
    assert r.exit == "0 -\n"
    order = (r.workdir / "order.txt").read_text().splitlines()
    assert order == [f"{name} {r.workdir}" for name in ("prep", "train", "eval")]
    for name in ("prep", "train", "eval"):
        assert f"{STAGE_MARK} stage {name} started" in r.log


def test_a_single_stage_is_not_announced(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", "true")])
    assert STAGE_MARK not in r.log


def test_run_dir_is_created(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", 'test -d "$RUN_DIR" && touch "$RUN_DIR/made"')],
                   env={"RUN_DIR": str(tmp_path / "runs" / "r1")})
    assert r.exit == "0 -\n", r.log
    assert (r.run_dir / "made").exists()


def test_a_failing_stage_stops_the_rest(tmp_path: Path) -> None:
    stages = [("prep", "touch prep.done"), ("train", "echo boom; exit 3"), ("eval", "touch eval.done")]
    r = run_script(tmp_path, stages)
    assert r.rc == 3
    assert r.exit == "3 train\n"
    assert parse_exit_file(r.exit) == (3, "train")
    assert (r.workdir / "prep.done").exists()
    assert not (r.workdir / "eval.done").exists()
    assert f"{STAGE_MARK} stage train failed (status 3)" in r.log
    assert "stage eval started" not in r.log


def test_first_stage_failing(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", "false")])
    assert (r.rc, r.exit) == (1, "1 main\n")


def test_a_stage_killed_by_a_signal(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("train", "kill -9 $$"), ("eval", "touch eval.done")])
    assert r.exit == "137 train\n"
    assert r.rc == 137
    assert not (r.workdir / "eval.done").exists()


def test_env_values_survive_quoting(tmp_path: Path) -> None:
    nasty = "it's a \"test\" with $HOME and `backticks` and \\ and ; rm -rf x"
    env = {"PLAIN": "1", "NASTY": nasty, "EMPTY": "", "LINES": "a\nb"}
    cmd = 'printf "%s|%s|%s|%s" "$PLAIN" "$NASTY" "$EMPTY" "$LINES" > env.out'
    r = run_script(tmp_path, [("main", cmd)], env=env)
    assert r.exit == "0 -\n"
    assert (r.workdir / "env.out").read_text() == f"1|{nasty}||a\nb"


def test_env_reaches_every_stage_and_setup(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("a", 'echo "a $V" >> o'), ("b", 'echo "b $V" >> o')], env={"V": "x y"},
                   setup='echo "setup $V" >> o')
    assert r.exit == "0 -\n"
    assert (r.workdir / "o").read_text().splitlines() == ["setup x y", "a x y", "b x y"]


def test_every_stage_and_setup_carry_the_ctl_marker(tmp_path: Path) -> None:
    # HYPD_CTL=<ctl folder> marks every process of the run, even one that left its process
    # group; the run's own env cannot override it.
    r = run_script(tmp_path, [("a", 'echo "a $HYPD_CTL" >> o'), ("b", 'sh -c \'echo "b $HYPD_CTL"\' >> o')],
                   env={"HYPD_CTL": "/somewhere/else"}, setup='echo "setup $HYPD_CTL" >> o')
    assert r.exit == "0 -\n", r.log
    assert (r.workdir / "o").read_text().splitlines() == [f"{name} {r.ctl}" for name in ("setup", "a", "b")]


def test_the_ctl_marker_survives_quoting(tmp_path: Path) -> None:
    base = tmp_path / "it's $HOME \"x\""
    base.mkdir()
    r = run_script(base, [("main", 'printf %s "$HYPD_CTL" > marker')])
    assert r.exit == "0 -\n", r.log
    assert (r.workdir / "marker").read_text() == str(r.ctl)


def test_stage_commands_are_passed_verbatim(tmp_path: Path) -> None:
    cmd = """python3 -c 'import sys; open("args.out", "w").write(repr(sys.argv[1:]))' "a b" 'c"d' "e'f" """
    r = run_script(tmp_path, [("main", cmd)])
    assert r.exit == "0 -\n", r.log
    assert (r.workdir / "args.out").read_text() == repr(["a b", 'c"d', "e'f"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_stages_run_in_bash_when_there_is_one(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", '[[ -n "$BASH_VERSION" ]] && echo in-bash')])
    assert r.exit == "0 -\n"
    assert "in-bash" in r.log


ACTIVATE = 'VIRTUAL_ENV="$PWD/venv"; export VIRTUAL_ENV; PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH\n'


def venv(workdir: Path) -> None:
    """A folder shaped like a virtualenv: bin/activate (meant to be sourced) and a tool."""
    (workdir / "venv" / "bin").mkdir(parents=True)
    (workdir / "venv" / "bin" / "activate").write_text(ACTIVATE)
    tool = workdir / "venv" / "bin" / "venv-tool"
    tool.write_text("#!/bin/sh\necho tool-from-venv\n")
    tool.chmod(0o755)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_source_in_setup_works_under_a_dash_bin_sh_and_its_environment_reaches_the_command(tmp_path: Path
                                                                                           ) -> None:
    # The README's own example: on Debian and Ubuntu /bin/sh is dash, which has no `source`.
    if os.path.basename(os.path.realpath("/bin/sh")) != "dash":
        pytest.skip("this host's /bin/sh is not dash")
    work = tmp_path / "work"
    work.mkdir()
    venv(work)
    r = run_script(tmp_path, [("train", 'echo "$VIRTUAL_ENV"; venv-tool; [[ -n "$BASH_VERSION" ]] && echo bash'),
                              ("test", "venv-tool")],
                   setup="source venv/bin/activate", workdir=work)
    assert r.exit == "0 -\n", r.log
    assert r.log.splitlines()[1:4] == [str(work / "venv"), "tool-from-venv", "bash"]
    assert r.script_pid == r.pid  # re-executed in place: the same process (group)


def test_without_bash_the_script_setup_and_stages_run_in_sh(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with no bash on it
    bin_dir.mkdir()
    for tool in ("mkdir", "mv", "date"):
        os.symlink(shutil.which(tool), bin_dir / tool)  # type: ignore[arg-type]
    work = tmp_path / "work"
    work.mkdir()
    venv(work)
    r = run_script(tmp_path, [("main", "venv-tool")], env={}, setup=". venv/bin/activate", workdir=work,
                   path=str(bin_dir))
    assert r.exit == "0 -\n", r.log
    assert "tool-from-venv" in r.log


def test_setup_runs_first_and_its_shell_state_carries_over(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", 'echo "main $FROM_SETUP" >> o')],
                   setup="echo setup >> o; FROM_SETUP=yes; export FROM_SETUP")
    assert r.exit == "0 -\n"
    assert (r.workdir / "o").read_text().splitlines() == ["setup", "main yes"]


@pytest.mark.parametrize("setup, status", [("false", 1), ("(exit 5)", 5), ("no-such-command-xyz", 127)])
def test_setup_failure_is_recorded_as_stage_setup(tmp_path: Path, setup: str, status: int) -> None:
    r = run_script(tmp_path, [("main", "touch main.done")], setup=setup)
    assert r.rc == status
    assert r.exit == f"{status} setup\n"
    assert parse_exit_file(r.exit) == (status, "setup")
    assert not (r.workdir / "main.done").exists()


def test_missing_workdir_gives_126_setup(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    r = run_script(tmp_path, [("main", "touch /dev/null")], workdir=missing)
    assert r.rc == 126
    assert r.exit == "126 setup\n"
    assert f"{STAGE_MARK} cannot enter workdir {missing}" in r.log
    assert r.script_pid == r.pid  # the pid is written before anything can fail


def test_unwritable_run_dir_gives_126_setup(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    r = run_script(tmp_path, [("main", "touch main.done")])
    assert (r.rc, r.exit) == (126, "126 setup\n")
    assert not (r.workdir / "main.done").exists()


def test_paths_with_spaces_and_quotes(tmp_path: Path) -> None:
    base = tmp_path / "it's a \"dir\""
    base.mkdir()
    work = base / "work dir"
    work.mkdir()
    r = run_script(base, [("main", "pwd > here")], workdir=work)
    assert r.exit == "0 -\n", r.log
    assert (work / "here").read_text().strip() == str(work)
    assert r.run_dir.is_dir()


def test_script_text_shape() -> None:
    spec = RunScript(run="s:1", ctl_dir="/c", run_dir="/r", workdir="/w", env={"A": "1"}, stages=[("main", "x")])
    text = script_text(spec)
    assert text.startswith("#!/bin/sh\n")
    assert text.endswith("finish 0 -\n")
    assert "export A=1" in text
    assert "export HYPD_CTL=/c" in text
    assert text.index("export HYPD_CTL=/c") < text.index("$run_shell -c x")  # before any stage runs
    assert "stage=setup" not in text  # no setup line when none is given


# ------------------------------------------------------------------ parse_exit_file

@pytest.mark.parametrize("text, expected", [
    ("0 -\n", (0, "-")),
    ("0 -", (0, "-")),
    ("3 train\n", (3, "train")),
    ("137 main\n", (137, "main")),
    ("126 setup\n", (126, "setup")),
    ("  1   eval  \n\n", (1, "eval")),
    ("1\tx", (1, "x")),
    ("-1 x", (-1, "x")),
    ("", None),
    ("\n", None),
    ("0", None),  # written halfway
    ("0 ", None),
    ("x -", None),
    ("1.5 -", None),
    ("0 - extra", None),
    ("- 0", None),
])
def test_parse_exit_file(text: str, expected: tuple[int, str] | None) -> None:
    assert parse_exit_file(text) == expected


# ------------------------------------------------------------------ gpu_env

@pytest.mark.parametrize("gpus, visible", [((), ""), ((0,), "0"), ((3, 1), "3,1"), ([0, 1, 2, 3], "0,1,2,3")])
def test_gpu_env(gpus: Sequence[int], visible: str) -> None:
    assert gpu_env(gpus) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": visible}


def test_gpu_env_reaches_the_stage(tmp_path: Path) -> None:
    r = run_script(tmp_path, [("main", 'echo "$CUDA_DEVICE_ORDER/$CUDA_VISIBLE_DEVICES" > g')],
                   env={**gpu_env([2, 5])})
    assert (r.workdir / "g").read_text().strip() == "PCI_BUS_ID/2,5"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_the_script_leads_its_process_group(tmp_path: Path) -> None:
    # Started in a new session (as the hosts start it), the pid it writes is the id of
    # the process group its stages run in: what the daemon signals.
    r = run_script(tmp_path, [("main", "cut -d' ' -f5 /proc/$$/stat > pgid")])
    assert r.exit == "0 -\n"
    assert int((r.workdir / "pgid").read_text()) == r.script_pid == r.pid
