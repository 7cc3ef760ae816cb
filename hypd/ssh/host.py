"""SshHost: a machine reached over SSH, behind the same `Host` interface as the local one.

One task keeps one connection up (reconnecting with capped exponential backoff). Over it:
- the host watcher (hypd/hostwatch.py, its source sent as the command; it needs python3
  on the host) on one channel: it starts runs detached in their own session, so they
  outlive the connection and the daemon, streams their logs back by offset, and tells
  when each ended and when its processes are gone;
- one streaming nvidia-smi on another (hypd/ssh/gpustream.py);
- SFTP, opened when a study's code must be copied (hypd/ssh/staging.py).
So a host uses at most 3 of the sessions sshd allows per connection, and no request per
run beyond its log bytes. When the connection drops, the host is down; when it is back,
the daemon watches its runs anew, from the end of each log copy it has.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncssh

from hypd.artifacts import FetchResult
from hypd.capacity import HostRules
from hypd.hosts import Host, HostError, Sink
from hypd.inventory import HostConfig
from hypd.ssh.connection import Connector, exc_text
from hypd.ssh.gpustream import GpuStream
from hypd.ssh.staging import Stager, fetch_files
from hypd.study import StudySpec
from hypd.watchlink import WatchLink, watcher_command
from hypd.watchproto import Hello

log = logging.getLogger("hypd.ssh")


class SshHost(Host):
    def __init__(self, config: HostConfig, home: str | Path | None = None, *,
                 connect_options: Mapping[str, Any] | None = None, gpu_interval: float = 1.0,
                 kill_grace: float = 10.0, tick: float = 0.1, backoff: tuple[float, float] = (0.5, 30.0),
                 keepalive: tuple[float, int] = (5.0, 3), connect_timeout: float = 15.0,
                 command_timeout: float = 30.0) -> None:
        super().__init__()
        self.config = config
        self.name = config.name
        self.home = Path(home) if home is not None else None
        self.root = config.workdir  # resolved by the watcher at the first connection
        self.setup = config.setup
        self.lost_after = config.lost_after
        self.draining = config.draining
        self.kill_grace = kill_grace
        self.gpu_interval = gpu_interval
        self.tick = tick
        self.backoff = backoff
        self.command_timeout = command_timeout
        self.connector = Connector(config, connect_options=connect_options, keepalive=keepalive,
                                   connect_timeout=connect_timeout)
        self.stager = Stager(self.name, command_timeout)
        self.connects = 0  # connections made (1 + reconnects)
        self._nproc: int | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()
        self._gpu_stream: GpuStream | None = None
        if logging.getLogger("asyncssh").level == logging.NOTSET:
            logging.getLogger("asyncssh").setLevel(logging.WARNING)  # it logs every channel at INFO

    # ------------------------------------------------------------ what the daemon reads

    @property
    def cpu_slots(self) -> int:
        if self.config.cpu_slots is not None:
            return self.config.cpu_slots
        return self._nproc or 0

    @property
    def gpu_stream_starts(self) -> int:
        return self._gpu_stream.starts if self._gpu_stream else 0

    def rules(self) -> HostRules:
        c = self.config
        return HostRules(self.name, self.accepting, self.cpu_slots, max(1, c.max_per_gpu), c.gpus,
                         c.busy_memory_mib, c.busy_utilization, c.labels)

    def details(self) -> dict[str, Any]:
        return {"address": self.config.target}

    # ------------------------------------------------------------ the connection

    async def serve(self, sink: Sink) -> None:
        self._sink = sink
        delay = self.backoff[0]
        while True:
            try:
                conn, client = await self.connector.connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - failures are values
                self._set_down(self.connector.explain(exc))
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            self.connects += 1
            since = time.monotonic()
            try:
                why = await self._serve_connection(conn, client)
            finally:
                self._conn = self._sftp = None
                conn.close()
            # A connection that brought the host up (its watcher said hello) worked: the
            # next try starts from the shortest delay, so a host whose connection drops
            # again and again is back within seconds each time, not after a growing wait.
            worked = self.down_since is None
            self._set_down(why)
            if worked or time.monotonic() - since > 10:
                delay = self.backoff[0]
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff[1])

    async def _serve_connection(self, conn: asyncssh.SSHClientConnection, client: Any) -> str:
        """Run the watcher and the GPU stream over one connection until either ends; why."""
        self._conn = conn
        try:
            watcher = await conn.create_process(watcher_command(self.config.workdir, self.send_logs, self.tick),
                                                encoding=None, stderr=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            return f"cannot start the host watcher: {exc_text(exc)}"
        link = WatchLink(watcher.stdout, watcher.stdin, self._on_watch_event, self._log_path)
        self._gpu_stream = GpuStream(self.name, conn, self.gpu_interval, self._set_gpus)
        gpus = asyncio.create_task(self._gpu_stream.run(), name=f"ssh-gpus:{self.name}")
        closed = asyncio.create_task(conn.wait_closed(), name=f"ssh-closed:{self.name}")
        watching = asyncio.create_task(self._run_watcher(link, self._hello), name=f"ssh-watch:{self.name}")
        try:
            done, _ = await asyncio.wait({closed, watching}, return_when=asyncio.FIRST_COMPLETED)
            if watching in done and not closed.done():
                why = watching.result()
                if why.startswith("the host watcher did not start"):
                    return self._missing_python(watcher, why)
                return why
            lost = client.lost
            return f"connection lost: {exc_text(lost)}" if lost else "connection closed"
        finally:
            for task in (gpus, closed, watching):
                task.cancel()
            await asyncio.gather(gpus, closed, watching, return_exceptions=True)
            watcher.close()

    def _missing_python(self, watcher: Any, why: str) -> str:
        status = watcher.exit_status
        if status == 127:
            return "python3 not found on the host: hypd's host watcher needs python3 (3.6 or newer) on every host"
        return why

    def _hello(self, hello: Hello) -> None:
        self.root = hello.root
        self._nproc = hello.nproc or 1

    # ------------------------------------------------------------ study code

    async def prepare_study(self, spec: StudySpec) -> str:
        conn = self._conn
        if conn is None or not self.up:
            raise HostError(f"host {self.name} is down: {self._why}")
        if not spec.files:
            return spec.workdir  # nothing to copy: no SFTP session
        try:
            return await self.stager.prepare(await self._sftp_client(conn), self.root, spec)
        except ValueError as exc:
            raise HostError(f"study {spec.name}: {exc}") from None
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            self._sftp = None
            raise HostError(f"host {self.name}: copying study {spec.name}: {exc_text(exc)}") from None

    async def _sftp_client(self, conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
        """The host's one SFTP session, opened when first needed (also when several ask at once)."""
        async with self._sftp_lock:
            if self._sftp is None:
                self._sftp = await asyncio.wait_for(conn.start_sftp_client(), self.command_timeout)
            return self._sftp

    # ------------------------------------------------------------ artifacts

    async def fetch(self, run_dir: str, patterns: tuple[str, ...], dest: Path) -> FetchResult:
        conn = self._conn
        if conn is None or not self.up:
            raise HostError(f"host {self.name} is down: {self._why}")
        try:
            return await fetch_files(await self._sftp_client(conn), run_dir, patterns, dest, self.command_timeout)
        except OSError as exc:
            raise HostError(f"copying into {dest}: {exc.strerror or exc}") from None
        except (asyncssh.Error, TimeoutError) as exc:
            if isinstance(exc, asyncssh.SFTPError):
                raise HostError(f"host {self.name}: {run_dir}: {exc_text(exc)}") from None
            self._sftp = None
            raise HostError(f"host {self.name}: copying from {run_dir}: {exc_text(exc)}") from None

    @property
    def uploads(self) -> int:
        return self.stager.uploads
