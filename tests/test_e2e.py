"""End to end: a real daemon on a temporary $HYPD_HOME, real processes, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST_CONFIG, REPO, DaemonProc, wait_for
from hypd.ipc import MAX_LINE, ExitCode, socket_path

pytestmark = pytest.mark.slow

# A trial that reports a loss each step; its length and its outcome come from parameters.
SLOW = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = {parallel}
{extra}

[params]
x = {{ type = "choice", values = {values} }}
steps = {steps}

[run]
command = "python3 -u -c 'import sys,time\\nfor i in range({{steps}}):\\n print(\\"METRICS: step=%d loss=%g\\" % (i, {{x}} / (i + 1)))\\n print(\\"line\\", i)\\n time.sleep({sleep})\\nprint(\\"finished\\")'"
"""


def slow_study(daemon: DaemonProc, name: str, n: int = 2, steps: int = 5, sleep: float = 0.1,
               parallel: int = 4, extra: str = "") -> Path:
    return daemon.write_study(name, SLOW.format(name=name, values=list(range(1, n + 1)), steps=steps, sleep=sleep,
                                                parallel=parallel, extra=extra))


def test_grid_study_runs_to_completion_and_the_cli_reports_it(daemon: DaemonProc) -> None:
    shutil.copy(REPO / "studies" / "train_quadratic.py", daemon.home / "train_quadratic.py")
    study = daemon.home / "quadratic.toml"
    study.write_text((REPO / "studies" / "quadratic.toml").read_text().replace("--epochs {epochs}", "--epochs 5"))
    out = daemon.cli("submit", str(study))
    assert "9 trials queued" in out.stdout

    daemon.wait_finished("quadratic", timeout=90)
    runs = daemon.cli_json("ls", "--study", "quadratic")
    assert len(runs) == 9
    assert {r["state"] for r in runs} == {"completed"}
    assert [r["id"] for r in runs] == [f"quadratic:{n}" for n in range(9, 0, -1)]  # newest first
    first = runs[-1]
    assert set(first) >= {"id", "study", "trial", "state", "params", "metrics", "objective", "host", "gpus",
                          "started", "ended", "last_line"}
    assert first["id"] == "quadratic:1" and first["host"] == "local" and first["gpus"] == []
    assert first["last_line"].startswith("done: final loss")
    assert (Path(first["run_dir"]) / "weights.txt").exists()
    assert Path(first["run_dir"]).name == "0001_lr=0.01_momentum=0.0"

    # Pending is empty now; a script can rely on an empty answer.
    assert daemon.cli("ls", "--state", "pending").stdout == ""
    tsv = daemon.cli("ls", "--tsv", "--state", "completed").stdout.splitlines()
    assert tsv[0].split("\t")[:4] == ["id", "study", "trial", "state"] and len(tsv) == 10

    board = daemon.cli("leaderboard", "quadratic").stdout.splitlines()
    assert board[0] == "same in every row: epochs=20"  # named once, not a column
    assert board[1].split() == ["#", "RUN", "LOSS", "(min)", "STATE", "TIME", "lr", "momentum"]
    values = [float(line.split()[2]) for line in board[2:]]
    assert values == sorted(values) and len(values) == 9

    metrics = daemon.cli("metrics", "quadratic:1").stdout.splitlines()
    assert metrics[0] == "step\tloss\tgrad_norm"
    assert [line.split("\t")[0] for line in metrics[1:]] == ["1", "2", "3", "4", "5"]

    info = daemon.cli("info", "-v", "quadratic:1").stdout
    assert "completed" in info and "--lr 0.01 --momentum 0.0 --epochs 5" in info
    assert "pending -> running" in info and "running -> completed" in info

    log = daemon.cli("logs", "quadratic:1").stdout
    assert "epoch 5: loss" in log and log.count("METRICS:") == 5
    # Clients can read only what is new: reports from a sequence number, a log's tail.
    later = daemon.call("metrics", run="quadratic:1", since=3)
    assert [r["step"] for r in later["reports"]] == [4, 5] and later["next"] == 5
    tail = daemon.call("logs", run="quadratic:1", offset=0, limit=1 << 20, tail=20)
    assert tail["text"] == log.encode()[-20:].decode() and tail["size"] == len(log.encode())

    studies = daemon.cli("studies").stdout
    assert "quadratic" in studies and "finished" in studies and "9/9" in studies
    hosts = daemon.cli("hosts").stdout
    assert hosts.startswith("local  up  cpu slots 0/4")


