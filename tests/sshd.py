"""Real OpenSSH servers on 127.0.0.1 for tests and benchmarks: each one a simulated host.

    cluster = SshdCluster(base_dir)              # one client key, one known_hosts file
    a = cluster.add(gpus=[gpu(0), gpu(1)])       # sshd on a free port, its own fake nvidia-smi
    b = cluster.add(gpus=None)                   # a host without nvidia-smi
    config = a.host_config()                     # a HostConfig that reaches it
    a.kill(); a.start()                          # drop it hard (connections too), bring it back
    cluster.close()

Each host has, under base_dir/<name>/: generated host keys, an sshd_config, a bin/ folder put
first on the PATH of every command run through that sshd (`SetEnv PATH=...`, OpenSSH >= 7.8),
with a fake `nvidia-smi` reading gpus.json, root/ (the host's hypd workdir) and home/ (its
$HOME, so `~` on the host is its own), so hosts share nothing. sshd runs in the foreground
(-D) as the current user (root in the sandbox: PermitRootLogin yes); it needs /run/sshd, which is created.

`sshd_cluster(base)` (a context manager for fixtures) skips the test with a reason when sshd
or ssh-keygen is missing.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypd.inventory import HostConfig
from tests.fakes.nvidia_smi import install_fake_nvidia_smi, write_gpu_state

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def sshd_unavailable() -> str | None:
    """Why real sshd servers cannot run here, or None."""
    for tool, package in ((SSHD, "openssh-server"), (SSH_KEYGEN, "openssh-client")):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found: install {package} (apt-get install -y {package})"
    return None


def sshd_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = data[data.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class SshdHost:
    """One sshd: a simulated host."""

    def __init__(self, cluster: SshdCluster, name: str, gpus: list[dict[str, Any]] | None,
                 max_sessions: int | None = None, log_level: str = "ERROR",
                 sftp_server: str | None = None) -> None:
        self.cluster = cluster
        self.name = name
        self.dir = cluster.base / name
        self.dir.mkdir(parents=True)
        self.root = self.dir / "root"  # the host's hypd workdir
        self.root.mkdir()
        self.home = self.dir / "home"  # $HOME (and ~) of every command run through this sshd
        self.home.mkdir()
        self.bin_dir = self.dir / "bin"
        self.bin_dir.mkdir()
        self.gpu_state: Path | None = None
        if gpus is not None:
            self.gpu_state = self.dir / "gpus.json"
            install_fake_nvidia_smi(self.bin_dir, self.gpu_state)
            write_gpu_state(self.gpu_state, gpus)
        self.port = free_port()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"hypd-test-{name}",
                        "-f", str(self.host_key)], check=True)
        self.host_key_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.log_file = self.dir / "sshd.log"
        self.config_path = self.dir / "sshd_config"
        path = os.pathsep.join([str(self.bin_dir), str(Path(sys.executable).parent),
                                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        sftp = sftp_server or next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), "internal-sftp")
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {cluster.client_key}.pub",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin yes",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "UseDNS no",
            "MaxStartups 100",
            f"MaxSessions {max_sessions or 10}",
            f"SetEnv PATH={path} HOME={self.home}",
            f"Subsystem sftp {sftp}",
            f"LogLevel {log_level}",  # benchmarks count requests in sshd.log at DEBUG1
        ]
        if sshd_version() >= (9, 8):
            lines.append("PerSourcePenalties no")  # killed connections must not lock us out
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    # -- what a client needs

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_pub[0]} {self.host_key_pub[1]}"

    def host_config(self, **overrides: Any) -> HostConfig:
        """A HostConfig that reaches this server with the cluster's key and known_hosts
        (~/.ssh/config is not read)."""
        values: dict[str, Any] = dict(name=self.name, address="127.0.0.1", port=self.port,
                                      user=getpass.getuser(), key=str(self.cluster.client_key),
                                      use_ssh_config=False, known_hosts=str(self.cluster.known_hosts),
                                      workdir=str(self.root))
        values.update(overrides)
        return HostConfig(**values)

    def set_gpus(self, gpus: list[dict[str, Any]], **extra: Any) -> None:
        assert self.gpu_state is not None, f"host {self.name} has no nvidia-smi"
        write_gpu_state(self.gpu_state, gpus, **extra)

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> SshdHost:
        """Start sshd on this host's port (the same keys each time) and wait until it answers."""
        assert not self.running
        Path("/run/sshd").mkdir(parents=True, exist_ok=True, mode=0o755)
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_path)], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, close_fds=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_file.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {self.name} does not answer on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the listener and every sshd process serving a connection, so the
        connections really drop (as when a machine goes away). Runs started through it that
        left their session (setsid) go on."""
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # no new connection children while we look
        victims = [p for p in descendants(pid) if _comm(p).startswith("sshd")]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def drop_connections(self) -> list[int]:
        """SIGKILL the sshd processes serving connections (the listener's children, by
        pid), so every connection drops while the listener stays up and takes new ones
        (a dropped network path, not a machine that went away). The pids killed."""
        assert self.proc is not None
        victims = [p for p in _children_map().get(self.proc.pid, []) if _comm(p).startswith("sshd")]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return victims

    def freeze(self) -> None:
        """SIGSTOP the listener and its connection children: connections stay open but
        nothing answers (a machine that hangs, a network that drops packets)."""
        assert self.proc is not None
        for p in [self.proc.pid] + [p for p in descendants(self.proc.pid) if _comm(p).startswith("sshd")]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT what freeze() stopped."""
        assert self.proc is not None
        for p in [self.proc.pid] + descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        self._frozen = False

    def restart(self) -> SshdHost:
        self.kill()
        return self.start()

    # -- a fresh connection with the OpenSSH client

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `command` on this host over a new connection made with /usr/bin/ssh."""
        return subprocess.run(
            [SSH, "-F", "/dev/null", "-i", str(self.cluster.client_key), "-p", str(self.port),
             "-o", f"UserKnownHostsFile={self.cluster.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{getpass.getuser()}@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class SshdCluster:
    """Several SshdHosts sharing a client key and a known_hosts file."""

    def __init__(self, base: str | Path | None = None) -> None:
        reason = sshd_unavailable()
        if reason:
            raise RuntimeError(reason)
        self._own_base = base is None
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="hypd-sshd-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.client_key = self.base / "id_ed25519"
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "hypd-test-client",
                        "-f", str(self.client_key)], check=True)
        self.known_hosts = self.base / "known_hosts"
        self.known_hosts.write_text("")
        self.hosts: list[SshdHost] = []

    def add(self, name: str | None = None, gpus: list[dict[str, Any]] | None = None, *,
            start: bool = True, max_sessions: int | None = None, log_level: str = "ERROR",
            sftp_server: str | None = None) -> SshdHost:
        """A new host (`gpus`: what its fake nvidia-smi reports; None: no nvidia-smi).
        `log_level`: sshd's LogLevel (sshd.log); `sftp_server`: the command of its sftp
        subsystem (default: the system's sftp-server)."""
        host = SshdHost(self, name or f"h{len(self.hosts) + 1}", gpus, max_sessions, log_level, sftp_server)
        self.hosts.append(host)
        with open(self.known_hosts, "a") as f:
            f.write(host.known_hosts_line + "\n")
        if start:
            host.start()
        return host

    def kill_runs(self) -> None:
        """End the process groups of runs started under this cluster's hosts."""
        marker = str(self.base).encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if marker in cmdline and b"run.sh" in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(entry.name), signal.SIGKILL)

    def close(self) -> None:
        for host in self.hosts:
            host.kill()
        self.kill_runs()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def sshd_cluster(base: str | Path) -> Iterator[SshdCluster]:
    """An empty SshdCluster under `base` (add hosts with .add()), closed at the end; skips the
    test when sshd is missing. In a test module:

        @pytest.fixture
        def cluster(tmp_path):
            with sshd_cluster(tmp_path / "sshd") as c:
                yield c
    """
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SshdCluster(base)
    try:
        yield cluster
    finally:
        cluster.close()
