"""What the benchmarks share: a daemon started as a child on a fresh $HYPD_HOME, the CLI
and the socket client against it, its CPU and memory from /proc, percentiles, the load."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypd.ipc import Client, DaemonError, socket_path  # noqa: E402

SERVE = f"{sys.executable} -m hypd serve"


class BenchError(RuntimeError):
    pass


def load() -> str:
    """The load average, as printed with every figure (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def pyplot() -> Any | None:
    """matplotlib's pyplot on the Agg backend, or None (said once per call) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no PNG: pip install 'hypd[bench]' for matplotlib)")
        return None
    return plt


def cli(env: dict[str, str], *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "hypd", *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise BenchError(f"hypd {' '.join(args)} exited {result.returncode}: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def cpu_seconds(pid: int) -> float:
    """CPU time of a live process: the sum over its threads of /proc/PID/task/*/schedstat
    (nanoseconds; /proc/PID/stat counts in 10 ms ticks, too coarse for a few ms per run),
    or /proc/PID/stat where there is no schedstat. A thread that ended takes its time
    with it from the sum: the daemon's threads (SQLite, the executor) live as long as it."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
        if total:
            return total / 1e9
    except OSError:
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of the process's main thread (the daemon's event loop)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return math.nan


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in KiB) of a live process."""
    cpu = cpu_seconds(pid)
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return cpu, peak


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return math.nan
    k = (len(values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Daemon:
    """`hypd serve` in the foreground as a child process, on `home`."""

    def __init__(self, home: Path, serve: str = SERVE) -> None:
        self.home = home
        self.serve = serve
        self.env = dict(os.environ, HYPD_HOME=str(home))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Daemon:
        with open(self.home / "serve.out", "ab") as out:
            self.proc = subprocess.Popen(shlex.split(self.serve), env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_answering(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise BenchError(f"the daemon exited with {code}; see {self.home / 'serve.out'}")

    def client(self, timeout: float = 30.0) -> Client:
        return Client(socket_path(self.home), timeout=timeout)

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        with self.client(timeout) as c:
            return c.call(op, **args)

    def try_call(self, op: str, timeout: float = 5.0, **args: Any) -> Any:
        """The op's answer, or None if the daemon does not answer now."""
        try:
            return self.call(op, timeout, **args)
        except (DaemonError, OSError):
            return None

    def wait_answering(self, timeout: float) -> float:
        """Seconds until the daemon answers a ping."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            if self.try_call("ping", 2.0) is not None:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise BenchError(f"the daemon does not answer within {timeout:g} s; see {self.home / 'daemon.log'}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def wait_study(self, study: str, timeout: float, every: float = 1.0) -> dict[str, Any]:
        """Poll the `studies` op until the study has finished; its summary."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            summaries = self.try_call("studies", 30.0) or []
            for s in summaries:
                if s["name"] == study and s.get("finished"):
                    return s  # type: ignore[no-any-return]
            if time.monotonic() > deadline:
                raise BenchError(f"study {study} not finished after {timeout:g} s")
            time.sleep(every)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self, kill_runs: bool = True) -> None:
        if not self.alive():
            return
        try:
            self.call("stop", 60.0, kill_runs=kill_runs)
        except (DaemonError, OSError):
            pass
        assert self.proc is not None
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def study_runs(daemon: Daemon, study: str) -> list[dict[str, Any]]:
    """Every run of the study as the `ls` op gives it (every column, log_path included)."""
    return daemon.call("ls", 120.0, state=None, study=study, limit=None)  # type: ignore[no-any-return]
