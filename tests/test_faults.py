"""Faults, end to end, against the real components: a real `hypd serve` driven through the
CLI and its socket, real OpenSSH sshd servers (tests/sshd.py), real SQLite files, real
processes, a real full disk. No mocks. Each test says the promise it checks.

1. An SSH host's connection dropped mid-study (once, several times, and held down while
   runs end): the host is up again within 10 s, running runs are adopted, runs that ended
   meanwhile are recorded with their real exit and never run again, every report is
   stored exactly once and in order.
2. The store cannot be written (another process holds SQLite's write lock past the busy
   timeout; the disk of $HYPD_HOME is full): nothing is lost or doubled, runs end as they
   ended, one warning says why, and the daemon answers throughout and recovers by itself.
3. Output that cannot be a report (a line over 1 MiB, binary garbage, a step >= 2**63):
   that line alone is refused.
4. The daemon SIGKILLed at random moments through a study: no trial runs twice without a
   retry decision, and every ended trial is told to the search exactly once.
5. `hypd stop --kill-runs` while runs are being launched: no process of any run is left,
   and the command returns once the daemon has exited.
6. Nothing a run started outlives it (a background child, a child that left with setsid),
   on the local host and on an SSH host, for a run that exits and one that is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_CONFIG, DaemonProc, kill_leftover_runs, use_hosts, wait_for
from tests.sshd import SshdCluster, SshdHost

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# A run that reports every `interval` seconds until its gate file (<gates>/go-<name>)
# appears, then reports three more times and exits with the status its name ends with
# ("e3" exits 3). Steps are explicit and each value is exact (repr), so what the run
# printed can be compared with what was stored, value for value. A run whose name starts
# with "q" reports three times at once, then waits for its gate silently.
WORKER = r"""
import os, sys, time
name, gates, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
limit = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
base = sum(map(ord, name))
if name.startswith("q"):  # quiet: three reports, then silence until its gate, and no more output
    for i in range(3):
        print("METRICS: step=%d loss=%r" % (i, base + (i + 1) / 7.0))
    while not os.path.exists(os.path.join(gates, "go-" + name)):
        time.sleep(interval)
    sys.exit(int(name[-1]))
i = 0
while True:
    print("METRICS: step=%d loss=%r" % (i, base + (i + 1) / 7.0))
    print("progress %s %d" % (name, i))
    i += 1
    if os.path.exists(os.path.join(gates, "go-" + name)) or i >= limit:
        break
    time.sleep(interval)
for j in range(3):
    print("METRICS: step=%d loss=%r" % (i + j, base + 1.0 / (j + 3)))
print("done %s" % name)
sys.exit(int(name[-1]))
"""

GATED_STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = {parallel}
{extra}
[params]
x = {{ type = "choice", values = {values} }}
[run]
command = "python3 -u {worker} {{x}} {gates} {interval}"
"""

METRICS_LINE = re.compile(rb"^METRICS: step=(\d+) loss=(\S+)$")


# ----------------------------------------------------------------------------- helpers