def test_kill_a_run_and_a_study(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "k", n=3, steps=200, sleep=0.1, parallel=2)))
    daemon.wait_state("k:1", "running")
    daemon.wait_state("k:2", "running")
    out = daemon.cli("kill", "k:1").stdout
    assert "killing k:1" in out
    run = daemon.wait_state("k:1", "killed", timeout=15)
    assert run["reason"] == "killed on request"
    # Its slot went to the next trial.
    daemon.wait_state("k:3", "running")
    # Killing the study kills what runs and pauses it: nothing new starts.
    out = daemon.cli("kill", "k").stdout
    assert "paused" in out
    for name in ("k:2", "k:3"):
        daemon.wait_state(name, "killed", timeout=15)
    assert [s for s in daemon.call("studies") if s["name"] == "k"][0]["paused"] is True
    # Killing a finished run is refused with the conflict exit code.
    result = daemon.cli("kill", "k:1", check=False)
    assert result.returncode == ExitCode.CONFLICT and "nothing to kill" in result.stderr


def test_kill_leaves_no_process_behind(daemon: DaemonProc) -> None:
    # The command ignores SIGTERM in a child: the kill must escalate to SIGKILL.
    daemon.write_study("stubborn", """
        [study]
        name = "stubborn"
        objective = { metric = "loss" }
        algorithm = "grid"
        [params]
        x = 1
        [run]
        command = "python3 -c 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)' & sleep 300"
    """)
    daemon.cli("submit", str(daemon.home / "studies" / "stubborn.toml"))
    run = daemon.wait_state("stubborn:1", "running")
    time.sleep(0.5)
    daemon.cli("kill", "stubborn:1")
    daemon.wait_state("stubborn:1", "killed", timeout=15)
    log_dir = Path(run["log_path"]).parent
    pid = int((log_dir / "pid").read_text())

    def group_gone() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_for(group_gone, timeout=15, what="the run's process group to be gone")


def test_timeout_fails_the_run_and_retries_it(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "t", n=1, steps=1000, sleep=0.1, extra='timeout = "1s"\nretries = 1')))
    run = daemon.wait_state("t:1", "failed", timeout=20)
    assert run["reason"] == "timeout after 1s"
    retry = daemon.wait_state("t:2", "failed", timeout=20)
    assert retry["trial"] == run["trial"] and retry["attempt"] == 2
    time.sleep(1)
    assert [r["id"] for r in daemon.cli_json("ls", "--study", "t")] == ["t:2", "t:1"]  # the budget is spent


