"""Faults against a real daemon: does anything get lost, doubled or stuck?

    python bench/faults.py [--quick] [--only kill,drop,lock,disk,lines,none] [--keep]

Each fault runs against its own `hypd serve` on a fresh $HYPD_HOME, during one random-search
study with `retries = 0`, whose runs print a known set of reports: `METRICS: loss=X step=i`
for i = 0..N-1, a short sleep apart. Every run also appends its trial and run name to a file
of executions as it starts, on the host, outside hypd's reach.

    none    no fault: the accounting's baseline (local host)
    kill    SIGKILL of the daemon, K times at random moments of a 200-run study of quick runs
            on the local host; each time a new daemon is started at once
    drop    connection drops of an SSH host (real sshd, tests/sshd.py): every sshd process
            serving a connection is SIGKILLed while the listener stays up, D times
    lock    another process holds SQLite's write lock on hypd.db (BEGIN IMMEDIATE) for 30 s
            mid-study (local host)
    disk    the daemon's home (database, log copies) on a small tmpfs, filled up with a file
            for some seconds mid-study; runs on an SSH host whose workdir is on another disk.
            Skipped, with the reason printed, if the tmpfs cannot be mounted
    lines   a line over 1 MiB and a METRICS line with step = 2^63 among each run's normal
            reports (SSH host if sshd is here, else local)

After the study has finished it prints one row per fault:

    runs              trials of the study
    runs lost         trials without a completed attempt (the commands cannot fail)
    runs run twice    trials with more than one attempt (retries = 0: no rule explains a
                      second one), or whose command started more than once (executions file)
    reports printed   METRICS lines the runs wrote to their logs (what is compared)
    reports lost      per attempt, METRICS lines in the run's own log on its host that are not
                      among its stored reports (the `metrics` op), as a multiset of steps
    reports doubled   stored reports beyond what the run printed, likewise
    untold            trials ended but never marked told to the search (trials.told)
    procs left        processes carrying a run's HYPD_CTL marker still alive once the study
                      has finished (nothing a run starts may outlive it)
    recover s         from the end of the fault (a new daemon started, the connection dropped,
                      the lock released, the file removed) until the daemon answers, the host
                      is up again and the study progresses (a report stored or a run ended;
                      for a drop, of a run on the host whose connection dropped): mean and
                      max over the repetitions

`lines` prints the lines refused instead of a recovery time (a line > 1 MiB is not read for
metrics, a step SQLite cannot store is refused; neither counts as printed). Every row is
printed with the load average at its end (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import BenchError, Daemon, load  # noqa: I001

from hypd.inventory import save_inventory
from tests.fakes.nvidia_smi import gpu
from tests.sshd import SshdCluster, SshdHost, sshd_unavailable

STUDY = "faults"
HUGE_STEP = 2**63
METRICS_LINE = re.compile(rb"^METRICS:.*\bstep=(\d+)")


@dataclass
class Plan:
    runs: int
    parallel: int
    reports: int  # METRICS lines per run
    interval: float  # seconds between them
    long_lines: bool = False


@dataclass
class Row:
    fault: str
    runs: int = 0
    lost: int = 0
    twice: int = 0
    printed: int = 0
    reports_lost: int = 0
    reports_doubled: int = 0
    untold: int = 0
    procs_left: int = 0
    recover: list[float] = field(default_factory=list)
    note: str = ""
    load: str = ""
    skipped: str = ""

    def recover_text(self) -> str:
        if not self.recover:
            return "-"
        return f"{statistics.mean(self.recover):.1f} (max {max(self.recover):.1f}, n={len(self.recover)})"


class World:
    """A daemon on a fresh home, the local host or SSH hosts, and one study."""

    def __init__(self, base: Path, *, local_slots: int = 0, ssh_hosts: int = 0, gpus: int = 4,
                 home: Path | None = None) -> None:
        self.base = base
        self.home = home or base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.starts = base / "executions"
        self.cluster: SshdCluster | None = None
        self.servers: list[SshdHost] = []
        if ssh_hosts:
            self.cluster = SshdCluster(base / "sshd")
            self.servers = [self.cluster.add(f"node{i + 1}", gpus=[gpu(g) for g in range(gpus)])
                            for i in range(ssh_hosts)]
            save_inventory(self.home / "hosts.toml", [s.host_config() for s in self.servers])
        local = f"enabled = true\ncpu_slots = {local_slots}\ngpus = []" if local_slots else "enabled = false"
        (self.home / "config.toml").write_text(f'[daemon]\ngpu_poll = "0.5s"\nkill_grace = "2s"\n\n[local]\n{local}\n')
        self.daemon = Daemon(self.home)
        self.gpus = 1 if ssh_hosts else 0
        self.study_s = 0.0

    def roots(self) -> dict[str, Path]:
        roots = {s.name: s.root for s in self.servers}
        roots["local"] = self.home
        return roots

    def study_text(self, plan: Plan) -> str:
        body = (f'echo "$HYPD_TRIAL $HYPD_RUN" >> {self.starts}; i=0; '
                f'while [ $i -lt {plan.reports} ]; do echo "METRICS: loss={{x}} step=$i"; ')
        if plan.long_lines:
            body += (f'if [ $i -eq {plan.reports // 2} ]; then head -c 1500000 /dev/zero | tr "\\0" x; echo; '
                     f'echo "METRICS: loss=1 step={HUGE_STEP}"; fi; ')
        body += f"i=$((i+1)); sleep {plan.interval:g}; done"
        command = body.replace("\\", "\\\\").replace('"', '\\"')
        return textwrap.dedent(f"""\
            [study]
            name = "{STUDY}"
            objective = {{ metric = "loss", goal = "minimize" }}
            algorithm = "random"
            max_trials = {plan.runs}
            parallel = {plan.parallel}
            gpus = {self.gpus}
            seed = 11
            retries = 0

            [params]
            x = {{ type = "float", low = -1.0, high = 1.0 }}

            [run]
            workdir = "{self.base}"
            command = "{command}"
            """)

    def start(self) -> None:
        self.daemon.start()
        self.wait_hosts_up(60)

    def wait_hosts_up(self, timeout: float) -> float:
        """Seconds until every host is up (the daemon answering)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            hosts = self.daemon.try_call("hosts", 5.0)
            if hosts and all(h["state"] == "up" for h in hosts if h["name"] != "hosts.toml"):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise BenchError(f"hosts not up within {timeout:g} s: {self.daemon.try_call('hosts')}")

    def submit(self, plan: Plan) -> None:
        path = self.base / "faults.toml"
        path.write_text(self.study_text(plan))
        self.daemon.call("submit", path=str(path), text=path.read_text(), as_name=None)

    def progress(self, host: str | None = None) -> int | None:
        """Reports stored + runs ended (of runs on `host`), or None if the daemon does not
        answer now."""
        rows = self.daemon.try_call("ls", 5.0, state=None, study=STUDY, limit=None)
        if rows is None:
            return None
        rows = [r for r in rows if host is None or r["host"] == host]
        return sum(r["reports"] for r in rows) + sum(1 for r in rows if r["ended"] is not None)

    def wait_recovered(self, since: float, timeout: float = 120.0, hosts: bool = False,
                       host: str | None = None) -> float:
        """Seconds from `since` (time.monotonic) until the daemon answers, (hosts: every host
        is up) and the study progresses (host: on that host)."""
        deadline = time.monotonic() + timeout
        first: int | None = None
        while time.monotonic() < deadline:
            self.daemon.check_alive()
            p = self.progress(host)
            if p is not None and hosts:
                listed = self.daemon.try_call("hosts", 5.0) or []
                if not all(h["state"] == "up" for h in listed if h["name"] != "hosts.toml"):
                    p = None
            if p is not None:
                if first is None:
                    first = p
                elif p > first:
                    return time.monotonic() - since
                if self.finished():
                    return time.monotonic() - since
            time.sleep(0.05)
        raise BenchError(f"no progress within {timeout:g} s of the fault's end")

    def finished(self) -> bool:
        for s in self.daemon.try_call("studies", 5.0) or []:
            if s["name"] == STUDY:
                return bool(s.get("finished"))
        return False

    def wait_study(self, timeout: float) -> None:
        self.daemon.wait_study(STUDY, timeout, every=0.5)

    def close(self) -> None:
        self.daemon.stop(kill_runs=True)
        if self.cluster is not None:
            self.cluster.close()