class Gated:
    """A study of gated runs (WORKER): open(name) lets run `name` finish."""

    def __init__(self, d: DaemonProc, base: Path, name: str, values: list[str], interval: float = 0.1,
                 parallel: int | None = None, extra: str = "", study_dir: Path | None = None) -> None:
        self.d = d
        self.name = name
        self.gates = base / f"gates-{name}"
        self.gates.mkdir(parents=True)
        worker = base / "worker.py"
        worker.write_text(WORKER)
        text = GATED_STUDY.format(name=name, parallel=parallel or len(values), extra=extra,
                                  values="[" + ", ".join(f'"{v}"' for v in values) + "]", worker=worker,
                                  gates=self.gates, interval=interval)
        self.path = (study_dir or d.home / "studies") / f"{name}.toml"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(text)

    def submit(self) -> None:
        self.d.cli("submit", str(self.path))

    def open(self, *names: str) -> None:
        for n in names:
            (self.gates / f"go-{n}").touch()

    def runs(self) -> dict[str, dict[str, Any]]:
        """x -> its run (the only attempt of its trial; more than one fails here)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.d.runs(study=self.name):
            x = r["params"]["x"]
            assert x not in out, f"trial {x} has a second attempt: {out[x]['name']} and {r['name']}"
            out[x] = r
        return out


def query(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the daemon's SQLite file from this (other) process."""
    conn = sqlite3.connect(f"file:{home / 'hypd.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def printed(log: bytes) -> list[tuple[int, float]]:
    """The reports a run printed, in order, from its log."""
    out = []
    for line in log.split(b"\n"):
        m = METRICS_LINE.match(line)
        if m:
            out.append((int(m.group(1)), float(m.group(2))))
    return out


def stored(d: DaemonProc, run: str) -> list[tuple[int, float]]:
    return [(r["step"], r["values"]["loss"]) for r in d.call("metrics", run=run, since=0)["reports"]]


def ctl_dir(home: Path, run: dict[str, Any]) -> Path:
    (row,) = query(home, "SELECT ctl_dir FROM runs WHERE id=?", run["id"])
    return Path(row[0])


def assert_reports_exact(d: DaemonProc, run: dict[str, Any]) -> None:
    """Every report the run printed is stored once, in order, with its value; nothing else."""
    host_log = (ctl_dir(d.home, run) / "log").read_bytes()  # the log as the run wrote it, on its host
    want = printed(host_log)
    assert want, f"{run['name']} printed no report"
    assert stored(d, run["name"]) == want, f"{run['name']}: stored reports differ from the printed ones"


def assert_told(d: DaemonProc, study: str) -> None:
    """Every trial of the study (all ended) told to the search, as its last attempt ended."""
    def marks() -> list[tuple[Any, ...]]:
        return query(d.home, "SELECT t.trial, t.told, r.state FROM trials t JOIN runs r ON r.study=t.study "
                             "AND r.trial=t.trial WHERE t.study=? AND r.attempt=(SELECT MAX(attempt) FROM runs a "
                             "WHERE a.study=t.study AND a.trial=t.trial)", study)
    wait_for(lambda: all(told is not None for _, told, _ in marks()), 15, what=f"every trial of {study} told")
    assert all(told == state for _, told, state in marks()), marks()


def daemon_log(home: Path) -> str:
    path = home / "daemon.log"
    return path.read_text(errors="replace") if path.exists() else ""


def log_lines(home: Path, pattern: str) -> list[str]:
    return [line for line in daemon_log(home).splitlines() if re.search(pattern, line)]


def host_state(d: DaemonProc, name: str) -> str:
    return next((h["state"] for h in d.call("hosts") if h["name"] == name), "absent")


def processes_with(marker: bytes) -> dict[int, str]:
    """Live (not zombie) processes whose environment holds `marker`: pid -> command line."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0]
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != b"Z" and (env.startswith(marker) or b"\0" + marker in env):
            found[int(entry.name)] = cmd
    return found


def alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie has ended: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False



class Dropper:
    """Drops every connection to an sshd host again and again (its listener stays up), so
    the daemon's reconnects fail until stopped: the host stays down while runs go on."""

    def __init__(self, host: SshdHost) -> None:
        self.host = host
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.halt.is_set():
            self.host.drop_connections()
            self.halt.wait(0.02)

    def __enter__(self) -> Dropper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.thread.join(5)


# ----------------------------------------------------------------------------- 1. dropped SSH connections

def test_dropped_ssh_connections_lose_and_repeat_nothing(cluster: SshdCluster, remote_daemon: DaemonProc,
                                                        tmp_path: Path) -> None:
    a = cluster.add("a", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=6))
    d = remote_daemon.start()
    wait_for(lambda: host_state(d, "a") == "up", 30, what="host a up")
    # e*: end while the connection is down; s*: survive the drops and end after; l0: last.
    study = Gated(d, tmp_path, "drop", ["e0", "e3", "s0", "s3", "l0"])
    study.submit()
    wait_for(lambda: len(study.runs()) == 5 and all(r["state"] == "running" and r["reports"] >= 3
                                                      for r in study.runs().values()),
             30, what="every run running and reporting")

    def drop_once() -> float:
        """Drop the connection (listener up); seconds until the host is up again."""
        downs = len(log_lines(d.home, r"host a down"))
        wait_for(lambda: a.drop_connections(), 5, what="a session process to kill")
        dropped = time.monotonic()
        wait_for(lambda: len(log_lines(d.home, r"host a down")) > downs, 10, 0.02, what="host a seen down")
        wait_for(lambda: host_state(d, "a") == "up", 10, 0.05, what="host a up again within 10 s")
        return time.monotonic() - dropped

    # Dropped again and again: each time back within 10 s, the runs adopted (still running).
    for _ in range(4):
        assert drop_once() < 10
        before = {x: r["reports"] for x, r in study.runs().items()}
        wait_for(lambda before=before: all(r["state"] == "running" and r["reports"] > before[x] + 2
                                           for x, r in study.runs().items()),
                 15, what="every run reporting after the drop")

    # Held down while e0 and e3 end: their exits are learnt when the host is back.
    runs = study.runs()
    with Dropper(a):
        downs = len(log_lines(d.home, r"host a down"))
        wait_for(lambda: len(log_lines(d.home, r"host a down")) > downs, 10, 0.02, what="host a seen down")
        study.open("e0", "e3")
        for x in ("e0", "e3"):
            wait_for(lambda x=x: (ctl_dir(d.home, runs[x]) / "exit").exists(), 10, what=f"{x} to exit on its host")
        time.sleep(0.5)
        assert host_state(d, "a") == "down"
        assert all(r["state"] == "running" for r in study.runs().values())  # nothing decided while away
        held = time.monotonic()
    wait_for(lambda: host_state(d, "a") == "up", 10, 0.05, what="host a up within 10 s of the last drop")
    assert time.monotonic() - held < 10
    e0 = d.wait_state(runs["e0"]["name"], "completed", "failed", timeout=15)
    e3 = d.wait_state(runs["e3"]["name"], "completed", "failed", timeout=15)
    assert (e0["state"], e0["exit_code"]) == ("completed", 0), e0
    assert (e3["state"], e3["exit_code"]) == ("failed", 3), e3
    assert e3["reason"] == "exited with status 3"

    # The others were adopted and go on; more drops, then they end.
    for _ in range(2):
        assert drop_once() < 10
    reports = {x: r["reports"] for x, r in study.runs().items()}
    wait_for(lambda: all(r["reports"] > reports[x] + 2 for x, r in study.runs().items() if x[0] != "e"),
             15, what="the surviving runs reporting")
    study.open("s0", "s3")
    d.wait_state(runs["s3"]["name"], "completed", "failed", timeout=15)
    study.open("l0")
    d.wait_finished("drop", timeout=30)

    final = study.runs()  # one attempt per trial (asserted by runs())
    assert {x: (r["state"], r["exit_code"]) for x, r in final.items()} == {
        "e0": ("completed", 0), "e3": ("failed", 3), "s0": ("completed", 0), "s3": ("failed", 3),
        "l0": ("completed", 0)}
    assert query(d.home, "SELECT COUNT(*) FROM transitions WHERE to_state='lost'") == [(0,)]
    assert query(d.home, "SELECT COUNT(*) FROM runs") == [(5,)]  # nothing ran again
    for r in final.values():
        assert_reports_exact(d, r)
        # The daemon's copy of the log is the host's, byte for byte.
        assert Path(r["log_path"]).read_bytes() == (ctl_dir(d.home, r) / "log").read_bytes()
    assert_told(d, "drop")