def test_failing_stage_fails_the_run_and_later_stages_do_not_run(daemon: DaemonProc) -> None:
    path = daemon.write_study("stages", """
        [study]
        name = "stages"
        objective = { metric = "acc", goal = "maximize" }
        algorithm = "grid"
        [params]
        fail = { type = "choice", values = ["no", "yes"] }
        [run]
        [[run.stages]]
        name = "train"
        command = "echo 'METRICS: acc=0.5' && touch {run_dir}/trained"
        [[run.stages]]
        name = "avg"
        command = "test {fail} = no || exit 3"
        [[run.stages]]
        name = "test"
        command = "echo 'METRICS: acc=0.9' && touch {run_dir}/tested"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("stages")
    ok, bad = daemon.run("stages:1"), daemon.run("stages:2")
    assert ok["state"] == "completed" and ok["objective"] == 0.9
    assert (Path(ok["run_dir"]) / "tested").exists()
    assert bad["state"] == "failed" and bad["reason"] == "stage avg exited with status 3"
    assert bad["exit_code"] == 3
    assert (Path(bad["run_dir"]) / "trained").exists() and not (Path(bad["run_dir"]) / "tested").exists()
    assert "[hypd] stage avg failed (status 3)" in daemon.cli("logs", "stages:2").stdout
    # The study is refused nothing: leaderboard has only the completed trial.
    board = daemon.cli_json("leaderboard", "stages")
    assert [r["name"] for r in board["runs"]] == ["stages:1"]


def test_retry_a_run_and_every_failed_run_of_a_study(daemon: DaemonProc) -> None:
    path = daemon.write_study("r", """
        [study]
        name = "r"
        objective = { metric = "loss" }
        algorithm = "grid"
        [params]
        x = { type = "int", low = 1, high = 3 }
        [run]
        command = "test -e {run_dir}/../go-{x} && echo 'METRICS: loss={x}' || exit 1"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("r")
    assert {r["state"] for r in daemon.runs(study="r")} == {"failed"}
    study_dir = Path(daemon.run("r:1")["run_dir"]).parent
    for x in (1, 2, 3):
        (study_dir / f"go-{x}").touch()
    assert "queued r:4" in daemon.cli("retry", "r:1").stdout
    daemon.wait_state("r:4", "completed")
    out = daemon.cli("retry", "r", "--state", "failed").stdout
    # r:1 failed too, but its trial already has a newer attempt... which completed: one per trial.
    assert out.split()[0] == "queued"
    daemon.wait_finished("r")
    states = {(r["trial"], r["state"]) for r in daemon.runs(study="r")}
    assert {(0, "completed"), (1, "completed"), (2, "completed")} <= states
    info = daemon.call("info", run="r:4")
    assert info["run"]["attempt"] == 2 and info["attempts"][:2] == ["r:1", "r:4"]
    # A running run cannot be retried.
    daemon.cli("submit", str(slow_study(daemon, "busy", n=1, steps=100)))
    daemon.wait_state("busy:1", "running")
    result = daemon.cli("retry", "busy:1", check=False)
    assert result.returncode == ExitCode.CONFLICT and "kill it first" in result.stderr


def test_bad_study_file_is_refused_in_one_line_and_nothing_is_submitted(daemon: DaemonProc) -> None:
    cases = {
        "bad.toml": "[study\nname = 1",
        "unknown.toml": '[study]\nname = "u"\nobjective = { metric = "loss" }\ncolour = "red"\n[params]\nx = 1\n[run]\ncommand = "true"\n',
        "range.toml": '[study]\nname = "u"\nobjective = { metric = "loss" }\nalgorithm = "random"\n'
                      '[params]\nlr = { type = "float", low = 1.0, high = 0.1 }\n[run]\ncommand = "true {lr}"\n',
        "grid.toml": '[study]\nname = "u"\nobjective = { metric = "loss" }\nalgorithm = "grid"\n'
                     '[params]\nlr = { type = "float", low = 0.1, high = 1.0 }\n[run]\ncommand = "true {lr}"\n',
        "placeholder.toml": '[study]\nname = "u"\nobjective = { metric = "loss" }\nalgorithm = "grid"\n'
                            '[params]\nlr = 0.1\n[run]\ncommand = "true {lr} {batch}"\n',
    }
    for filename, text in cases.items():
        path = daemon.home / filename
        path.write_text(text)
        result = daemon.cli("submit", str(path), check=False)
        assert result.returncode == ExitCode.INVALID, (filename, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], (filename, result.stderr)
    assert "colour" in daemon.cli("submit", str(daemon.home / "unknown.toml"), check=False).stderr
    assert "{batch}" in daemon.cli("submit", str(daemon.home / "placeholder.toml"), check=False).stderr
    assert "continuous" in daemon.cli("submit", str(daemon.home / "grid.toml"), check=False).stderr
    assert daemon.call("studies") == []
    assert daemon.call("ls", state=None, study=None, limit=None) == []
    missing = daemon.cli("submit", str(daemon.home / "nope.toml"), check=False)
    assert missing.returncode == ExitCode.INVALID and "cannot read" in missing.stderr


def test_daemon_killed_with_sigkill_adopts_its_runs_and_runs_nothing_twice(daemon: DaemonProc) -> None:
    marker = daemon.home / "starts"
    daemon.write_study("adopt", f"""
        [study]
        name = "adopt"
        objective = {{ metric = "loss" }}
        algorithm = "grid"
        parallel = 4
        [params]
        x = {{ type = "int", low = 1, high = 5 }}
        [run]
        command = "echo {{run}} >> {marker} && python3 -u -c 'import time\\nfor i in range(30):\\n print(\\"METRICS: step=%d loss=%d\\" % (i, i))\\n time.sleep(0.1)'"
    """)
    daemon.cli("submit", str(daemon.home / "studies" / "adopt.toml"))
    for name in ("adopt:1", "adopt:2"):
        daemon.wait_state(name, "running")
    time.sleep(0.5)
    daemon.kill9()
    time.sleep(1.5)  # runs go on, some report, some may end while no daemon watches
    daemon.start()
    daemon.wait_finished("adopt", timeout=60)
    runs = daemon.runs(study="adopt")
    assert [r["state"] for r in runs] == ["completed"] * 5
    for r in runs:
        reports = daemon.call("metrics", run=r["name"])["reports"]
        assert [rep["step"] for rep in reports] == list(range(30)), r["name"]  # none lost, none doubled
        assert r["objective"] == 29
    started = marker.read_text().split()
    assert sorted(started) == sorted(f"adopt:{i}" for i in range(1, 6))  # each run started exactly once


def test_stop_leaves_runs_going_and_the_next_daemon_adopts_them(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "s", n=1, steps=30, sleep=0.1)))
    daemon.wait_state("s:1", "running")
    out = daemon.cli("stop").stdout
    assert "keep going" in out
    daemon.proc.wait(15)  # type: ignore[union-attr]
    assert not socket_path(daemon.home).exists()
    assert "no hypd daemon is running" in daemon.cli("ls", check=False).stderr
    daemon.start()
    run = daemon.wait_state("s:1", "completed", timeout=30)
    assert len(daemon.call("metrics", run="s:1")["reports"]) == 30
    assert run["last_line"] == "finished"


