"""Shared fixtures: a real daemon on a temporary $HYPD_HOME, driven through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hypd.inventory import HostConfig, inventory_path, save_inventory
from hypd.ipc import Client, DaemonError, socket_path
from tests.sshd import SshdCluster, sshd_cluster

REPO = Path(__file__).resolve().parents[1]

FAST_CONFIG = """
[daemon]
poll_interval = "0.1s"
gpu_poll = "0.5s"
kill_grace = "2s"

[local]
cpu_slots = 4
"""


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll until predicate() is truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class DaemonProc:
    """A `hypd serve` subprocess and the CLI pointed at it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle

    def start(self) -> DaemonProc:
        log = open(self.home / "serve.out", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "hypd", "serve"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._answers, 30, what="the daemon to answer")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with Client(socket_path(self.home), timeout=2) as c:
                c.call("ping")
            return True
        except (DaemonError, OSError):
            return False

    def output(self) -> str:
        path = self.home / "serve.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, kill_runs: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        args = ["stop", "--kill-runs"] if kill_runs else ["stop"]
        try:
            self.cli(*args, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            # Say where the daemon was: its home (and log) go with the test.
            self.proc.kill()
            self.proc.wait(10)
            log = self.home / "daemon.log"
            tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else ["(no daemon.log)"]
            raise AssertionError(f"hypd {' '.join(args)} took over 30 s; daemon.log ends:\n" + "\n".join(tail)) from None
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    # -- the CLI and the socket

    def cli(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "hypd", *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"hypd {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def call(self, op: str, **args: Any) -> Any:
        with Client(socket_path(self.home), timeout=30) as c:
            return c.call(op, **args)

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        return self.call("ls", state=filters.get("state"), study=filters.get("study"), limit=None)

    def run(self, name: str) -> dict[str, Any]:
        """The run (hypd.ipc.Run); `call("info", ...)` has its history and reports too."""
        return self.call("info", run=name)["run"]

    def wait_state(self, name: str, *states: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (r := self.run(name))["state"] in states and r, timeout,
                        what=f"{name} to become {'/'.join(states)}")

    def wait_finished(self, study: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            for s in self.call("studies"):
                if s["name"] == study and s.get("finished"):
                    return s
            return None
        return wait_for(done, timeout, what=f"study {study} to finish")

    def write_study(self, name: str, text: str) -> Path:
        path = self.home / "studies" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path


def kill_leftover_runs(home: Path) -> None:
    """End any run process group a test left behind (tests must not leak processes)."""
    db = home / "hypd.db"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        # A Slurm run's pid column holds its job id (proc_start 'slurm'): not a process here.
        pids = [r[0] for r in conn.execute("SELECT pid FROM runs WHERE pid IS NOT NULL "
                                           "AND proc_start IS NOT 'slurm'")]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def hypd_home() -> Iterator[Path]:
    # Short, so the socket path fits in sun_path (108 bytes).
    home = Path(tempfile.mkdtemp(prefix="hy", dir="/tmp"))
    (home / "config.toml").write_text(FAST_CONFIG)
    yield home
    kill_leftover_runs(home)
    if not os.environ.get("HYPD_TEST_KEEP"):
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def daemon_env(hypd_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HYPD_HOME"] = str(hypd_home)
    bin_dir = hypd_home / "bin"
    bin_dir.mkdir()
    # The trial host's PATH: the test's own bin first (a fake nvidia-smi goes there), then
    # this Python's, so `python3` in a study is the one with hypd installed.
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture
def daemon(hypd_home: Path, daemon_env: dict[str, str]) -> Iterator[DaemonProc]:
    d = DaemonProc(hypd_home, daemon_env)
    yield d.start()
    d.stop(kill_runs=True)
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()


# ---------------------------------------------------------------- SSH hosts (real sshd)

@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SshdCluster]:
    """Real sshd servers on 127.0.0.1, one per simulated host (skips without sshd)."""
    with sshd_cluster(tmp_path / "sshd") as c:
        yield c


@pytest.fixture
def remote_daemon(hypd_home: Path, daemon_env: dict[str, str]) -> Iterator[DaemonProc]:
    """A daemon (not started) whose only hosts are the SSH ones the test puts in hosts.toml."""
    (hypd_home / "config.toml").write_text(FAST_CONFIG + "enabled = false\n")
    d = DaemonProc(hypd_home, daemon_env)
    yield d
    d.stop(kill_runs=True)
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()


def use_hosts(d: DaemonProc, *configs: HostConfig) -> None:
    """Make these the daemon's SSH hosts (hosts.toml)."""
    save_inventory(inventory_path(d.home), list(configs))


def wait_hosts_up(d: DaemonProc, *names: str) -> None:
    """Wait until each named host is up."""
    wait_for(lambda: {h["name"] for h in d.call("hosts") if h["state"] == "up"} >= set(names), timeout=30,
             what=f"hosts {names} up")
