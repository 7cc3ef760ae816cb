"""SSH hosts: the `Host` interface over one asyncssh connection per machine.

One supervisor task per host keeps one connection up: it connects as `ssh user@addr -p port`
would (default keys, the agent, ~/.ssh/config, ~/.ssh/known_hosts, unless hosts.toml says
otherwise), sends keepalives, and reconnects with capped exponential backoff when the
connection drops. The host's state is "up", "down" (with why and since when) or "draining".

Over that connection:

- one SFTP session (one channel) carries everything that is a file: run status (the run's
  /proc/<pid>/stat and its exit file), pid files, the study's code, and the run logs;
- one long-running `nvidia-smi --query-gpu=... -l N` streams GPU readings (restarted if it
  dies; a host without nvidia-smi gives a "none" snapshot and offers CPU slots only);
- one long-running /bin/sh (one channel) runs our short scripts one after another: it
  starts runs (run.sh arrives in the same round trip) and signals process groups, with no
  login shell per command (a user's rc files can take longer than the launch itself).
So a host uses 3 of the 10 sessions OpenSSH's sshd allows per connection (MaxSessions).

Runs start detached on the host in their own session (`setsid`, else perl's or python's
setsid, else a job-controlled `nohup`), so they outlive the connection and the daemon.
Their output goes to <ctl_dir>/log on the host; a log pump copies it, by appending to the
local `Launch.log_path`, from the local file's size on: after a reconnect or a daemon
restart it resumes from there, so no byte is lost or doubled. `status()` reports a run
ended only after its whole log has been copied.

Failures are values: the supervisor never raises; every public method raises only
`HostError` with one line of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import secrets
import shlex
import signal as signal_module
import stat as stat_module
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import asyncssh

from hypd.gpus import SOURCE_NVIDIA_SMI, GpuReading, GpuSnapshot, nvidia_smi_args, parse_nvidia_smi_csv
from hypd.hosts import Handle, Host, HostError, Launch, Status
from hypd.inventory import HostConfig
from hypd.study import StudySpec
from hypd.wrapper import parse_exit_file, script_text

log = logging.getLogger("hypd.ssh")

LOG_CHUNK = 4 << 20  # at most this many bytes of a run log per SFTP read (parallel requests)
MARK = "@hypd"  # prefixes the lines of our remote scripts' output we parse (a noisy .bashrc may print more)
CODE_MANIFEST = ".hypd-code.json"  # in <root>/studies/<study>/: what code/ holds (size, mtime, mode)
_NO_NVIDIA_SMI_RETRY = 60.0  # seconds between looks for nvidia-smi on a host that has none

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers (pure)

def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _exc_text(exc: BaseException) -> str:
    """One line for an exception from asyncssh, the OS or asyncio."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.Error):
        return _one_line(exc.reason or type(exc).__name__)
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    text = str(exc)
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _sh(script: str) -> str:
    """A command line that runs `script` with /bin/sh whatever the user's login shell is."""
    return "exec /bin/sh -c " + shlex.quote(script)


def remote_path_expr(path: str) -> str:
    """A shell word for a configured remote path, with a leading ~ expanded on the host."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def parse_proc_stat(text: str) -> tuple[str, str] | None:
    """(state letter, start time) from the text of /proc/<pid>/stat, or None."""
    end = text.rfind(")")
    if end < 0:
        return None
    fields = text[end + 2:].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; whether it is set. (Not
    wait_for(event.wait()): Python 3.11's wait_for can swallow a cancellation that arrives
    as the wait ends, and a task cancelled there never ends.)"""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
    return event.is_set()


def marked(stdout: str) -> list[list[str]]:
    """The lines of our scripts' output that start with MARK, split into words (MARK dropped)."""
    out = []
    for line in stdout.splitlines():
        if line.startswith(MARK + " "):
            out.append(line[len(MARK) + 1:].split(" "))
    return out