# ----------------------------------------------------------------------------- 2. the store cannot be written

# Another process takes SQLite's write lock (BEGIN IMMEDIATE) and keeps it argv[2] seconds.
LOCK_HOLDER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""

LOCK_HELD = 12.0  # seconds: more than twice the daemon's busy timeout (5 s)


def answers_ls(d: DaemonProc) -> float:
    """Seconds `hypd ls` took (it must answer)."""
    began = time.monotonic()
    d.cli("ls", timeout=30)
    return time.monotonic() - began


def test_a_store_locked_by_another_process_loses_and_doubles_nothing(daemon: DaemonProc, tmp_path: Path) -> None:
    d = daemon  # 4 CPU slots
    # a0, b3: end while the store is locked, with reports not stored yet; q0: ends silently
    # while locked (its slot frees, so d0's launch meets the lock); c0: goes on.
    study = Gated(d, tmp_path, "locked", ["a0", "b3", "q0", "c0", "d0"], parallel=4)
    study.submit()
    wait_for(lambda: len([r for r in study.runs().values() if r["state"] == "running" and r["reports"] >= 3]) == 4,
             30, what="four runs running and reporting")
    runs = study.runs()
    assert runs["d0"]["state"] == "pending"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(d.home / "hypd.db"), str(LOCK_HELD)],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        held = time.monotonic()
        study.open("q0")
        time.sleep(1.0)
        study.open("a0", "b3")  # they end while nothing can be written
        during = []
        while time.monotonic() - held < LOCK_HELD - 1.5:
            during.append(answers_ls(d))
            time.sleep(0.3)
        for x in ("a0", "b3", "q0"):
            assert (ctl_dir(d.home, runs[x]) / "exit").exists(), f"{x} has not exited"
        assert holder.wait(30) == 0 and holder.stdout.read() == b"released\n"
    finally:
        holder.kill()
    a0 = d.wait_state(runs["a0"]["name"], "completed", "failed", timeout=20)
    b3 = d.wait_state(runs["b3"]["name"], "completed", "failed", timeout=20)
    assert (a0["state"], a0["exit_code"]) == ("completed", 0), a0
    assert (b3["state"], b3["exit_code"]) == ("failed", 3), b3
    after = answers_ls(d)
    d.wait_state(runs["d0"]["name"], "running", timeout=15)  # launched once the lock is gone
    wait_for(lambda: all(r["reports"] >= 3 for x, r in study.runs().items() if x in ("c0", "d0")), 15,
             what="c0 and d0 reporting")
    study.open("c0", "d0")
    d.wait_finished("locked", timeout=30)
    final = study.runs()  # one attempt per trial
    assert {x: (r["state"], r["exit_code"]) for x, r in final.items()} == {
        "a0": ("completed", 0), "b3": ("failed", 3), "q0": ("completed", 0), "c0": ("completed", 0),
        "d0": ("completed", 0)}
    for r in final.values():
        assert_reports_exact(d, r)
    assert_told(d, "locked")
    assert max(during) < 15 and after < 5, (during, after)
    warnings = log_lines(d.home, r"WARNING.*locked by another process")
    assert warnings, "no warning in daemon.log says the store was locked"
    assert len(warnings) <= len(final) + 2, warnings  # one for the trouble, not one per write
    assert not log_lines(d.home, r"ERROR|Traceback"), "\n".join(log_lines(d.home, r"ERROR|Traceback"))


