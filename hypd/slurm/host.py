"""SlurmHost: a Slurm cluster behind the same `Host` interface as local and SSH hosts.

A run is one job: its script (hypd/wrapper.py's) is written to its control folder on the
cluster's shared filesystem and submitted with `sbatch --parsable --gres=gpu:N`; the job
writes its output to `log` and its exit status to `exit` there. Once a tick one command
runs on the login node (hypd/slurm/probe.py, here or over SSH): one `squeue` for every
job, then each live run's new log bytes (by offset from the end of the daemon's copy, so
no byte is lost or doubled across reconnects and restarts) and exit files. What that
says becomes lifecycle events (hypd/slurm/tracker.py). Kill is `scancel`. The job id is
stored as the run's pid, so a restarted daemon re-adopts its jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypd import lifecycle as lc
from hypd.artifacts import FetchResult, copy_local
from hypd.capacity import HostRules
from hypd.display import one_line
from hypd.gpus import GpuSnapshot
from hypd.hosts import Host, HostDownError, HostError, Sink
from hypd.slurm import commands as sc
from hypd.slurm.config import SlurmConfig
from hypd.slurm.shell import LocalShell, ShellError, SshShell
from hypd.slurm.tracker import Look, Tracker
from hypd.study import StudySpec

log = logging.getLogger("hypd.slurm")

PROBE_SOURCE = Path(__file__).with_name("probe.py").read_text()
SINFO_EVERY = 30.0  # seconds between readings of the partition's idle GPUs
MAX_LOG_BYTES = 1 << 20  # per run and tick


class ProbeError(RuntimeError):
    """The login node answered, but Slurm did not (squeue failed); one line."""


class SlurmHost(Host):
    def __init__(self, config: SlurmConfig, home: str | Path | None = None, *,
                 connect_options: Mapping[str, Any] | None = None, kill_grace: float = 10.0,
                 backoff: tuple[float, float] = (0.5, 30.0), keepalive: tuple[float, int] = (5.0, 3),
                 connect_timeout: float = 15.0, command_timeout: float = 60.0) -> None:
        super().__init__()
        self.config = config
        self.name = config.name
        self.root = config.workdir  # expanded on the login node at connection
        self.setup = config.setup
        self.lost_after = config.lost_after
        self.draining = config.draining
        self.kill_grace = kill_grace
        self.backoff = backoff
        self.command_timeout = command_timeout
        self.shell: LocalShell | SshShell = (
            LocalShell() if config.local else SshShell(config.ssh_config(), connect_options=connect_options,
                                                       keepalive=keepalive, connect_timeout=connect_timeout))
        self.tracker = Tracker()
        self._ready = False
        self._jobs: dict[str, int] = {"running": 0, "queued": 0}
        self._idle_gpus: int | None = None
        self._sinfo_at = 0.0
        self._told: tuple[dict[str, int], int | None] | None = None
        self.stager: Any = None  # hypd/ssh/staging.py's Stager, made when a study has files to copy
        self._sftp: Any = None
        self._sftp_conn: Any = None
        self._sftp_lock = asyncio.Lock()

    # ------------------------------------------------------------ what the daemon reads

    @property
    def up(self) -> bool:
        return self._ready

    def rules(self) -> HostRules:
        return HostRules(self.name, self.accepting, labels=self.config.labels, max_jobs=self.config.max_jobs)

    def details(self) -> dict[str, Any]:
        return {"address": self.config.login, "partition": self.config.partition or "(default)",
                "max_jobs": self.config.max_jobs, "jobs_running": self._jobs["running"],
                "jobs_queued": self._jobs["queued"], "idle_gpus": self._idle_gpus}

    async def prepare_study(self, spec: StudySpec) -> str:
        """`[run] files` copied to <workdir>/studies/<study>/code/ on the cluster's shared
        filesystem (hypd/ssh/staging.py: only what changed), where its jobs run: over the
        login node's SSH connection (SFTP), or a copy here when the login node is this
        machine."""
        if not spec.files:
            return spec.workdir  # the code is on the shared filesystem already
        if not self.up:
            raise HostError(f"host {self.name} is down: {self._why}")
        import asyncssh  # (only where a study has files to copy)

        from hypd.ssh.connection import exc_text
        from hypd.ssh.staging import LocalFiles, Stager

        self.stager = self.stager or Stager(self.name, self.command_timeout)
        try:
            if self.config.local:
                return await self.stager.prepare(LocalFiles(), self.root, spec)
            return await self.stager.prepare(await self._sftp_client(), self.root, spec)
        except ValueError as exc:
            raise HostError(f"study {spec.name}: {exc}") from None
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            self._sftp = None
            raise HostError(f"host {self.name}: copying study {spec.name}: {exc_text(exc)}") from None

    async def fetch(self, run_dir: str, patterns: tuple[str, ...], dest: Path) -> FetchResult:
        """From the cluster's shared filesystem: a copy here when the login node is this
        machine, else over the SFTP session to the login node."""
        if self.config.local:
            try:
                return await asyncio.to_thread(copy_local, Path(run_dir), patterns, dest)
            except OSError as exc:
                raise HostError(f"copying {run_dir} to {dest}: {exc.strerror or exc}") from None
        if getattr(self.shell, "conn", None) is None or not self.up:
            raise HostError(f"host {self.name} is down: {self._why}")
        import asyncssh

        from hypd.ssh.connection import exc_text
        from hypd.ssh.staging import fetch_files

        try:
            return await fetch_files(await self._sftp_client(), run_dir, patterns, dest, self.command_timeout)
        except OSError as exc:
            raise HostError(f"copying into {dest}: {exc.strerror or exc}") from None
        except (asyncssh.Error, TimeoutError) as exc:
            self._sftp = None
            raise HostError(f"host {self.name}: copying from {run_dir}: {exc_text(exc)}") from None

    async def _sftp_client(self) -> Any:
        """One SFTP session on the login node's connection, opened when first needed and
        again after that connection was made anew."""
        conn = getattr(self.shell, "conn", None)
        if conn is None:
            raise ShellError("not connected")
        async with self._sftp_lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp = await asyncio.wait_for(conn.start_sftp_client(), self.command_timeout)
                self._sftp_conn = conn
            return self._sftp

    # ------------------------------------------------------------ life

    def _set_down(self, why: str) -> None:
        self._ready = False
        super()._set_down(why)

    async def serve(self, sink: Sink) -> None:
        self._sink = sink
        delay = self.backoff[0]
        while True:
            try:
                await self.shell.open()
                why = await self._serve_login()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - failures are values
                why = self.shell.explain(exc)
            finally:
                self.shell.close()
            worked = self.down_since is None
            self._set_down(why)
            if worked:
                delay = self.backoff[0]
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff[1])

    async def _serve_login(self) -> str:
        """Look at the queue once a tick until the login node goes away; why it did."""
        closed = asyncio.ensure_future(self.shell.wait_closed())
        try:
            answer = await self._probe({"expand": self.config.workdir})
            self.root = answer.get("expand") or self.root
            while not closed.done():
                try:
                    await self._tick()
                except ProbeError as exc:
                    self._set_down(str(exc))
                else:
                    if not self._ready:
                        self._ready = True
                        self._came_up()
                await asyncio.wait({closed}, timeout=self.config.poll)
            return "connection to the login node lost"
        except ShellError as exc:
            return f"login node: {exc}"
        finally:
            closed.cancel()

    async def _probe(self, request: dict[str, Any]) -> dict[str, Any]:
        command = f"exec python3 -c {shlex.quote(PROBE_SOURCE)}"
        result = await self.shell.run(command, json.dumps(request).encode(), self.command_timeout)
        if result.status == 127:
            raise ShellError("python3 not found on the login node: hypd needs python3 (3.6 or newer) there")
        try:
            answer = json.loads(result.out)
        except ValueError:
            raise ShellError(f"the probe failed: {one_line(result.err or result.out)}") from None
        return answer if isinstance(answer, dict) else {}

    async def _tick(self) -> None:
        live = self.tracker.live()
        local = {t.run: await asyncio.to_thread(_size, t.log) for t in live}
        request: dict[str, Any] = {
            "squeue": sc.squeue_argv(), "max_bytes": MAX_LOG_BYTES,
            "logs": [[str(t.run), t.remote_log, local[t.run]] for t in live],
            "exits": [[str(t.run), t.exit_file] for t in live]}
        acct = self.tracker.acct_wanted()
        if acct:
            request["sacct"] = sc.sacct_argv(acct)
        now = time.monotonic()
        if not acct and now - self._sinfo_at >= SINFO_EVERY:  # at most 2 Slurm commands a tick
            self._sinfo_at = now
            request["sinfo"] = sc.sinfo_argv(self.config.partition)
        answer = await self._probe(request)
        status, out, err = answer.get("squeue") or (1, "", "no answer")
        if status != 0:
            raise ProbeError(f"squeue failed: {one_line(err or out)}")
        jobs = tuple(sc.parse_squeue(out))
        if "sinfo" in answer and answer["sinfo"][0] == 0:
            self._idle_gpus = sc.parse_sinfo(answer["sinfo"][1])
        sizes: dict[int, tuple[int, int]] = {}
        for t in live:
            size, data = answer.get("logs", {}).get(str(t.run), (-1, ""))
            here = local[t.run]
            if data:
                here = await asyncio.to_thread(_append_at, t.log, here, base64.b64decode(data))
            sizes[t.run] = (here, size)
        exits = {t.run: answer.get("exits", {}).get(str(t.run)) for t in live}
        found = sc.parse_sacct(answer["sacct"][1]) if "sacct" in answer and answer["sacct"][0] == 0 else None
        for event in self.tracker.look(Look(jobs, exits, sizes, found)):
            self._sink(event)
        ours = {t.job for t in self.tracker.live() if t.job}
        phases = [j.phase for j in jobs if j.id in ours]
        counts = {"running": phases.count("running"), "queued": phases.count("queued")}
        if (counts, self._idle_gpus) != self._told:
            self._told = (counts, self._idle_gpus)
            self._jobs = counts
            # What `hypd hosts` and the dashboard show of the cluster changed: a reading of
            # its GPUs (none hypd places itself) carries the news, as for other hosts.
            self._set_gpus(GpuSnapshot((), "slurm", time.time()))

    # ------------------------------------------------------------ runs

    async def launch(self, run: int, ctl_dir: str, script: str, log_path: str, *, gpus: int = 0,
                     label: str = "") -> None:
        if not self.up:
            raise HostDownError(f"host {self.name} is down: {self._why}")
        tracked = self.tracker.launching(run, ctl_dir, log_path)
        await asyncio.to_thread(_truncate, log_path)  # a run launched again starts its log anew
        ctl = shlex.quote(ctl_dir)
        argv = sc.sbatch_argv(self.config, gpus=gpus, ctl_dir=ctl_dir, log=tracked.remote_log, label=label,
                              script=f"{ctl_dir}/run.sh")
        command = (f"mkdir -p {ctl} && rm -f {ctl}/exit {ctl}/log && cat > {ctl}/run.sh && "
                   f"{sc.shell_line(argv)}")
        try:
            result = await self.shell.run(command, script.encode(), self.command_timeout)
        except ShellError as exc:
            # It may have reached Slurm: the next looks at the queue find its job by its
            # folder, or say that it never got there.
            log.warning("host %s: submitting run %s: %s", self.name, run, exc)
            tracked.submitting = False
            return
        job = sc.parse_sbatch(result.out)
        if result.status != 0 or job is None:
            self.tracker.forget(run)
            self._sink(lc.LaunchFailed(run, f"sbatch: {one_line(result.err or result.out or 'no job id')}"))
            return
        for event in self.tracker.submitted(run, job):
            self._sink(event)

    async def watch(self, run: int, ctl_dir: str, log_path: str, offset: int, pid: int | None,
                    start: str | None) -> None:
        self.tracker.watch(run, ctl_dir, log_path, str(pid) if pid else None)

    async def kill(self, run: int) -> None:
        job = self.tracker.job_of(run)
        if job is None or not self.up:
            return  # asked again once its job is known, or the login node is back
        try:
            result = await self.shell.run(sc.shell_line(sc.scancel_argv([job])), b"", self.command_timeout)
        except ShellError as exc:
            raise HostError(f"scancel {job}: {exc}") from None
        if result.status != 0:
            log.warning("host %s: scancel %s: %s", self.name, job, one_line(result.err or result.out))

    async def unwatch(self, run: int) -> None:
        self.tracker.forget(run)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _truncate(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb"):
        pass


def _append_at(path: str, offset: int, data: bytes) -> int:
    """Append `data`, read from the cluster's log at `offset`, to the copy here, if the copy
    still ends at `offset` (nothing else writes it); the copy's size after."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_size != offset:
            return os.stat(path).st_size
    with open(path, "ab") as f:
        f.write(data)
    return offset + len(data)