# --------------------------------------------------------------------------- accounting

def printed_steps(log: Path) -> tuple[Counter[int], int]:
    """Steps of the METRICS lines a run wrote to its own log, and the lines not counted as
    printed reports (over 1 MiB, or a step SQLite cannot store)."""
    steps: Counter[int] = Counter()
    refused = 0
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return steps, 0
    for line in data.split(b"\n"):
        if len(line) > 1 << 20:
            refused += 1
            continue
        m = METRICS_LINE.match(line)
        if m:
            step = int(m.group(1))
            if step >= HUGE_STEP:
                refused += 1
            else:
                steps[step] += 1
    return steps, refused


def marked_processes(marker: bytes) -> int:
    """Live processes whose environment holds HYPD_CTL=<a path under marker>."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in (b"Z", b"X") and b"HYPD_CTL=" + marker in env:
            n += 1
    return n


def account(world: World, row: Row, plan: Plan) -> None:
    d = world.daemon
    runs = d.call("ls", 120.0, state=None, study=STUDY, limit=None)
    roots = world.roots()
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_trial.setdefault(r["trial"], []).append(r)
    executions: Counter[int] = Counter()
    with contextlib.suppress(FileNotFoundError):
        for line in world.starts.read_text().splitlines():
            if line.split():  # HYPD_TRIAL numbers trials from 1, the store from 0
                executions[int(line.split()[0]) - 1] += 1
    row.runs = plan.runs
    row.lost = plan.runs - sum(1 for attempts in by_trial.values() if any(a["state"] == "completed" for a in attempts))
    row.twice = sum(1 for t, attempts in by_trial.items() if len(attempts) > 1 or executions[t] > 1)
    row.twice += sum(1 for t, n in executions.items() if n > 1 and t not in by_trial)
    refused = 0
    for r in runs:
        if r["host"] is None:
            continue
        log = roots[r["host"]] / "runs" / STUDY / f"{r['run_no']:04d}" / "log"
        printed, n_refused = printed_steps(log)
        refused += n_refused
        row.printed += sum(printed.values())
        stored: Counter[int] = Counter()
        since = 0
        while True:
            page = d.call("metrics", 60.0, run=r["name"], since=since)
            stored.update(rep["step"] for rep in page["reports"])
            if not page["reports"] or page["next"] <= since:
                break
            since = page["next"]
        row.reports_lost += sum((printed - stored).values())
        row.reports_doubled += sum((stored - printed).values())
    with contextlib.closing(sqlite3.connect(f"file:{world.home / 'hypd.db'}?mode=ro", uri=True, timeout=30)) as db:
        row.untold = db.execute(
            "SELECT COUNT(*) FROM trials t WHERE t.study=? AND t.told IS NULL AND NOT EXISTS ("
            "SELECT 1 FROM runs r WHERE r.study=t.study AND r.trial=t.trial "
            "AND r.state IN ('pending','running','lost'))", (STUDY,)).fetchone()[0]
    time.sleep(1.0)  # a run's leftovers are ended within its kill grace of its end
    row.procs_left = marked_processes(str(world.base).encode())
    if plan.long_lines:
        row.note = f"{refused} line(s) refused"


# --------------------------------------------------------------------------- the faults

def during(world: World, plan: Plan, timeout: float, fault: Callable[[], None]) -> None:
    """Submit, run `fault` while the study goes on, wait for its end."""
    t0 = time.monotonic()
    world.submit(plan)
    fault()
    world.wait_study(timeout)
    world.study_s = time.monotonic() - t0


def fault_none(world: World, row: Row, args: argparse.Namespace) -> Plan:
    plan = Plan(runs=40 if args.quick else 100, parallel=8, reports=10, interval=0.05)
    during(world, plan, 300, lambda: None)
    return plan


def fault_kill(world: World, row: Row, args: argparse.Namespace) -> Plan:
    plan = Plan(runs=60 if args.quick else 200, parallel=8, reports=10, interval=0.05)
    kills = 2 if args.quick else 5
    rng = random.Random(args.seed)

    def fault() -> None:
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 3.0))
            if world.finished():
                break
            world.daemon.kill9()
            t_end = time.monotonic()
            world.daemon.start(timeout=60)
            row.recover.append(world.wait_recovered(t_end))

    during(world, plan, 600, fault)
    return plan


def fault_drop(world: World, row: Row, args: argparse.Namespace) -> Plan:
    plan = Plan(runs=40 if args.quick else 120, parallel=8, reports=10, interval=0.1)
    drops = 2 if args.quick else 5
    rng = random.Random(args.seed)
    host = world.servers[0]

    def fault() -> None:
        for _ in range(drops):
            time.sleep(rng.uniform(1.0, 3.0))
            if world.finished():
                break
            if not host.drop_connections():
                continue
            t_end = time.monotonic()
            row.recover.append(world.wait_recovered(t_end, hosts=True, host=host.name))

    during(world, plan, 600, fault)
    return plan


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
print("released", flush=True)
"""


