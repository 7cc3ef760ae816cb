"""A real single-node Slurm on localhost for tests and benchmarks.

    cluster = SlurmCluster(base_dir, gpus=4)    # munged + slurmctld + slurmd, own ports and files
    cluster.env                                 # SLURM_CONF=...: what sbatch/squeue/scontrol need
    cluster.node                                # the node's name, for `scontrol update nodename=...`
    cluster.close()

Everything lives under base_dir: slurm.conf, gres.conf, munge's key and socket, the
daemons' state and logs, and dev/nvidia0..3, character devices made with mknod that
gres.conf declares as the node's GPUs (AutoDetect=off), so jobs get CUDA_VISIBLE_DEVICES
as on a real cluster. No cgroups (proctrack/linuxproc, task/none) and no accounting
(no slurmdbd: sacct has nothing to say), as on many small clusters. The daemons run as
the current user (root in CI: `apt-get install -y slurm-wlm munge`); each cluster has its
own ports, so test sessions do not meet.

`slurm_cluster(base)` (a context manager for fixtures) skips the test with a reason when
Slurm or munge is not installed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SLURMCTLD = shutil.which("slurmctld") or "/usr/sbin/slurmctld"
SLURMD = shutil.which("slurmd") or "/usr/sbin/slurmd"
MUNGED = shutil.which("munged") or "/usr/sbin/munged"
NODE = "hypdnode"
PARTITION = "gpu"


def slurm_unavailable() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    for tool, package in ((SLURMCTLD, "slurm-wlm"), (SLURMD, "slurm-wlm"), (MUNGED, "munge")):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found: install {package} (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the one-node Slurm runs as root (slurmd, and mknod for its GPU devices); run the tests as root"
    if shutil.which("sbatch") is None:
        return "sbatch not found: install slurm-wlm (apt-get install -y slurm-wlm munge)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    def __init__(self, base: Path, gpus: int = 4, cpus: int = 8, min_job_age: int = 300) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.gpus = gpus
        self.node = NODE
        self.partition = PARTITION
        self.conf = self.base / "slurm.conf"
        self.munge_socket = self.base / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._write(cpus, min_job_age)
        try:
            self._start_munge()
            self.start()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ configuration

    def _write(self, cpus: int, min_job_age: int) -> None:
        b = self.base
        for d in ("state", "spool", "log", "dev", "munge"):
            (b / d).mkdir(exist_ok=True)
        for i in range(self.gpus):
            dev = b / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(195, i))  # a character device, as the driver's
        ctld_port, slurmd_port = _free_ports(2)
        user = getpass.getuser()
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName=hypdtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=1
MinJobAge={min_job_age}
SchedulerParameters=sched_interval=1,bf_interval=1
MessageTimeout=10
SlurmdTimeout=30
InactiveLimit=0
SlurmdParameters=config_overrides
KillWait=2
OverTimeLimit=0
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        files = f"{b}/dev/nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else f"{b}/dev/nvidia0"
        (b / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={files}\n")

    # ------------------------------------------------------------ daemons

    def _start_munge(self) -> None:
        m = self.base / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        m.chmod(0o700)
        subprocess.run([MUNGED, "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/seed"],
                       check=True, capture_output=True, timeout=30)
        _wait(lambda: self.munge_socket.exists(), 10, "munged's socket")

    def start(self) -> None:
        """Start slurmctld and slurmd (again, after `stop`), and wait for the node to be idle."""
        self.procs["slurmctld"] = subprocess.Popen([SLURMCTLD, "-D", "-i", "-f", str(self.conf)], env=self.env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True)
        _wait(lambda: self.sh("scontrol", "ping", check=False).returncode == 0, 30, "slurmctld")
        self.procs["slurmd"] = subprocess.Popen([SLURMD, "-D", "-N", NODE, "-f", str(self.conf)], env=self.env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                start_new_session=True)
        _wait(lambda: self.node_state().startswith("idle"), 60, "the node to be idle")

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sh("scancel", "--user", getpass.getuser(), check=False)
        self.stop()
        pid_file = self.base / "munge" / "munged.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)

    # ------------------------------------------------------------ for tests

    COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "sacct", "scontrol")

    def install_commands(self, bin_dir: Path) -> Path:
        """Slurm's commands in `bin_dir` as a login node has them (configured for this
        cluster), each call also written to bin_dir/slurm-calls (one name a line): what
        hypd asked of Slurm, counted from outside. The file is returned."""
        calls = bin_dir / "slurm-calls"
        calls.touch()
        for name in self.COMMANDS:
            real = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
            script = bin_dir / name
            script.write_text(f"#!/bin/sh\necho {name} >> {calls}\nexport SLURM_CONF={self.conf}\n"
                              f"exec {real} \"$@\"\n")
            script.chmod(0o755)
        return calls

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=30)

    def node_state(self) -> str:
        out = self.sh("sinfo", "-h", "-N", "-n", NODE, "-o", "%T", check=False)
        return out.stdout.strip().lower() if out.returncode == 0 else ""

    def set_node(self, state: str, reason: str = "hypd test") -> None:
        """`scontrol update nodename=... state=down|resume`."""
        argv = ["scontrol", "update", f"nodename={NODE}", f"state={state}"]
        if state.lower() in ("down", "drain"):
            argv.append(f"reason={reason}")
        self.sh(*argv)

    def jobs(self) -> list[str]:
        """Lines of `squeue` for every job Slurm knows (ended ones for MinJobAge): "id name state reason"."""
        out = self.sh("squeue", "-h", "--states=all", "-o", "%i %j %T %r")
        return [line for line in out.stdout.splitlines() if line.strip()]


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


@contextlib.contextmanager
def slurm_cluster(base: Path, **kwargs: int) -> Iterator[SlurmCluster]:
    why = slurm_unavailable()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(base, **kwargs)
    try:
        yield cluster
    finally:
        cluster.close()