# As LOCK_HOLDER, but it takes the lock only when told to on stdin.
LOCK_ON_CUE = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
sys.stdin.readline()
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def test_a_tell_caught_by_a_store_lock_is_told_once_the_lock_is_gone(daemon: DaemonProc, tmp_path: Path) -> None:
    # The last trial of a study ends; between its ending being stored and the search being
    # told (Ax: a call to the search worker and a dump of its state, tens of ms), another
    # process takes the write lock for longer than the busy timeout. The trial must still
    # be told once the lock is gone (nothing else would tell it: it is the last).
    d = daemon
    study = Gated(d, tmp_path, "tell", ["a0", "b0"], extra="max_trials = 2")
    study.path.write_text(study.path.read_text().replace('algorithm = "grid"', 'algorithm = "sobol"'))
    study.submit()
    wait_for(lambda: len(study.runs()) == 2 and all(r["state"] == "running" for r in study.runs().values()),
             60, what="both runs running")
    runs = study.runs()
    study.open("b0")
    d.wait_state(runs["b0"]["name"], "completed")
    wait_for(lambda: query(d.home, "SELECT COUNT(told) FROM trials WHERE study='tell'") == [(1,)], 10,
             what="b0's trial told")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_ON_CUE, str(d.home / "hypd.db"), "7"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        conn = sqlite3.connect(f"file:{d.home / 'hypd.db'}?mode=ro", uri=True, timeout=30)
        study.open("a0")
        while conn.execute("SELECT state FROM runs WHERE id=?", (runs["a0"]["id"],)).fetchone()[0] == "running":
            time.sleep(0.002)
        holder.stdin.write(b"go\n")  # the moment its ending is stored: lock
        holder.stdin.flush()
        assert holder.stdout.readline() == b"holding\n"
        conn.close()
        assert holder.wait(30) == 0
    finally:
        holder.kill()
    assert d.run(runs["a0"]["name"])["state"] == "completed"
    caught = log_lines(d.home, r"locked by another process")
    assert caught, "the lock came too late to catch the tell (nothing to check)"
    wait_for(lambda: query(d.home, "SELECT trial, told FROM trials WHERE study='tell' AND told IS NULL") == [], 15,
             what="the last trial told once the lock is gone")
    assert [m for (m,) in query(d.home, "SELECT told FROM trials WHERE study='tell'")] == ["completed", "completed"]
    assert not log_lines(d.home, r"carrying out Tell.* failed")