def test_stop_kill_runs_ends_them(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "sk", n=1, steps=1000, sleep=0.1)))
    daemon.wait_state("sk:1", "running")
    assert "killed 1 run" in daemon.cli("stop", "--kill-runs").stdout
    daemon.proc.wait(15)  # type: ignore[union-attr]
    daemon.start()
    assert daemon.run("sk:1")["state"] == "killed"


def test_logs_follow_prints_lines_as_they_come(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "f", n=1, steps=15, sleep=0.2)))
    daemon.wait_state("f:1", "running")
    proc = subprocess.Popen([sys.executable, "-m", "hypd", "logs", "-f", "f:1"], env=daemon.env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("METRICS: step=0") or first.startswith("line")
    out = first + proc.stdout.read()  # ends by itself when the run ends
    assert proc.wait(30) == 0
    assert out.count("line ") == 15 and out.rstrip().endswith("finished")


def test_pause_and_resume(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "p", n=4, steps=5, sleep=0.1, parallel=1)))
    daemon.wait_state("p:1", "running")
    daemon.cli("pause", "p")
    daemon.wait_state("p:1", "completed")
    time.sleep(0.8)
    assert daemon.run("p:2")["state"] == "pending"
    assert "p" in daemon.cli("studies").stdout and "paused" in daemon.cli("studies").stdout
    daemon.cli("resume", "p")
    daemon.wait_finished("p", timeout=30)