def launch_script(ctl_dir: str, run_sh: str, wait_s: float = 10.0) -> str:
    """The remote script that stores run.sh, starts it detached in its own session with
    its output in <ctl>/log, waits for its pid file and prints the pid and the process's
    /proc stat line (field 22 is its start time)."""
    tries = max(1, int(wait_s / 0.01))
    delimiter = f"HYPD_RUN_SH_{secrets.token_hex(8)}"
    start = '/bin/sh "$ctl/run.sh" > "$ctl/log" 2>&1 < /dev/null &'
    return "\n".join([
        f"ctl={shlex.quote(ctl_dir)}",
        f'mkdir -p "$ctl" || {{ echo "{MARK} error cannot create $ctl"; exit 97; }}',
        f"cat > \"$ctl/run.sh.tmp\" <<'{delimiter}'",
        run_sh + ("" if run_sh.endswith("\n") else "\n") + delimiter,
        f'mv -f "$ctl/run.sh.tmp" "$ctl/run.sh" || {{ echo "{MARK} error cannot write $ctl/run.sh"; exit 97; }}',
        'rm -f "$ctl/pid" "$ctl/exit"',
        "cd /",
        # A new session, in a subshell that ends at once: the run is nobody's child here,
        # outlives the connection, and is its own process group (pgid = pid).
        f"(if command -v setsid >/dev/null 2>&1; then setsid {start} "
        f"elif command -v perl >/dev/null 2>&1; then perl -e 'use POSIX qw(setsid); setsid(); exec @ARGV' {start} "
        f"elif command -v python3 >/dev/null 2>&1; then python3 -c 'import os,sys; os.setsid(); "
        f"os.execv(sys.argv[1], sys.argv[1:])' {start} "
        f"else set -m; nohup {start} fi)",
        "i=0",
        f'while [ ! -s "$ctl/pid" ] && [ "$i" -lt {tries} ]; do sleep 0.01 2>/dev/null || sleep 1; i=$((i+1)); done',
        f'pid=$(cat "$ctl/pid" 2>/dev/null) || {{ echo "{MARK} error run.sh wrote no pid file; its log says: '
        '$(head -c 300 "$ctl/log" 2>/dev/null | tr "\\n" " ")"; exit 98; }',
        f'echo "{MARK} pid $pid"',
        f'echo "{MARK} stat $(cat /proc/$pid/stat 2>/dev/null)"',
    ])


def local_manifest(workdir: str, files: tuple[str, ...]) -> dict[str, list[int]]:
    """relative posix path -> [size, mtime_ns, mode] of every file `files` names under
    `workdir` (folders recursively). ValueError naming an entry that does not exist."""
    base = Path(workdir)
    manifest: dict[str, list[int]] = {}

    def add(path: Path) -> None:
        st = path.stat()
        rel = path.relative_to(base).as_posix()
        manifest[rel] = [st.st_size, st.st_mtime_ns, stat_module.S_IMODE(st.st_mode)]

    for entry in files:
        path = base / entry.rstrip("/")
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for name in sorted(filenames):
                    full = Path(dirpath) / name
                    if full.is_file():
                        add(full)
        elif path.is_file():
            add(path)
        else:
            raise ValueError(f"run.files entry {entry!r} does not exist in {workdir}")
    return manifest


# --------------------------------------------------------------------------- internals

class _Client(asyncssh.SSHClient):
    """Remembers why the connection ended."""

    def __init__(self) -> None:
        self.lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc


class _SetupError(Exception):
    pass


@dataclass
class _Result:
    exit_status: int | None
    stdout: str  # stdout and stderr together
    stderr: str = ""