def fill(path: Path) -> int:
    """Write `path` until its filesystem has no byte left; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    written += f.write(block)
                except OSError:
                    break
    return written


@pytest.fixture
def tmpfs_home(hypd_home: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs for $HYPD_HOME (skips when mount is refused)."""
    mnt = hypd_home / "m"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        (mnt / "config.toml").write_text(FAST_CONFIG + "enabled = false\n")
        yield mnt
    finally:
        kill_leftover_runs(mnt)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_under_hypd_home_loses_and_doubles_nothing(cluster: SshdCluster, tmpfs_home: Path,
                                                              daemon_env: dict[str, str], tmp_path: Path) -> None:
    # Realistic: $HYPD_HOME (the store, the daemon's log, its copies of the runs' logs)
    # is on the disk that fills up; the runs are on an SSH host, whose disk is fine.
    a = cluster.add("a", gpus=None)
    d = DaemonProc(tmpfs_home, {**daemon_env, "HYPD_HOME": str(tmpfs_home)})
    use_hosts(d, a.host_config(cpu_slots=4))
    try:
        d.start()
        wait_for(lambda: host_state(d, "a") == "up", 30, what="host a up")
        study = Gated(d, tmp_path, "full", ["a0", "b3", "c0", "d0"], study_dir=tmp_path / "studies")
        study.submit()
        wait_for(lambda: len(study.runs()) == 4 and all(r["state"] == "running" and r["reports"] >= 3
                                                          for r in study.runs().values()),
                 30, what="every run running and reporting")
        runs = study.runs()
        filler = tmpfs_home / "filler"
        assert fill(filler) > 0
        full = time.monotonic()
        time.sleep(1.0)
        study.open("a0", "b3")  # they end while the disk is full
        during = []
        while time.monotonic() - full < 6:
            during.append(answers_ls(d))
            time.sleep(0.3)
        for x in ("a0", "b3"):
            assert (ctl_dir(d.home, runs[x]) / "exit").exists(), f"{x} has not exited"
        filler.unlink()
        a0 = d.wait_state(runs["a0"]["name"], "completed", "failed", timeout=20)
        b3 = d.wait_state(runs["b3"]["name"], "completed", "failed", timeout=20)
        assert (a0["state"], a0["exit_code"]) == ("completed", 0), a0
        assert (b3["state"], b3["exit_code"]) == ("failed", 3), b3
        after = answers_ls(d)
        study.open("c0", "d0")
        d.wait_finished("full", timeout=30)
        final = study.runs()
        assert {x: (r["state"], r["exit_code"]) for x, r in final.items()} == {
            "a0": ("completed", 0), "b3": ("failed", 3), "c0": ("completed", 0), "d0": ("completed", 0)}
        for r in final.values():
            assert_reports_exact(d, r)
            assert Path(r["log_path"]).read_bytes() == (ctl_dir(d.home, r) / "log").read_bytes()
        assert_told(d, "full")
        assert max(during) < 15 and after < 5
        warnings = log_lines(d.home, r"WARNING.*(disk full|No space left)")
        assert warnings, "no warning in daemon.log says the disk was full"
        # One per run and per kind of write (its reports, its log copy), not one per write.
        assert len(warnings) <= 2 * len(final) + 1, warnings
        assert not log_lines(d.home, r"ERROR|Traceback"), "\n".join(log_lines(d.home, r"ERROR|Traceback"))
    finally:
        d.stop(kill_runs=True)


# ----------------------------------------------------------------------------- 3. output that is no report

# Good reports around three bad lines; a pause after each line, so they are read in
# separate passes as well as together.
BAD_OUTPUT = r"""
import random, sys, time
out = sys.stdout.buffer
def line(data):
    out.write(data + b"\n")
    out.flush()
    time.sleep(0.15)
line(b"METRICS: step=0 loss=0.5")
line(b"METRICS: step=1 loss=0.25")
line(b"METRICS: step=2 loss=" + b"7" * (3 << 19))  # 1.5 MiB: over the 1 MiB limit
line(b"METRICS: step=3 loss=0.125")
garbage = bytes(b for b in random.Random(7).randbytes(8192) if b != 10)
line(b"\x00\xff\xfe\x80 \xc3\x28 \x1b[31m\r" + garbage)  # binary, not UTF-8
line(b"METRICS: step=4 loss=0.0625")
line(b"METRICS: step=5 loss=\xff\xfe\x00")  # no number: no report
line(b"METRICS: step=9223372036854775808 loss=99")  # 2**63: SQLite cannot hold it
line(b"METRICS: step=9223372036854775807 loss=0.03125")  # 2**63-1: the largest step there is
line(b"METRICS: step=6 loss=0.015625")
out.write(b"METRICS: step=7 loss=0.0078125")  # the last line, without its newline
"""

GOOD_REPORTS = [(0, 0.5), (1, 0.25), (3, 0.125), (4, 0.0625), ((1 << 63) - 1, 0.03125), (6, 0.015625),
                (7, 0.0078125)]