def fault_lock(world: World, row: Row, args: argparse.Namespace) -> Plan:
    hold = 5.0 if args.quick else 30.0
    plan = Plan(runs=40 if args.quick else 120, parallel=8, reports=10, interval=0.1)

    def fault() -> None:
        time.sleep(2.0)
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(world.home / "hypd.db"), str(hold)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "locked":
            raise BenchError("the lock holder could not take the write lock")
        t_lock = time.monotonic()
        waits = []  # how long an `ls` (a read) takes while the lock is held
        for _ in range(3):
            t = time.monotonic()
            answered = world.daemon.try_call("ls", min(20.0, hold), state="running", study=STUDY, limit=None)
            waits.append(f"{time.monotonic() - t:.1f}" if answered is not None else "none")
            time.sleep(min(1.0, hold / 6))
        holder.stdout.readline()  # "released"
        holder.wait()
        t_end = time.monotonic()
        row.note = f"locked {t_end - t_lock:.0f} s; `ls` during it answered in {', '.join(waits)} s"
        row.recover.append(world.wait_recovered(t_end))

    during(world, plan, 600, fault)
    return plan


def fault_disk(world: World, row: Row, args: argparse.Namespace) -> Plan:
    hold = 3.0 if args.quick else 10.0
    plan = Plan(runs=30 if args.quick else 80, parallel=8, reports=10, interval=0.1)
    filler = world.home / "filler"

    def fault() -> None:
        time.sleep(2.0)
        with open(filler, "wb", buffering=0) as f:  # until the tmpfs is full
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
                    f.flush()
            with contextlib.suppress(OSError):
                while True:  # the last bytes
                    f.write(b"\0" * 4096)
                    f.flush()
        t_full = time.monotonic()
        time.sleep(hold)
        free = shutil.disk_usage(world.home).free
        filler.unlink()
        t_end = time.monotonic()
        row.note = f"full {t_end - t_full:.0f} s ({free} bytes free at the end)"
        row.recover.append(world.wait_recovered(t_end, hosts=True))

    during(world, plan, 600, fault)
    return plan