def test_shell_metacharacters_in_a_value_stay_one_argument(daemon: DaemonProc) -> None:
    victim = daemon.home / "victim"
    victim.write_text("still here")
    daemon.write_study("quote", f"""
        [study]
        name = "quote"
        objective = {{ metric = "n" }}
        algorithm = "grid"
        [params]
        opt = {{ type = "choice", values = ["a b; rm -f {victim}", "$(touch {daemon.home}/pwned)"] }}
        [run]
        command = "python3 -c 'import sys, json; print(json.dumps(sys.argv[1:])); print(\\"METRICS: n=%d\\" % len(sys.argv[1:]))' {{opt}}"
    """)
    daemon.cli("submit", str(daemon.home / "studies" / "quote.toml"))
    daemon.wait_finished("quote")
    logs = [json.loads(daemon.cli("logs", f"quote:{i}").stdout.splitlines()[0]) for i in (1, 2)]
    assert logs == [[f"a b; rm -f {victim}"], [f"$(touch {daemon.home}/pwned)"]]
    assert victim.read_text() == "still here" and not (daemon.home / "pwned").exists()


def test_render_prints_the_exact_commands(daemon: DaemonProc) -> None:
    out = daemon.cli("render", str(REPO / "studies" / "quadratic_random.toml"), "lr=0.01", "momentum=0.5",
                     "epochs=7").stdout.splitlines()
    assert out[0] == "# stage train"
    assert out[1].startswith("python3 train_quadratic.py --lr 0.01 --momentum 0.5 --epochs 7 --out ")
    assert out[1].endswith("/studies/quadratic-random/0001_lr=0.01_momentum=0.5_epochs=7 --plain")
    bad = daemon.cli("render", str(REPO / "studies" / "quadratic.toml"), "lr=0.02", check=False)
    assert bad.returncode == ExitCode.INVALID and "not one of" in bad.stderr


def test_garbage_and_oversized_messages_get_an_error_and_the_daemon_carries_on(daemon: DaemonProc) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path(daemon.home)))
    f = sock.makefile("rb")
    hello = json.loads(f.readline())
    assert hello["hello"] == "hypd" and hello["v"] == 1
    for garbage in (b"\x00\xff not json\n", b"[1,2]\n", b'{"v":1,"op":"rm -rf","args":{}}\n',
                    b'{"v":1,"op":"ls","args":{"state":5}}\n', b'{"v":9,"op":"ping"}\n',
                    b'{"v":1,"op":"ls","args":{},"extra":1}\n'):
        sock.sendall(garbage)
        reply = json.loads(f.readline())
        assert reply["ok"] is False and reply["error"]["code"] in ("bad_request", "version"), garbage
    sock.sendall(b'{"v":1,"id":3,"op":"ping"}\n')
    assert json.loads(f.readline())["ok"] is True  # the same connection still works
    sock.sendall(b'{"v":1,"op":"ping","args":{"x":"' + b"a" * (MAX_LINE + 10) + b'"}}\n')
    reply = json.loads(f.readline())
    assert reply["error"]["code"] == "too_large"
    sock.close()
    assert daemon.call("ping")["pid"] == daemon.proc.pid  # type: ignore[union-attr]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
def test_a_peer_with_another_uid_is_refused(daemon: DaemonProc) -> None:
    # Open the 0700 folder and the 0600 socket so another user can reach the socket at
    # all: the daemon's own uid check must refuse it.
    sock = socket_path(daemon.home)
    os.chmod(daemon.home, 0o755)
    os.chmod(sock.parent, 0o755)
    os.chmod(sock, 0o666)
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "print(s.makefile().readline())")
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if python is None:
        pytest.skip("no system Python that another user may run")
    result = subprocess.run([python, "-S", "-c", code, str(sock)], user=65534, capture_output=True,
                            text=True, timeout=10, cwd="/")
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "denied"
    assert "uid 65534" in reply["error"]["message"]
    assert daemon.call("ping")


def test_no_daemon_says_how_to_start_one(hypd_home: Path, daemon_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "hypd", "ls"], env=daemon_env, capture_output=True, text=True)
    assert result.returncode == ExitCode.NO_DAEMON
    assert "no hypd daemon is running" in result.stderr and "hypd serve" in result.stderr