class _Shell:
    """One long-running /bin/sh on the host that runs our short scripts one after another:
    no login shell (with its rc files, often slow) and no new channel per command. Each
    script runs in a subshell (`exit` ends only it) with stdin from /dev/null; its output
    ends at a line with a random token and its exit status. A script that times out, or a
    shell that dies, is replaced by a fresh shell at the next call."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        self.proc: asyncssh.SSHClientProcess[str] | None = None
        self.lock = asyncio.Lock()

    async def run(self, script: str, timeout: float) -> _Result:
        async with self.lock:
            try:
                return await asyncio.wait_for(self._run(script), timeout)
            except BaseException:
                self.close()  # out of step with the shell now: start over next time
                raise

    async def _run(self, script: str) -> _Result:
        if self.proc is None:
            self.proc = await self.conn.create_process("exec /bin/sh", stderr=asyncssh.STDOUT,
                                                       encoding="utf-8", errors="replace")
        token = secrets.token_hex(8)
        end = f"{MARK}-end {token} "
        self.proc.stdin.write(f"(\n{script}\n) </dev/null 2>&1; printf '\\n{end}%s\\n' \"$?\"\n")
        lines: list[str] = []
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise ConnectionError("the command shell on the host ended")
            if line.startswith(end):
                status = line[len(end):].strip()
                text = "".join(lines)
                return _Result(int(status) if status.isdigit() else None, text[:-1] if text.endswith("\n") else text)
            lines.append(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None


@dataclass
class _Follow:
    """One run's log being copied from the host to the daemon's machine."""

    ctl_dir: str
    log_path: str  # local
    handle: Handle | None = None
    done: bool = False  # the run ended and its whole log has been copied
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def remote_log(self) -> str:
        return f"{self.ctl_dir}/log"


def _public(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn anything but HostError (and cancellation) into a one-line HostError."""

    @functools.wraps(fn)
    async def wrapper(self: SshHost, *args: Any, **kwargs: Any) -> T:
        try:
            return await fn(self, *args, **kwargs)
        except (HostError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: only HostError leaves
            if not isinstance(exc, (asyncssh.Error, OSError, EOFError, asyncio.TimeoutError)):
                log.debug("%s: %s failed", self.name, fn.__name__, exc_info=True)
            raise HostError(f"host {self.name}: {fn.__name__.strip('_')}: {_exc_text(exc)}") from None

    return wrapper


# --------------------------------------------------------------------------- the host

class SshHost(Host):
    """A machine reached over SSH, described by a `HostConfig`.

    `home` is the daemon's home on this machine: an adopted run's log (one the daemon did
    not launch in this process) is copied to <home>/runs/<study>/<NNNN>/log, where the
    daemon keeps it. `connect_options` go to `asyncssh.connect` last (tests use them).
    """

    def __init__(self, config: HostConfig, home: str | Path | None = None, *,
                 connect_options: Mapping[str, Any] | None = None,
                 gpu_interval: float = 1.0, log_interval: float = 0.5,
                 backoff: tuple[float, float] = (0.5, 30.0),
                 keepalive: tuple[float, int] = (5.0, 3),
                 connect_timeout: float = 15.0, command_timeout: float = 30.0) -> None:
        self.config = config
        self.name = config.name
        self.home = Path(home) if home is not None else None
        self.root = config.workdir  # resolved to an absolute path at the first connection
        self.busy_memory_mib = config.busy_memory_mib
        self.busy_utilization = config.busy_utilization
        self.allowed_gpus = config.gpus
        self.max_per_gpu = config.max_per_gpu
        self.setup = config.setup
        self.lost_after = config.lost_after
        self.draining = config.draining
        self.connect_options = dict(connect_options or {})
        self.gpu_interval = gpu_interval
        self.log_interval = log_interval
        self.backoff = backoff
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout

        self.down_since: float | None = None
        self.connects = 0  # connections made (1 + reconnects)
        self.gpu_stream_starts = 0  # nvidia-smi processes started
        self.uploads = 0  # files copied by prepare_study
        self._up = False
        self._why = "not started"
        self._nproc: int | None = None
        self._root_resolved = False
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._up_event = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._gpu_task: asyncio.Task[None] | None = None
        self._gpu: GpuSnapshot | None = None
        self._gpu_seen = asyncio.Event()
        self._shell: _Shell | None = None
        self._follows: dict[str, _Follow] = {}
        self._launching: dict[str, asyncio.Future[Handle | None]] = {}  # ctl_dir -> launch()'s handle
        self._orphans: set[str] = set()  # ctl_dirs of launches cut off midway: ended when up again
        self._pump_wake = asyncio.Event()
        self._prepared: dict[str, str] = {}  # study -> manifest digest known to be on the host
        self._study_locks: dict[str, asyncio.Lock] = {}
        if logging.getLogger("asyncssh").level == logging.NOTSET:
            logging.getLogger("asyncssh").setLevel(logging.WARNING)  # it logs every channel at INFO

    # ------------------------------------------------------------------ state

    @property
    def accepting(self) -> bool:
        return self._up and not self.draining

    @property
    def state(self) -> tuple[str, str]:
        if not self._up:
            return ("down", self._why)
        if self.draining:
            return ("draining", "draining: running runs go on, nothing new starts")
        return ("up", "")

    @property
    def cpu_slots(self) -> int:  # type: ignore[override]
        if self.config.cpu_slots is not None:
            return self.config.cpu_slots
        return self._nproc or 0

    def set_draining(self, draining: bool = True) -> None:
        self.draining = draining

    def _set_down(self, why: str) -> None:
        if self._up or why != self._why:
            log.warning("host %s down: %s", self.name, why)
        self._up = False
        self._up_event.clear()
        self._why = why
        if self.down_since is None:
            self.down_since = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin keeping a connection to the host (returns at once)."""
        if self._supervisor is not None:
            return
        self._closing = False
        self._why = "connecting"
        if self.down_since is None:
            self.down_since = time.time()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"ssh:{self.name}")
        self._pump = asyncio.create_task(self._pump_logs(), name=f"ssh-logs:{self.name}")

    async def wait_up(self, timeout: float | None = None) -> bool:
        """Wait until the host is up; False after `timeout` seconds."""
        return await _wait_event(self._up_event, timeout)

    async def close(self) -> None:
        """Stop the supervisor, the GPU stream and the log pump, and close the connection.
        Runs on the host go on. Never raises."""
        self._closing = True
        pending = {t for t in (self._supervisor, self._pump, self._gpu_task) if t is not None}
        for _ in range(20):  # again if a cancellation was swallowed (asyncio.wait_for in 3.11)
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        self._supervisor = self._pump = self._gpu_task = None
        await self._drop_connection()
        self._up = False
        self._up_event.clear()
        self._why = "closed"

    def _forget_connection(self) -> None:
        if self._shell is not None:
            self._shell.close()
        self._conn = self._sftp = self._shell = None

    async def _drop_connection(self) -> None:
        conn = self._conn
        self._forget_connection()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    # ------------------------------------------------------------------ supervisor

    def _connect_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {
            "keepalive_interval": self.keepalive[0],
            "keepalive_count_max": self.keepalive[1],
            "connect_timeout": self.connect_timeout,
            "login_timeout": self.connect_timeout,
        }
        if cfg.port != 22 or not cfg.use_ssh_config:
            kw["port"] = cfg.port
        if cfg.user:
            kw["username"] = cfg.user
        if not cfg.use_ssh_config:
            kw["config"] = None
        if cfg.known_hosts is False:
            kw["known_hosts"] = None
        elif isinstance(cfg.known_hosts, str):
            kw["known_hosts"] = os.path.expanduser(cfg.known_hosts)
        if cfg.key:
            kw["client_keys"] = [os.path.expanduser(cfg.key)]
        kw.update(self.connect_options)
        return kw

    def _explain(self, exc: BaseException) -> str:
        cfg = self.config
        where = f"{cfg.address}:{cfg.port}"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            if isinstance(cfg.known_hosts, str):
                file = cfg.known_hosts
            else:
                file = "~/.ssh/known_hosts"
            keyscan = f"ssh-keyscan -p {cfg.port} {cfg.address} >> {file}"
            return (f"host key for {where} not in known_hosts ({file}) or it has changed; "
                    f"check it and add it with `{keyscan}`, or set known_hosts = false")
        if isinstance(exc, asyncssh.PermissionDenied):
            who = f"{cfg.user}@{where}" if cfg.user else where
            keys = f"key {cfg.key}" if cfg.key else "your default keys and agent"
            return f"authentication failed for {who} with {keys}: {_exc_text(exc)}"
        if isinstance(exc, asyncio.TimeoutError):
            return f"no answer from {where} within {self.connect_timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(exc, _SetupError):
            return str(exc)
        if isinstance(exc, OSError):
            return f"cannot reach {where}: {_exc_text(exc)}"
        return f"cannot connect to {where}: {_exc_text(exc)}"

    async def _supervise(self) -> None:
        delay = self.backoff[0]
        while not self._closing:
            conn: asyncssh.SSHClientConnection | None = None
            try:
                conn, client = await asyncssh.create_connection(
                    _Client, self.config.address, **self._connect_kwargs())
                await self._setup(conn)
            except asyncio.CancelledError:
                if conn is not None:
                    conn.abort()
                raise
            except Exception as exc:  # noqa: BLE001 - failures are values
                if conn is not None:
                    conn.abort()
                await self._stop_gpu_stream()
                self._forget_connection()
                self._set_down(self._explain(exc))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            self.connects += 1
            self._up = True
            self._why = ""
            self.down_since = None
            self._up_event.set()
            self._pump_wake.set()
            log.info("host %s up (root %s, %d cpus)", self.name, self.root, self.cpu_slots)
            since = time.monotonic()
            await conn.wait_closed()
            lost = client.lost
            await self._stop_gpu_stream()
            self._forget_connection()
            self._set_down(f"connection lost: {_exc_text(lost)}" if lost else "connection closed")
            if time.monotonic() - since > 10:
                delay = self.backoff[0]
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff[1])

    async def _setup(self, conn: asyncssh.SSHClientConnection) -> None:
        """Resolve the root, count cores, open SFTP and start the GPU stream."""
        script = "; ".join([
            f"d={remote_path_expr(self.config.workdir)}",
            f'mkdir -p "$d" && cd "$d" || {{ echo "{MARK} error cannot create $d"; exit 1; }}',
            f'echo "{MARK} root $(pwd -P)"',
            f'echo "{MARK} nproc $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"',
        ])
        shell = _Shell(conn)  # started now, so the first launch does not wait for a login shell
        try:
            result = await shell.run(script, self.command_timeout)
        except BaseException:
            shell.close()
            raise
        root = nproc = None
        for words in marked(str(result.stdout or "")):
            if words[0] == "root" and len(words) > 1:
                root = " ".join(words[1:])
            elif words[0] == "nproc" and len(words) > 1 and words[1].isdigit():
                nproc = int(words[1])
            elif words[0] == "error":
                shell.close()
                raise _SetupError(f"workdir {self.config.workdir}: {' '.join(words[1:])}")
        if result.exit_status != 0 or not root:
            shell.close()
            why = _one_line(result.stdout or f"status {result.exit_status}")
            raise _SetupError(f"cannot prepare workdir {self.config.workdir}: {why}")
        self.root = root
        self._root_resolved = True
        self._nproc = nproc or 1
        self._sftp = await asyncio.wait_for(conn.start_sftp_client(), self.command_timeout)
        self._conn = conn
        self._shell = shell
        self._gpu_seen.clear()
        self._gpu_task = asyncio.create_task(self._gpu_stream(conn), name=f"ssh-gpus:{self.name}")
        # Up means ready: the first GPU reading (or its failure) is in before runs are placed.
        await _wait_event(self._gpu_seen, max(5.0, 3 * self.gpu_interval))

    def _require(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        conn, sftp = self._conn, self._sftp
        if not self._up or conn is None or sftp is None:
            raise HostError(f"host {self.name} is down: {self._why}")
        return conn, sftp

    # ------------------------------------------------------------------ remote primitives

    async def _exec(self, script: str) -> _Result:
        """Run a short script with /bin/sh on the host (through the command shell)."""
        self._require()
        shell = self._shell
        if shell is None:
            raise HostError(f"host {self.name} is down: {self._why}")
        return await shell.run(script, self.command_timeout)

    async def _read(self, path: str, limit: int = 65536) -> bytes | None:
        """The start of a remote file, or None if it does not exist."""
        _, sftp = self._require()
        try:
            async with sftp.open(path, "rb", block_size=0) as f:  # one request; /proc files have no size
                return bytes(await asyncio.wait_for(f.read(limit, 0), self.command_timeout))
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _proc_start(self, pid: int) -> tuple[str, str] | None:
        data = await self._read(f"/proc/{pid}/stat", 4096)
        return parse_proc_stat(data.decode(errors="replace")) if data else None

    async def _alive(self, handle: Handle) -> bool:
        stat = await self._proc_start(handle.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return handle.proc_start is None or stat[1] == handle.proc_start

    # ------------------------------------------------------------------ GPUs

    @_public
    async def read_gpus(self) -> GpuSnapshot:
        """The latest reading of the host's one streaming nvidia-smi; a "none" snapshot
        saying why when the host is down or has no nvidia-smi."""
        if not self._up:
            return GpuSnapshot.failed(f"host {self.name} is down: {self._why}")
        return self._gpu or GpuSnapshot.failed("no GPU reading yet")

    async def _stop_gpu_stream(self) -> None:
        task, self._gpu_task = self._gpu_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _gpu_stream(self, conn: asyncssh.SSHClientConnection) -> None:
        delay = 1.0
        while not self._closing:
            started = time.monotonic()
            try:
                error, missing = await self._stream_once(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a channel that fails is a value too
                error, missing = f"cannot run nvidia-smi: {_exc_text(exc)}", False
            self._gpu = GpuSnapshot.failed(error)
            self._gpu_seen.set()
            if missing:
                await asyncio.sleep(_NO_NVIDIA_SMI_RETRY)
                continue
            log.warning("host %s: %s; restarting it", self.name, error)
            if time.monotonic() - started > 60:
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _stream_once(self, conn: asyncssh.SSHClientConnection) -> tuple[str, bool]:
        """Run one streaming nvidia-smi until it ends; (why it ended, nvidia-smi missing)."""
        argv = nvidia_smi_args(self.gpu_interval)
        script = (f'command -v nvidia-smi >/dev/null 2>&1 || {{ echo "{MARK} missing"; exit 127; }}; '
                  f"exec {shlex.join(argv)}")
        stale = max(15.0, 5 * self.gpu_interval)
        proc = await conn.create_process(_sh(script), stderr=asyncssh.STDOUT, encoding="utf-8",
                                         errors="replace")
        self.gpu_stream_starts += 1
        block: list[GpuReading] = []
        gap = min(0.1, self.gpu_interval / 4)  # nvidia-smi prints a block's lines together
        errors: list[str] = []
        missing = False

        def publish() -> None:
            nonlocal block
            if block:
                self._gpu = GpuSnapshot(tuple(block), SOURCE_NVIDIA_SMI, time.time())
                self._gpu_seen.set()
                block = []

        try:
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), gap if block else stale)
                except asyncio.TimeoutError:
                    if block:
                        publish()
                        continue
                    return f"nvidia-smi gave no reading for {stale:g} s", False
                if not line:
                    break
                text = line.strip()
                if not text:
                    continue
                if text == f"{MARK} missing":
                    missing = True
                    continue
                try:
                    readings = parse_nvidia_smi_csv(text)
                except ValueError:
                    if len(errors) < 3:
                        errors.append(_one_line(text, 200))
                    continue
                if not readings:
                    continue
                if block and readings[0].index <= block[-1].index:
                    publish()
                block.append(readings[0])
            publish()
        finally:
            proc.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait_closed(), 5)
        if missing:
            return f"nvidia-smi not found on host {self.name}", True
        status = proc.exit_status
        return (f"nvidia-smi exited with status {status}: {errors[0] if errors else 'no message'}",
                False)

    # ------------------------------------------------------------------ study code

    @_public
    async def prepare_study(self, spec: StudySpec) -> str:
        """Copy spec.files (relative to spec.workdir here) to <root>/studies/<study>/code/ on
        the host, only what changed since the last copy, and return that folder. Without
        files, the study's workdir is used as it is (a shared filesystem, or code that is
        already there)."""
        if not spec.files:
            return spec.workdir
        _, sftp = self._require()
        study_dir = f"{self.root}/studies/{spec.name}"
        code = f"{study_dir}/code"
        try:
            manifest = await asyncio.to_thread(local_manifest, spec.workdir, tuple(spec.files))
        except (ValueError, OSError) as exc:
            raise HostError(f"study {spec.name}: {_exc_text(exc) if isinstance(exc, OSError) else exc}") from None
        digest = hashlib.sha256(json.dumps([self.root, manifest], sort_keys=True).encode()).hexdigest()
        if self._prepared.get(spec.name) == digest:
            return code
        lock = self._study_locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            if self._prepared.get(spec.name) == digest:
                return code
            manifest_path = f"{study_dir}/{CODE_MANIFEST}"
            remote: dict[str, Any] = {}
            raw = await self._read(manifest_path, 64 << 20)
            if raw:
                with contextlib.suppress(ValueError):
                    loaded = json.loads(raw)
                    if isinstance(loaded, dict):
                        remote = loaded
            changed = [rel for rel, meta in manifest.items() if remote.get(rel) != meta]
            removed = [rel for rel in remote if rel not in manifest]
            await asyncio.wait_for(sftp.makedirs(code, exist_ok=True), self.command_timeout)
            for folder in sorted({str(PurePosixPath(rel).parent) for rel in changed} - {"."}):
                await asyncio.wait_for(sftp.makedirs(f"{code}/{folder}", exist_ok=True), self.command_timeout)
            gate = asyncio.Semaphore(8)

            async def put(rel: str) -> None:
                async with gate:
                    await sftp.put(str(Path(spec.workdir) / rel), f"{code}/{rel}", preserve=True)

            await asyncio.gather(*(put(rel) for rel in changed))
            for rel in removed:
                with contextlib.suppress(asyncssh.SFTPError):
                    await sftp.remove(f"{code}/{rel}")
            tmp = f"{manifest_path}.tmp"
            async with sftp.open(tmp, "wb") as f:
                await f.write(json.dumps(manifest, sort_keys=True).encode())
            await sftp.posix_rename(tmp, manifest_path)
            self.uploads += len(changed)
            if changed or removed:
                log.info("host %s: study %s: copied %d file(s), removed %d", self.name, spec.name,
                         len(changed), len(removed))
            self._prepared[spec.name] = digest
        return code

    # ------------------------------------------------------------------ runs

    @_public
    async def launch(self, launch: Launch) -> Handle:
        """Store run.sh, start it detached in its own session on the host, and follow its
        log into `launch.log_path`."""
        script = launch.script
        ctl = script.ctl_dir
        done: asyncio.Future[Handle | None] = asyncio.get_running_loop().create_future()
        self._launching[ctl] = done
        handle = None
        try:
            handle = await self._launch(launch)
            return handle
        finally:
            self._launching.pop(ctl, None)
            done.set_result(handle)

    async def _launch(self, launch: Launch) -> Handle:
        script = launch.script
        ctl = script.ctl_dir
        local = Path(launch.log_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(b"")  # a fresh run: its log starts empty here as on the host
        try:
            result = await self._exec(launch_script(ctl, script_text(script)))
        except BaseException:
            # Cut off mid-launch: the run may have started. The daemon is told it failed, so
            # end it when the host is back rather than leave it holding a GPU unseen.
            self._orphans.add(ctl)
            raise
        pid = start = None
        errors = []
        for words in marked(str(result.stdout or "")):
            if words[0] == "pid" and len(words) > 1 and words[1].isdigit():
                pid = int(words[1])
            elif words[0] == "stat":
                stat = parse_proc_stat(" ".join(words[1:]))
                start = stat[1] if stat else None
            elif words[0] == "error":
                errors.append(" ".join(words[1:]))
        if pid is None or pid <= 1:
            why = errors[0] if errors else _one_line(result.stderr or result.stdout or
                                                      f"status {result.exit_status}")
            raise HostError(f"host {self.name}: cannot start {script.run}: {why}")
        handle = Handle(pid, start)
        self._follows[ctl] = _Follow(ctl, str(local), handle)
        self._pump_wake.set()
        return handle

    async def _launched(self, ctl_dir: str) -> Handle | None:
        """Wait until a launch() into ctl_dir under way (if any) has returned; its handle."""
        pending = self._launching.get(ctl_dir)
        if pending is None:
            return None
        return await asyncio.shield(pending)

    def follow(self, ctl_dir: str, log_path: str, handle: Handle | None = None) -> None:
        """Copy the run's log into `log_path` (from that file's size on) until it ends. For a
        run the daemon adopted; `status` and `find_handle` do it by themselves when the log is
        where the daemon keeps it (<home>/runs/<study>/<NNNN>/log)."""
        current = self._follows.get(ctl_dir)
        if current is not None and current.log_path == log_path:
            current.done = False
            if handle is not None:
                current.handle = handle
            return
        self._follows[ctl_dir] = _Follow(ctl_dir, log_path, handle)
        self._pump_wake.set()

    def local_log_path(self, ctl_dir: str) -> str | None:
        """Where the daemon keeps the log of the run with this control folder:
        <home>/runs/<study>/<NNNN>/log for <root>/runs/<study>/<NNNN>."""
        if self.home is None:
            return None
        parts = PurePosixPath(ctl_dir).parts
        if len(parts) < 3 or parts[-3] != "runs":
            return None
        return str(self.home / "runs" / parts[-2] / parts[-1] / "log")

    def _follow_for(self, ctl_dir: str, handle: Handle | None) -> _Follow | None:
        follow = self._follows.get(ctl_dir)
        if follow is None:
            path = self.local_log_path(ctl_dir)
            if path is None:
                return None
            follow = self._follows[ctl_dir] = _Follow(ctl_dir, path, handle)
            log.info("host %s: following the log of %s into %s", self.name, ctl_dir, path)
            self._pump_wake.set()
        elif handle is not None and follow.handle is None:
            follow.handle = handle
        return follow

    @_public
    async def status(self, handle: Handle | None, ctl_dir: str) -> Status:
        """Alive or not (pid there, not a zombie, same start time) and the exit file. When
        the run has ended, returns only after its whole log has been copied here.
        HostError while the host is down. Asked about a run whose launch() is still under
        way, it waits for that first and answers with the handle launch() returns (the
        daemon's monitor may look before launch() has returned)."""
        launched = await self._launched(ctl_dir)
        if handle is None:
            handle = launched
        follow = self._follow_for(ctl_dir, handle)
        self._require()
        alive = handle is not None and await self._alive(handle)
        if alive:
            if follow is not None and follow.done:
                follow.done = False  # seen alive again (a run whose pid was not known)
                self._pump_wake.set()
            return Status(True)
        text = await self._read(f"{ctl_dir}/exit", 4096)
        exit_ = parse_exit_file(text.decode(errors="replace")) if text else None
        if follow is not None:
            await self._copy(follow)
            follow.done = True
        return Status(False, exit_)

    @_public
    async def find_handle(self, ctl_dir: str) -> Handle | None:
        await self._launched(ctl_dir)
        data = await self._read(f"{ctl_dir}/pid", 64)
        if not data:
            return None
        try:
            pid = int(data.decode(errors="replace").strip())
        except ValueError:
            return None
        if pid <= 1:
            return None
        stat = await self._proc_start(pid)
        handle = Handle(pid, stat[1] if stat else None)
        self._follow_for(ctl_dir, handle)
        return handle

    @_public
    async def signal(self, handle: Handle, sig: int) -> bool:
        if handle.pid <= 1:
            return False
        name = signal_module.Signals(sig).name.removeprefix("SIG")
        pg = f"-{handle.pid}"
        result = await self._exec(
            f'kill -s 0 -- {pg} 2>/dev/null || {{ echo "{MARK} none"; exit 0; }}; '
            f'kill -s {name} -- {pg} && echo "{MARK} sent"')
        words = marked(str(result.stdout or ""))
        if ["sent"] in words:
            return True
        if ["none"] in words:
            return False
        raise HostError(f"host {self.name}: cannot signal process group {handle.pid}: "
                        f"{_one_line(result.stderr or 'kill failed')}")

    @_public
    async def group_alive(self, handle: Handle) -> bool:
        if handle.pid <= 1:
            return False
        result = await self._exec(f'kill -s 0 -- -{handle.pid} 2>/dev/null && echo "{MARK} alive"; true')
        return ["alive"] in marked(str(result.stdout or ""))

    # ------------------------------------------------------------------ logs

    async def _copy(self, follow: _Follow) -> int:
        """Append the remote log's new bytes to the local file; how many were copied. The
        local file's size is where the copy goes on from."""
        async with follow.lock:
            _, sftp = self._require()
            local = Path(follow.log_path)
            try:
                offset = local.stat().st_size
            except FileNotFoundError:
                offset = 0
            copied = 0
            try:
                async with sftp.open(follow.remote_log, "rb") as remote:
                    size = (await asyncio.wait_for(remote.stat(), self.command_timeout)).size or 0
                    out = None
                    try:
                        while offset < size:
                            # Within the size just read: parallel requests, none past the end.
                            want = min(size - offset, LOG_CHUNK)
                            data = await asyncio.wait_for(remote.read(want, offset), self.command_timeout)
                            if not data:
                                break
                            if out is None:
                                local.parent.mkdir(parents=True, exist_ok=True)
                                out = open(local, "ab")
                            out.write(data)
                            out.flush()
                            offset += len(data)
                            copied += len(data)
                    finally:
                        if out is not None:
                            out.close()
            except asyncssh.SFTPNoSuchFile:
                return 0
            return copied

    async def _pump_logs(self) -> None:
        """Copy the logs of running runs every `log_interval` seconds while up."""
        while not self._closing:
            await self._up_event.wait()
            for ctl in list(self._orphans):
                try:
                    await self._end_orphan(ctl)
                except (HostError, asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
                    log.debug("host %s: ending %s: %s", self.name, ctl, _exc_text(exc))
                    break
            follows = [f for f in self._follows.values() if not f.done]
            if follows:
                results = await asyncio.gather(*(self._copy(f) for f in follows), return_exceptions=True)
                for f, r in zip(follows, results):
                    if isinstance(r, asyncio.CancelledError):
                        raise r
                    if isinstance(r, BaseException) and self._up:
                        log.debug("host %s: copying %s: %s", self.name, f.remote_log, _exc_text(r))
            for ctl in [c for c, f in self._follows.items() if f.done]:
                del self._follows[ctl]
            self._pump_wake.clear()
            await _wait_event(self._pump_wake, self.log_interval)

    async def _end_orphan(self, ctl_dir: str) -> None:
        """SIGKILL the process group of a run whose launch() failed midway, if it started."""
        data = await self._read(f"{ctl_dir}/pid", 64)
        text = data.decode(errors="replace").strip() if data else ""
        if text.isdigit() and int(text) > 1:
            result = await self._exec(f"kill -s KILL -- -{int(text)} 2>/dev/null && echo \"{MARK} killed\"; true")
            if ["killed"] in marked(result.stdout):
                log.warning("host %s: ended %s (pid %s): its launch had been reported failed",
                            self.name, ctl_dir, text)
        self._orphans.discard(ctl_dir)

    @property
    def following(self) -> list[str]:
        """Control folders of runs whose logs are being copied."""
        return sorted(c for c, f in self._follows.items() if not f.done)