def fault_lines(world: World, row: Row, args: argparse.Namespace) -> Plan:
    plan = Plan(runs=6 if args.quick else 20, parallel=8, reports=10, interval=0.05, long_lines=True)
    during(world, plan, 300, lambda: None)
    return plan


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs at path; None, or why it cannot be done."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                                capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"cannot run mount: {exc}"
    if result.returncode != 0:
        return f"mount -t tmpfs failed: {(result.stderr or result.stdout).strip()}"
    return None


FAULTS: dict[str, tuple[str, Callable[[World, Row, argparse.Namespace], Plan]]] = {
    "none": ("none (baseline, local)", fault_none),
    "kill": ("SIGKILL of the daemon (local)", fault_kill),
    "drop": ("SSH connections dropped", fault_drop),
    "lock": ("SQLite write lock held", fault_lock),
    "disk": ("daemon's disk full", fault_disk),
    "lines": ("line > 1 MiB, step >= 2^63", fault_lines),
}


def run_fault(name: str, args: argparse.Namespace, base: Path) -> Row:
    title, fn = FAULTS[name]
    row = Row(title)
    ssh = name in ("drop", "disk") or (name == "lines" and not sshd_unavailable())
    if ssh and sshd_unavailable():
        row.skipped = f"needs sshd: {sshd_unavailable()}"
        return row
    base = base / name
    base.mkdir()
    home = None
    mounted = False
    if name == "disk":
        home = base / "home"
        why = mount_tmpfs(home, "48m")
        if why:
            row.skipped = why
            return row
        mounted = True
    world: World | None = None
    try:
        world = World(base, local_slots=0 if ssh else 8, ssh_hosts=(1 if name in ("disk", "lines") else 2) if ssh else 0,
                      home=home)
        world.start()
        plan = fn(world, row, args)
        account(world, row, plan)
        row.note = "; ".join(x for x in (f"study {world.study_s:.0f} s", row.note) if x)
    except BenchError as exc:
        row.skipped = f"failed: {exc}"
    finally:
        if world is not None:
            world.close()
        if mounted:
            subprocess.run(["umount", "-l", str(home)], capture_output=True, timeout=30)
        row.load = load()
    return row