def test_a_second_daemon_on_the_same_home_refuses_to_start(daemon: DaemonProc) -> None:
    result = subprocess.run([sys.executable, "-m", "hypd", "serve"], env=daemon.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "already runs" in result.stderr
    assert daemon.call("ping")


def test_cli_never_imports_ax_torch_or_textual(daemon: DaemonProc) -> None:
    code = ("import sys; from hypd.cli import main; rc = main(['ls']);"
            "bad = [m for m in ('ax', 'torch', 'textual', 'botorch', 'aiosqlite', 'asyncssh') if m in sys.modules];"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], env=daemon.env, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_study_needing_more_gpus_than_any_host_has_is_accepted_with_a_warning(daemon: DaemonProc) -> None:
    path = slow_study(daemon, "big", n=1, steps=1, extra="gpus = 2")
    result = daemon.cli("submit", str(path))
    assert "warning: runs need 2 GPU(s) but the largest host offers 0" in result.stderr
    time.sleep(0.5)
    assert daemon.run("big:1")["state"] == "pending"


def test_two_studies_share_the_slots_fairly(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "a", n=8, steps=30, sleep=0.1, parallel=4)))
    daemon.cli("submit", str(slow_study(daemon, "b", n=8, steps=30, sleep=0.1, parallel=4)))

    def both_running() -> tuple[int, int] | None:
        running = daemon.runs(state="running")
        counts = (sum(r["study"] == "a" for r in running), sum(r["study"] == "b" for r in running))
        return counts if sum(counts) == 4 and counts[1] > 0 else None
    a, b = wait_for(both_running, timeout=20, what="b to get slots beside a")
    assert abs(a - b) <= 2  # 4 slots: a took them first, b gets its share as soon as slots free


def test_runs_get_free_gpus_and_a_gpu_busy_with_someone_else_is_left_alone(
        hypd_home: Path, daemon_env: dict[str, str]) -> None:
    from tests.fakes.nvidia_smi import gpu, install_fake_nvidia_smi, write_gpu_state

    state = hypd_home / "gpus.json"
    install_fake_nvidia_smi(hypd_home / "bin", state)
    # GPU 1 is busy with a foreign process (memory used, high utilisation).
    write_gpu_state(state, [gpu(0), gpu(1, memory_used_mib=30000, utilization_pct=95), gpu(2), gpu(3)])
    d = DaemonProc(hypd_home, daemon_env).start()
    try:
        hosts = d.cli("hosts").stdout
        assert "gpu 1" in hosts and "busy (someone else)" in hosts and hosts.count("free") == 3
        path = d.write_study("g", """
            [study]
            name = "g"
            objective = { metric = "loss" }
            algorithm = "grid"
            parallel = 4
            gpus = 1
            [params]
            x = { type = "int", low = 1, high = 4 }
            [run]
            command = "echo \\"devices=$CUDA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER\\"; sleep 2; echo 'METRICS: loss={x}'"
        """)
        d.cli("submit", str(path))
        running = wait_for(lambda: len(r := d.runs(state="running")) == 3 and r, timeout=20,
                           what="three runs on the three free GPUs")
        assert sorted(g for r in running for g in r["gpus"]) == [0, 2, 3]
        assert d.run("g:4")["state"] == "pending"  # GPU 1 stays with its owner
        hosts = d.cli("hosts").stdout
        assert "g:1" in hosts and "busy (someone else)" in hosts
        d.wait_finished("g", timeout=30)
        for r in d.runs(study="g"):
            first = d.cli("logs", r["name"]).stdout.splitlines()[0]
            assert first == f"devices={r['gpus'][0]} order=PCI_BUS_ID"
    finally:
        d.stop(kill_runs=True)


def test_serve_detach_starts_a_background_daemon(hypd_home: Path, daemon_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "hypd", "serve", "--detach"], env=daemon_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "hypd daemon started (pid" in result.stdout
    try:
        again = subprocess.run([sys.executable, "-m", "hypd", "serve", "--detach"], env=daemon_env,
                               capture_output=True, text=True, timeout=60)
        assert "already runs" in again.stdout
    finally:
        subprocess.run([sys.executable, "-m", "hypd", "stop"], env=daemon_env, capture_output=True, timeout=30)
    wait_for(lambda: not socket_path(hypd_home).exists(), timeout=15, what="the socket to be removed")


