"""Broken store files: a damaged hypd.db stops the daemon at start with one line naming the
file and the way out; a store that lost data says so, and no run writes into the folder
or log of a run the store has lost."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hypd.storecheck import highwater_path
from tests.conftest import DaemonProc, wait_for

pytestmark = pytest.mark.slow

GRID = """
[study]
name = "g"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = 2
retries = 0

[params]
x = {{ type = "choice", values = [{values}] }}

[run]
command = "python3 -c 'import sys\\nfor i in range(3):\\n    print(\\"METRICS: step=%d loss=%s\\" % (i, sys.argv[1]))' {{x}}"
"""


def filled_store(daemon: DaemonProc, values: str = "1, 2, 3") -> Path:
    path = daemon.write_study("g", GRID.format(values=values))
    daemon.cli("submit", str(path))
    daemon.wait_finished("g")
    return path


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # The timeout only keeps a hang from stalling the suite; a hang fails the test.
    return subprocess.run([sys.executable, "-m", "hypd", "serve", *args], env=env, capture_output=True, text=True,
                          timeout=30)


def damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    if how == "truncated":
        db.write_bytes(data[:len(data) // 2])
    elif how == "random bytes":
        db.write_bytes(random.Random(1).randbytes(len(data)))
    else:  # a page in the middle overwritten: the header still says SQLite
        page = int.from_bytes(data[16:18], "big")
        middle = (len(data) // page // 2) * page
        db.write_bytes(data[:middle] + random.Random(2).randbytes(page) + data[middle + page:])


@pytest.mark.parametrize("how, says", [("truncated", "is truncated"), ("random bytes", "is not an SQLite database"),
                                       ("a damaged page", "is damaged")])
def test_a_damaged_store_stops_the_daemon_with_one_line(daemon: DaemonProc, daemon_env: dict[str, str],
                                                        how: str, says: str) -> None:
    filled_store(daemon, values=", ".join(str(i) for i in range(40)))
    daemon.stop()
    db = daemon.home / "hypd.db"
    assert not Path(f"{db}-wal").exists()  # a clean stop checkpoints: the file alone is the store
    damage(db, how)
    result = serve(daemon_env)
    assert result.returncode == 1
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert says in line and str(db) in line and f"mv {db} {db}.broken" in line, line
    assert line.split(" ERROR hypd.daemon: ")[1] in (daemon.home / "daemon.log").read_text()
    assert "Traceback" not in result.stderr
    detached = daemon.cli("serve", "--detach", check=False)
    assert detached.returncode == 1 and says in detached.stderr and str(db) in detached.stderr, detached
    # The way out it gives works: with the file moved aside, a daemon starts on an empty store.
    db.rename(f"{db}.broken")
    daemon.start()
    assert daemon.call("studies") == []


def test_a_store_that_lost_its_wal_says_so_and_no_run_reuses_a_lost_runs_folder(
        daemon: DaemonProc, daemon_env: dict[str, str]) -> None:
    study = filled_store(daemon)
    db = daemon.home / "hypd.db"
    # The high-water record catches up within a second of the last change.
    wait_for(lambda: highwater_path(db).exists() and json.loads(highwater_path(db).read_text())["runs"] == 3, 10,
             what="the high-water record")
    old_log = Path(daemon.run("g:1")["log_path"])
    daemon.kill9()  # the newest commits are in hypd.db-wal, not yet in hypd.db
    os.unlink(f"{db}-wal")
    Path(f"{db}-shm").unlink(missing_ok=True)
    daemon.start()
    said = [line for line in daemon.output().splitlines() if "has lost data" in line]
    assert len(said) == 1 and str(db) in said[0] and "runs #1-#3" in said[0], daemon.output()
    assert said[0].split(" WARNING hypd.daemon: ")[1] in (daemon.home / "daemon.log").read_text()
    # The same study again: run 1 is numbered as the lost run 1 was; its folder and log
    # are set aside, and the new log holds the new run's lines only.
    daemon.cli("submit", str(study))
    daemon.wait_finished("g")
    info = daemon.call("info", run="g:1")
    assert len(info["reports"]) == 3  # not 6: nothing appended to the lost run's log
    assert Path(info["run"]["log_path"]) == old_log
    assert old_log.read_text().count("METRICS") == 3
    asides = list(old_log.parent.parent.glob(f"{old_log.parent.name}.set-aside-*"))
    assert len(asides) == 1 and (asides[0] / "log").read_text().count("METRICS") == 3
    assert "held an earlier run's files" in (daemon.home / "daemon.log").read_text()
    # Said once: the next start finds the store as the record has it.
    daemon.stop()
    daemon.start()
    assert daemon.output().count("has lost data") == 1


def test_a_deleted_store_beside_its_record_is_said_so(daemon: DaemonProc) -> None:
    filled_store(daemon)
    daemon.stop()
    os.unlink(daemon.home / "hypd.db")
    started = daemon.cli("serve", "--detach")  # says what the daemon said at start
    try:
        assert "warning:" in started.stderr and "has lost data" in started.stderr, started
        assert "runs #1-#3" in started.stderr and "1 of 1 studies" in started.stderr, started
    finally:
        daemon.cli("stop", check=False)
        wait_for(lambda: not (daemon.home / "run" / "hypd.sock").exists(), 30, what="the daemon to stop")
