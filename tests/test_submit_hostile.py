"""Hostile study files through `hypd submit` against a real daemon (issue 11): refused
with one line and a non-zero exit, nothing stored, the daemon answering throughout; a study
is stored whole or not at all, even when the daemon is killed with SIGKILL mid-submit."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypd.ipc import Client, DaemonError, ExitCode, socket_path
from hypd.store import Store
from hypd.study import MAX_STUDY_BYTES, MAX_TRIALS
from tests.conftest import DaemonProc

pytestmark = pytest.mark.slow

GRID = """\
[study]
name = "{name}"
objective = "loss"
algorithm = "grid"
[params]
{params}
[run]
command = "true {{x}}"
"""


def submit(daemon: DaemonProc, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli("submit", str(path), *extra, check=False, timeout=120)


def refused(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == ExitCode.INVALID, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_hostile_files_are_refused_with_one_line_and_nothing_is_stored(daemon: DaemonProc) -> None:
    cases = {
        "step": ('x = { type = "float", low = 0, high = 1, step = 1e-300 }', "the grid has more than 10**18 points"),
        "million": ('x = { type = "int", low = 1, high = 1000 }\ny = { type = "int", low = 1, high = 1000 }',
                    "the grid has 1,000,000 points"),
        "huge_int": ('x = { type = "int", low = -9223372036854775808, high = 9223372036854775807 }', "2**53"),
    }
    for name, (params, says) in cases.items():
        start = time.monotonic()
        refused(submit(daemon, daemon.write_study(name, GRID.format(name=name, params=params))), says)
        assert time.monotonic() - start < 30
        daemon.call("ping")
    # 10 MB: refused by its size before it is read or sent (it exited 0 printing nothing)
    big = daemon.write_study("big", GRID.format(name="big", params="x = { values = [1, 2] }") + "#" * (10 << 20))
    refused(submit(daemon, big), f"over the cap of {MAX_STUDY_BYTES:,} for a study file")
    # a newline at the end of the name, and a workdir that is not there (every run failed in `setup`)
    refused(submit(daemon, daemon.write_study("nl", GRID.format(name="nl\\n", params='x = { values = [1, 2] }'))), "study.name")
    missing = daemon.write_study("wd", GRID.format(name="wd", params="x = { values = [1, 2] }") + 'workdir = "no/such/dir"\n')
    refused(submit(daemon, missing), "run.workdir")
    assert daemon.call("studies") == []
    assert daemon.runs() == []


def test_a_request_over_the_socket_limit_is_an_error_not_a_silent_exit(daemon: DaemonProc) -> None:
    with Client(socket_path(daemon.home)) as c, pytest.raises(DaemonError) as err:
        c.call("submit", path="/x.toml", text="#" * (2 << 20), as_name=None)
    assert err.value.code == "too_large" and "over the daemon's limit" in err.value.message


def test_as_renames_the_study_not_a_stage_named_before_it(daemon: DaemonProc) -> None:
    text = ('[[run.stages]]\nname = "train"\ncommand = "echo {x}"\n\n'
            '[study]\nname = "orig"\nobjective = "loss"\nalgorithm = "grid"\n[params]\nx = { values = [1, 2] }\n')
    path = daemon.write_study("stages", text)
    result = daemon.cli("submit", str(path), "--as", "renamed")
    assert "study renamed submitted: 2 trials queued" in result.stdout
    assert [s["name"] for s in daemon.call("studies")] == ["renamed"]
    info = daemon.call("info", run="renamed:1")
    assert [c[0] for c in info["commands"]] == ["train"]
    daemon.stop(kill_runs=True)
    daemon.start()  # stored under its new name, it loads as that study again
    assert [s["name"] for s in daemon.call("studies")] == ["renamed"]
    refused(daemon.cli("submit", str(path), "--as", "bad name", check=False), "--as")


def study_rows(home: Path, name: str) -> tuple[int, int, int]:
    """(studies, trials, runs) stored for the study."""
    with sqlite3.connect(home / "hypd.db") as db:
        return tuple(db.execute(f"SELECT COUNT(*) FROM {table} WHERE {key}=?", (name,)).fetchone()[0]
                     for table, key in (("studies", "name"), ("trials", "study"), ("runs", "study")))  # type: ignore[return-value]


def test_a_study_is_stored_whole_or_not_at_all_across_a_sigkill(daemon: DaemonProc) -> None:
    """SIGKILL during `hypd submit` of a grid of MAX_TRIALS points (a 500-point grid was
    left empty for good, "0/0"), at several moments: after each, the study is there with
    every trial and run, or not at all, and submitting it again queues what is missing."""
    params = 'x = { type = "int", low = 1, high = 100 }\ny = { type = "int", low = 1, high = 100 }'
    outcomes = []
    for i, delay in enumerate((0.05, 0.2, 0.4, 0.8)):
        name = f"g{i}"
        # gpus = 1 on a machine with none: the runs stay pending (nothing starts 10,000 runs here)
        text = GRID.format(name=name, params=params).replace('algorithm = "grid"', 'algorithm = "grid"\ngpus = 1')
        path = daemon.write_study(name, text)
        cli = subprocess.Popen([sys.executable, "-m", "hypd", "submit", str(path)], env=daemon.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        daemon.kill9()
        cli.wait(30)
        counts = study_rows(daemon.home, name)
        assert counts in ((0, 0, 0), (1, MAX_TRIALS, MAX_TRIALS)), counts
        outcomes.append(counts[0])
        daemon.start()
        result = submit(daemon, path)
        assert result.returncode == 0, result.stderr
        assert study_rows(daemon.home, name) == (1, MAX_TRIALS, MAX_TRIALS)
        assert len(daemon.runs(study=name)) == MAX_TRIALS
    print("stored before the kill:", outcomes)
    daemon.kill9()  # (stopping with --kill-runs would record 40,000 kills first)


def test_a_study_stored_without_its_trials_gets_them_when_submitted_again(daemon_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """A study an older hypd stored without its trials (killed mid-submit) is not stuck at 0/0."""
    home = Path(daemon_env["HYPD_HOME"])
    path = tmp_path / "old.toml"
    path.write_text(GRID.format(name="old", params="x = { values = [1, 2, 3] }"))

    async def store_empty() -> None:
        store = await Store.open(home / "hypd.db")
        await store.add_study("old", str(path), path.read_text(), str(tmp_path), '{"algorithm": "grid", '
                              '"next_trial": 0, "next_point": 0, "attached": []}')
        await store.close()

    asyncio.run(store_empty())
    daemon = DaemonProc(home, daemon_env).start()
    try:
        result = daemon.cli("submit", str(path))
        assert "continues" in result.stdout
        assert study_rows(home, "old") == (1, 3, 3)
        daemon.wait_finished("old")
    finally:
        daemon.stop(kill_runs=True)


def test_a_study_stored_before_the_caps_still_loads(daemon_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(daemon_env["HYPD_HOME"])
    text = GRID.format(name="wide", params='x = { type = "int", low = 1, high = 20000 }').replace(
        'algorithm = "grid"', 'algorithm = "grid"\ngpus = 1')

    async def store_it() -> None:
        store = await Store.open(home / "hypd.db")
        await store.add_study("wide", str(tmp_path / "wide.toml"), text, str(tmp_path),
                              '{"algorithm": "grid", "next_trial": 0, "next_point": 0, "attached": []}')
        await store.close()

    asyncio.run(store_it())
    daemon = DaemonProc(home, daemon_env).start()
    try:
        [wide] = daemon.call("studies")
        assert "error" not in wide and wide["name"] == "wide", wide
    finally:
        daemon.stop()