def test_socket_folder_and_socket_are_private(daemon: DaemonProc) -> None:
    sock = socket_path(daemon.home)
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    assert (sock.stat().st_mode & 0o777) == 0o600


def test_several_objectives_give_a_pareto_front_in_the_leaderboard(daemon: DaemonProc) -> None:
    path = daemon.write_study("mo", """
        [study]
        name = "mo"
        objective = [{ metric = "loss", goal = "minimize" }, { metric = "latency_ms", goal = "minimize" }]
        algorithm = "grid"
        [params]
        size = { type = "choice", values = [1, 2, 3, 4] }
        [run]
        command = "python3 -c 'import sys; s = int(sys.argv[1]); print(\\"METRICS: loss=%g latency_ms=%g\\" % (10 / s + (5 if s == 3 else 0), s * 10))' {size}"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("mo")
    board = daemon.cli_json("leaderboard", "mo")
    front = {r["name"]: r["pareto"] for r in board["runs"]}
    # size 3 is dominated by size 2 (worse loss and latency); the others trade off.
    assert front == {"mo:1": True, "mo:2": True, "mo:3": False, "mo:4": True}
    assert [r["name"] for r in board["runs"]][-1] == "mo:3"
    text = daemon.cli("leaderboard", "mo").stdout
    assert "LOSS (min)" in text and "LATENCY_MS (min)" in text and "*1" in text


def test_runs_declaring_gpu_memory_share_a_gpu_and_never_overcommit_it(
        hypd_home: Path, daemon_env: dict[str, str]) -> None:
    from tests.fakes.nvidia_smi import gpu, install_fake_nvidia_smi, write_gpu_state

    state = hypd_home / "gpus.json"
    install_fake_nvidia_smi(hypd_home / "bin", state)
    write_gpu_state(state, [gpu(0)])  # one 40 GiB GPU, idle
    (hypd_home / "config.toml").write_text(FAST_CONFIG + "max_per_gpu = 4\n")
    d = DaemonProc(hypd_home, daemon_env).start()
    try:
        path = slow_study(d, "mem", n=4, steps=15, sleep=0.1, extra='gpus = 1\ngpu_mem = "15GiB"')
        d.cli("submit", str(path))
        most = 0

        def done() -> bool:
            nonlocal most
            runs = d.runs(study="mem")
            most = max(most, sum(r["state"] == "running" for r in runs))
            return all(r["state"] == "completed" for r in runs)
        # The fake GPU's readings never show the runs' memory: the reservations alone keep
        # a third 15 GiB run off the 40 GiB GPU.
        wait_for(done, timeout=60, interval=0.1, what="all runs to complete")
        assert most == 2
        assert {tuple(r["gpus"]) for r in d.runs(study="mem")} == {(0,)}
    finally:
        d.stop(kill_runs=True)


def test_killing_a_pending_run_ends_it_before_it_starts(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "kp", n=2, steps=30, sleep=0.1, parallel=1)))
    daemon.wait_state("kp:1", "running")
    assert daemon.run("kp:2")["state"] == "pending"
    daemon.cli("kill", "kp:2")
    run = daemon.run("kp:2")
    assert run["state"] == "killed" and run["reason"] == "killed on request before it started"
    assert run["started"] is None
    daemon.wait_state("kp:1", "completed", timeout=30)
    time.sleep(0.5)
    assert daemon.run("kp:2")["state"] == "killed"  # never started afterwards


def test_two_ctrl_c_stop_the_daemon_at_once_and_still_close_the_store_and_socket(daemon: DaemonProc) -> None:
    daemon.cli("submit", str(slow_study(daemon, "cc", n=2, steps=200, sleep=0.1)))
    wait_for(lambda: len(daemon.runs(state="running")) == 2, 30, what="two runs going")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    daemon.proc.send_signal(signal.SIGINT)
    daemon.proc.wait(15)
    assert not socket_path(daemon.home).exists()
    with sqlite3.connect(daemon.home / "hypd.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The runs went on, and the next daemon adopts them.
    daemon.start()
    assert {r["state"] for r in daemon.runs(study="cc")} == {"running"}