def daemon_at(where: str, request: pytest.FixtureRequest, cpu_slots: int) -> DaemonProc:
    """A daemon whose runs go to the local machine, or to one SSH host ("a") only."""
    if where == "local":
        return request.getfixturevalue("daemon")  # type: ignore[no-any-return]
    cluster: SshdCluster = request.getfixturevalue("cluster")
    d: DaemonProc = request.getfixturevalue("remote_daemon")
    use_hosts(d, cluster.add("a", gpus=None).host_config(cpu_slots=cpu_slots))
    d.start()
    wait_for(lambda: host_state(d, "a") == "up", 30, what="host a up")
    return d


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_a_line_that_cannot_be_a_report_is_refused_alone(where: str, request: pytest.FixtureRequest,
                                                          tmp_path: Path) -> None:
    d = daemon_at(where, request, cpu_slots=1)
    script = tmp_path / "bad.py"
    script.write_text(BAD_OUTPUT)
    path = d.write_study("bad", f"""
        [study]
        name = "bad"
        objective = {{ metric = "loss" }}
        algorithm = "grid"
        [params]
        x = 1
        [run]
        command = "python3 -u {script}"
    """)
    d.cli("submit", str(path))
    run = d.wait_state("bad:1", "completed", "failed", timeout=60)
    assert run["state"] == "completed", run
    assert [(r["step"], r["values"]) for r in d.call("metrics", run="bad:1", since=0)["reports"]] == [
        (step, {"loss": loss}) for step, loss in GOOD_REPORTS]
    assert run["objective"] == 0.0078125
    host_log = (ctl_dir(d.home, run) / "log").read_bytes()
    assert Path(run["log_path"]).read_bytes() == host_log  # the log itself is kept whole
    assert len(host_log) > 3 << 19
    assert log_lines(d.home, r"WARNING.*bad:1: 1 output line\(s\) over the length limit")
    assert d.cli("metrics", "bad:1").stdout.splitlines()[1:] == [
        f"{step}\t{loss}" for step, loss in GOOD_REPORTS]


# ----------------------------------------------------------------------------- 4. the daemon SIGKILLed

# A trial of the random search: records that it ran, works a little, reports, and fails
# (status 3) when its parameter says so, every time it is run.
KILLED_STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "{algorithm}"
max_trials = {trials}
parallel = 4
retries = 1
[params]
x = {{ type = "float", low = 0.0, high = 1.0 }}
[run]
command = "echo \\"$HYPD_RUN $$\\" >> {ran}/trial-$HYPD_TRIAL; python3 -u -c 'import sys, time; x = {{x}}; time.sleep(0.4 + x); print(\\"METRICS: step=0 loss=%r\\" % x); sys.exit(3 if x <= {fail_below} else 0)'"
"""


@pytest.mark.parametrize("algorithm", ["random", "sobol"])
def test_the_daemon_sigkilled_through_a_study_runs_and_tells_each_trial_once(
        algorithm: str, daemon: DaemonProc, tmp_path: Path) -> None:
    d = daemon
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ran = tmp_path / "ran"
    ran.mkdir()
    # Sobol runs in Ax (the search worker loads it at each start: seconds): fewer trials.
    trials, fail_below = (30 if algorithm == "random" else 20), 0.15
    path = d.write_study("crash", KILLED_STUDY.format(name="crash", algorithm=algorithm, trials=trials, ran=ran,
                                                      fail_below=fail_below))
    d.cli("submit", str(path))
    kills = rng.randint(4, 6)
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 3.0))
        d.kill9()
        d.start()
    d.wait_finished("crash", timeout=120)
    why = f"({algorithm}, seed {seed}, {kills} kills)"

    rows = query(d.home, "SELECT trial, attempt, run_no, state, reason, params FROM runs WHERE study='crash' "
                         "ORDER BY trial, attempt")
    by_trial: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_trial.setdefault(row[0], []).append(row)
    assert len(by_trial) == trials, why
    executions: dict[int, list[str]] = {}
    for f in ran.iterdir():
        # HYPD_TRIAL numbers trials from 1, as users see them; the store from 0.
        executions[int(f.name.split("-")[1]) - 1] = [line.split()[0] for line in f.read_text().splitlines()]
    for trial, attempts in by_trial.items():
        states = [a[3] for a in attempts]
        names = [f"crash:{a[2]}" for a in attempts]
        runs_of_trial = executions.get(trial, [])
        assert [a[1] for a in attempts] == list(range(1, len(attempts) + 1)), (trial, attempts, why)
        # A new attempt only after one that failed, within `retries = 1`.
        assert len(attempts) <= 2 and all(s in ("failed", "lost") for s in states[:-1]), (trial, attempts, why)
        assert states[-1] in ("completed", "failed"), (trial, attempts, why)
        # No attempt ran twice; a trial ran at most once per attempt; a completed one ran.
        assert len(runs_of_trial) == len(set(runs_of_trial)) and set(runs_of_trial) <= set(names), \
            (trial, runs_of_trial, attempts, why)
        if states[-1] == "completed":
            assert names[-1] in runs_of_trial, (trial, runs_of_trial, why)
            # An earlier failed attempt of a trial that completes never ran (its launch was cut short).
            assert all(n not in runs_of_trial for n in names[:-1]), (trial, runs_of_trial, attempts, why)
        fails = json.loads(attempts[0][5])["x"] <= fail_below
        if fails:
            assert states == ["failed", "failed"], (trial, attempts, why)
        else:
            assert states[-1] == "completed", (trial, attempts, why)

    # Every ended trial told to the search exactly once: its mark says how it ended.
    def told() -> list[tuple[Any, ...]]:
        return query(d.home, "SELECT trial, told FROM trials WHERE study='crash' ORDER BY trial")
    wait_for(lambda: all(t[1] is not None for t in told()), 20, what="every trial told")
    for trial, mark in told():
        assert mark == by_trial[trial][-1][3], (trial, mark, by_trial[trial], why)
    assert not log_lines(d.home, r"cannot tell the search"), why
    if algorithm != "random":
        # Ax's stored state agrees: no trial it still thinks is running, each as it ended.
        from hypd.search import load_suggester
        from hypd.study import parse_study

        ((text, state),) = query(d.home, "SELECT text, search_state FROM studies WHERE name='crash'")
        experiment = load_suggester(parse_study(text, str(path)), state)._client._experiment  # type: ignore[attr-defined]
        # (Trials asked ahead and asked again with more data before they ran are withdrawn
        # from Ax, failed with that reason; the store never kept them: hypd/ahead.py.)
        from hypd.search import WITHDRAWN
        statuses = {i: t.status.name for i, t in experiment.trials.items() if t.status_reason != WITHDRAWN}
        assert statuses == {t: m.upper() for t, m in told()}, (statuses, why)


# ----------------------------------------------------------------------------- 5. stop --kill-runs while launching

LEFTOVERS = r"""#!/bin/sh
# A run that leaves two processes: a background child (in its process group) and one that
# left the group with setsid (ignoring SIGTERM, but for "quick"). It prints their pids.
# $1: "exit" (exit 0 once <its folder>/go exists), "quick" (exit 0 at once), else run on.
sleep 300 &
echo "child $!"
if [ "$1" = quick ]; then
    setsid sleep 301 &
    echo "escaped $!"
    exit 0