def print_table(rows: list[Row]) -> None:
    print("| fault | runs | runs lost | runs run twice | reports printed | reports lost | reports doubled | untold "
          "| procs left | seconds to recover | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.skipped:
            print(f"| {r.fault} | - | - | - | - | - | - | - | - | - | skipped: {r.skipped} |")
            continue
        print(f"| {r.fault} | {r.runs} | {r.lost} | {r.twice} | {r.printed} | {r.reports_lost} | {r.reports_doubled} "
              f"| {r.untold} | {r.procs_left} | {r.recover_text()} | {r.note} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs, fewer and shorter faults")
    p.add_argument("--only", default=",".join(FAULTS), help="faults to run, comma-separated (default: all)")
    p.add_argument("--seed", type=int, default=1, help="when the faults strike")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        p.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    base = Path(tempfile.mkdtemp(prefix="hyf", dir="/tmp"))
    print(f"at start: {load()}")
    rows = []
    try:
        for name in names:
            t0 = time.monotonic()
            row = run_fault(name, args, base)
            rows.append(row)
            state = f"skipped: {row.skipped}" if row.skipped else (
                f"runs {row.runs}, lost {row.lost}, twice {row.twice}, reports printed {row.printed}, "
                f"lost {row.reports_lost}, "
                f"doubled {row.reports_doubled}, untold {row.untold}, procs left {row.procs_left}, "
                f"recover {row.recover_text()} {row.note}")
            print(f"{name}: {state} ({time.monotonic() - t0:.0f} s; {row.load})", flush=True)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(rows)
    print(f"\nat end: {load()}")
    bad = any(r.lost or r.twice or r.reports_lost or r.reports_doubled or r.untold or r.procs_left
              for r in rows if not r.skipped)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