fi
setsid sh -c 'trap "" TERM; echo "escaped $$"; exec sleep 301' &
echo "started"
if [ "$1" = exit ]; then
    while [ ! -e "$(dirname "$0")/go" ]; do sleep 0.05; done
    exit 0
fi
exec sleep 302
"""


def test_stop_kill_runs_while_runs_launch_leaves_no_process(hypd_home: Path, daemon_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    (hypd_home / "config.toml").write_text(FAST_CONFIG.replace("cpu_slots = 4", "cpu_slots = 8"))
    script = tmp_path / "leftovers.sh"
    script.write_text(LEFTOVERS)
    marker = b"HYPD_CTL=" + os.fsencode(hypd_home)
    rng = random.Random()
    d = DaemonProc(hypd_home, daemon_env)
    try:
        for i in range(4):
            d.start()
            # Runs that end at once (leaving processes behind): slots free and runs launch
            # all the time, so the stop lands among launches, exits and clean-ups.
            path = d.write_study(f"s{i}", f"""
                [study]
                name = "s{i}"
                objective = {{ metric = "loss" }}
                algorithm = "grid"
                parallel = 8
                [params]
                x = {{ type = "int", low = 1, high = 300 }}
                [run]
                command = "sh {script} {'quick' if i % 2 == 0 else 'run'}"
            """)
            assert d.proc is not None
            pid = d.proc.pid
            delay = rng.uniform(0.0, 1.5) if i else 0.0
            if i == 3:  # the stop on its way while the study is submitted
                stop = subprocess.Popen([sys.executable, "-m", "hypd", "stop", "--kill-runs"], env=d.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                with contextlib.suppress(Exception):
                    d.cli("submit", str(path), check=False)
                out = stop.communicate(timeout=60)[0]
                assert stop.returncode == 0, out
            else:
                d.cli("submit", str(path))
                time.sleep(delay)
                out = d.cli("stop", "--kill-runs", timeout=60).stdout
            what = f"round {i} (stop {delay:.2f}s after submit)" if i < 3 else "round 3 (stop during submit)"
            assert not alive(pid), f"{what}: `hypd stop` returned with the daemon (pid {pid}) still there"
            assert d.proc.wait(5) == 0, d.output()[-2000:]
            left = processes_with(marker)
            assert not left, f"{what}: left running: {left}\n{out}"
            pids = [r[0] for r in query(hypd_home, "SELECT pid FROM runs WHERE pid IS NOT NULL")]
            assert not [p for p in pids if p in left], what
            going = query(hypd_home, "SELECT study, run_no, state, reason FROM runs WHERE state IN ('running', 'lost')")
            assert not going, f"{what}: runs still recorded as going: {going}"

        # Last, deterministically: launches held up in their store writes (another process
        # holds the lock for 3 s, under the busy timeout) when the stop comes; they go on
        # once the lock is free, and the runs they start are ended before the daemon exits.
        d.start()
        for i in range(4):
            d.cli("kill", f"s{i}")  # ends and pauses the earlier studies: this one has every slot
        gate = tmp_path / "go-held"
        path = d.write_study("held", f"""
            [study]
            name = "held"
            objective = {{ metric = "loss" }}
            algorithm = "grid"
            parallel = 8
            [params]
            x = {{ type = "int", low = 1, high = 20 }}
            [run]
            command = "echo 'METRICS: loss=1'; sleep 300 & while [ ! -e {gate} ]; do sleep 0.05; done"
        """)
        d.cli("submit", str(path))
        wait_for(lambda: len([r for r in d.runs(study="held", state="running") if r["reports"]]) == 8, 20,
                 what="eight runs reporting")
        first = d.runs(study="held", state="running")
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(hypd_home / "hypd.db"), "3"],
                                  stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        gate.touch()  # they exit: their slots free and the next launches wait on the store
        wait_for(lambda: all((ctl_dir(hypd_home, r) / "exit").exists() for r in first), 5, what="eight exits")
        time.sleep(0.5)
        gate.unlink()  # what starts next runs until it is killed
        pid = d.proc.pid
        out = d.cli("stop", "--kill-runs", timeout=60).stdout
        assert holder.wait(10) == 0
        assert not alive(pid) and d.proc.wait(5) == 0
        left = processes_with(marker)
        assert not left, f"launches under way at the stop: left running: {left}\n{out}"
        states = query(hypd_home, "SELECT state, COUNT(*) FROM runs WHERE study='held' GROUP BY state")
        assert dict(states).get("completed") == 8 and "running" not in dict(states), states
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        kill_leftover_runs(hypd_home)
        for p in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


# ----------------------------------------------------------------------------- 6. nothing outlives its run

@pytest.mark.parametrize("where", ["local", "ssh"])
def test_nothing_a_run_started_outlives_it(where: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    d = daemon_at(where, request, cpu_slots=2)
    script = tmp_path / "leftovers.sh"
    script.write_text(LEFTOVERS)
    path = d.write_study("left", f"""
        [study]
        name = "left"
        objective = {{ metric = "loss" }}
        algorithm = "grid"
        parallel = 2
        [params]
        end = {{ type = "choice", values = ["exit", "kill"] }}
        [run]
        command = "sh {script} {{end}}"
    """)
    d.cli("submit", str(path))

    def pids(run: str) -> dict[str, int]:
        text = d.cli("logs", run).stdout
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(child|escaped) (\d+)$", text, re.M)}

    wait_for(lambda: all(len(pids(r)) == 2 and "started" in d.cli("logs", r).stdout for r in ("left:1", "left:2")),
             30, what="both runs started with their children")
    exited, killed = pids("left:1"), pids("left:2")
    assert all(alive(p) for p in [*exited.values(), *killed.values()])
    (tmp_path / "go").touch()  # left:1 exits 0, its children still there
    d.cli("kill", "left:2")
    assert d.wait_state("left:1", "completed", "failed", timeout=30)["state"] == "completed"
    assert d.wait_state("left:2", "killed", "failed", timeout=30)["state"] == "killed"

    def ended_line(run: str) -> str | None:
        return next(iter(log_lines(d.home, rf"{run}: ended \d+ process\(es\) it left behind")), None)
    line1 = wait_for(lambda: ended_line("left:1"), 20, what="left:1's leftovers ended")
    line2 = wait_for(lambda: ended_line("left:2"), 20, what="left:2's leftovers ended")
    for p in exited.values():
        assert str(p) in line1, line1  # the log names what had to be ended
    assert str(killed["escaped"]) in line2, line2
    for p in [*exited.values(), *killed.values()]:
        wait_for(lambda p=p: not alive(p), 5, what=f"pid {p} to be gone")
    for name in ("left:1", "left:2"):
        run = d.run(name)
        assert not processes_with(b"HYPD_CTL=" + os.fsencode(str(ctl_dir(d.home, run)))), name
