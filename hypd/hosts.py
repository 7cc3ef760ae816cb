"""Hosts: where runs execute. The daemon drives every kind through `Host` alone.

A host keeps one watcher process (hypd/hostwatch.py) running on the machine, which
starts runs detached in their own session, streams their logs, tells when each ended and
ends what a run left behind (hypd/watchlink.py speaks to it). What the host sees goes to
the daemon as events (`hypd.lifecycle`'s Launched, Alive, LogGrew, Exited, Cleaned,
HostDown, HostUp, and `GpusRead`) through the `sink` given to `serve`; the daemon's
requests (launch, watch, kill, unwatch) are one line each to the watcher. A host that is
down takes no launch (HostError) and forgets watch/kill requests: when it is up again the
daemon watches its runs anew, which tells how each went meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypd import lifecycle as lc
from hypd import watchproto as wp
from hypd.artifacts import FetchResult, copy_local
from hypd.capacity import HostRules
from hypd.config import LocalHostConfig
from hypd.gpus import GpuSnapshot, LocalGpuProbe
from hypd.study import StudySpec
from hypd.watchlink import WatchLink, WatchLinkError, start_local_watcher

log = logging.getLogger("hypd.hosts")

WATCHER_HELLO_TIMEOUT = 20.0  # seconds a new watcher may take to say hello


class HostError(RuntimeError):
    """A host could not do what was asked; the message is one line."""


class HostDownError(HostError):
    """The host is down: the request did not reach it."""


@dataclass(frozen=True)
class GpusRead:
    host: str
    snapshot: GpuSnapshot
    changed: bool = True  # differs from the reading before (what placement may care about)


Sink = Callable[[object], None]


class Host(ABC):
    """What the daemon knows of a machine. Subclasses connect (`serve`), read GPUs and
    stage study code; running runs is common to all, through the watcher."""

    name: str
    root: str  # on the host: runs/<study>/<NNNN>/ (control files) and studies/<study>/ (outputs)
    setup: str = ""  # a line run before a run's stages (e.g. activate a virtualenv)
    lost_after: float = 120.0  # seconds unreachable before its runs count as lost
    kill_grace: float = 10.0  # SIGTERM, then SIGKILL after this long
    draining: bool = False
    send_logs: bool = True  # the watcher sends log bytes (the log is not on this machine)
    in_inventory: bool = True  # described in hosts.toml (else in config.toml: the local machine)

    def __init__(self) -> None:
        self.down_since: float | None = time.time()
        self._why = "starting"
        self._link: WatchLink | None = None
        self._sink: Sink = lambda event: None
        self._logs: dict[int, str] = {}  # run id -> the daemon's copy of its log
        self._gpus: GpuSnapshot | None = None
        self._up_event = asyncio.Event()
        self._down_told = False  # HostDown was sent for the current outage

    # ------------------------------------------------------------ what the daemon reads

    @property
    def up(self) -> bool:
        return self._link is not None

    @property
    def accepting(self) -> bool:
        """Whether new runs may start here."""
        return self.up and not self.draining

    @property
    def state(self) -> tuple[str, str]:
        """("up" | "down" | "draining", why)."""
        if not self.up:
            return ("down", self._why)
        if self.draining:
            return ("draining", "draining: running runs go on, nothing new starts")
        return ("up", "")

    def set_draining(self, draining: bool = True) -> None:
        self.draining = draining

    async def wait_up(self, timeout: float | None = None) -> bool:
        """Wait until the host is up; False after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), timeout)
        return self.up

    def gpus(self) -> GpuSnapshot | None:
        """The latest GPU reading, or None before the first."""
        return self._gpus

    @abstractmethod
    def rules(self) -> HostRules:
        """What placement needs to know: slots, runs per GPU, thresholds, accepting."""

    def details(self) -> dict[str, Any]:
        """Extra facts for `hypd hosts` (address, partition...)."""
        return {}

    # ------------------------------------------------------------ life

    @abstractmethod
    async def serve(self, sink: Sink) -> None:
        """Keep the host connected and its watcher running until cancelled; events go to
        `sink`. Never raises but for cancellation."""

    @abstractmethod
    async def prepare_study(self, spec: StudySpec) -> str:
        """Make the study's code available on the host; the workdir runs use there.
        HostError if it cannot."""

    async def fetch(self, run_dir: str, patterns: tuple[str, ...], dest: Path) -> FetchResult:
        """Copy what `patterns` (globs relative to the run's folder on the host) match into
        `dest` on this machine, keeping their paths under the run's folder. HostError if
        it cannot (the host down, a copy that failed)."""
        raise HostError(f"host {self.name} cannot copy files back")

    # ------------------------------------------------------------ runs

    async def launch(self, run: int, ctl_dir: str, script: str, log_path: str, *, gpus: int = 0,
                     label: str = "") -> None:
        """Start a run; Launched or LaunchFailed follows. HostError while down. `gpus`: how
        many the run needs (a host that chooses them itself asks for that many); `label`:
        the run's name, for what the host shows of it."""
        link = self._link
        if link is None:
            raise HostDownError(f"host {self.name} is down: {self._why}")
        self._logs[run] = log_path
        # If the link breaks while the command is written, the host may have it: the run
        # stays launching, and watching it once the host is back tells whether it started.
        with contextlib.suppress(WatchLinkError):
            await link.launch(str(run), ctl_dir, script, self.kill_grace)

    # While the host is down these are dropped: when it is up again the daemon watches its
    # runs anew (and asks again for the kills it wants).

    async def watch(self, run: int, ctl_dir: str, log_path: str, offset: int, pid: int | None,
                    start: str | None) -> None:
        self._logs[run] = log_path
        if self._link is not None:
            with contextlib.suppress(WatchLinkError):
                await self._link.watch(str(run), ctl_dir, offset, pid, start, self.kill_grace)

    async def kill(self, run: int) -> None:
        if self._link is not None:
            with contextlib.suppress(WatchLinkError):
                await self._link.kill(str(run), self.kill_grace)

    async def unwatch(self, run: int) -> None:
        self._logs.pop(run, None)
        if self._link is not None:
            with contextlib.suppress(WatchLinkError):
                await self._link.unwatch(str(run))

    # ------------------------------------------------------------ for subclasses

    async def _run_watcher(self, link: WatchLink, ready: Callable[[wp.Hello], None] | None = None) -> str:
        """Serve one watcher until it ends; why it ended. The host is up while it runs."""
        reader = asyncio.create_task(link.run(), name=f"watch:{self.name}")
        try:
            try:
                hello = await link.wait_hello(WATCHER_HELLO_TIMEOUT)
            except WatchLinkError as exc:
                return f"the host watcher did not start: {exc}"
            if ready is not None:
                ready(hello)
            self._set_up(link)
            await reader
            return "the host watcher ended"
        finally:
            self._link = None
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def _set_up(self, link: WatchLink) -> None:
        self._link = link
        self._came_up()

    def _came_up(self) -> None:
        self._why = ""
        self.down_since = None
        self._down_told = False
        self._up_event.set()
        log.info("host %s up (root %s)", self.name, self.root)
        self._sink(lc.HostUp(self.name))

    def _set_down(self, why: str) -> None:
        if not self._down_told or why != self._why:
            log.warning("host %s down: %s", self.name, why)
        self._why = why
        self._link = None
        self._up_event.clear()
        if self.down_since is None:
            self.down_since = time.time()
        if not self._down_told:
            self._down_told = True
            self._sink(lc.HostDown(self.name, why, self.down_since))

    def _set_gpus(self, snapshot: GpuSnapshot) -> None:
        before, self._gpus = self._gpus, snapshot
        changed = before is None or (before.gpus, before.error) != (snapshot.gpus, snapshot.error)
        self._sink(GpusRead(self.name, snapshot, changed))

    def _log_path(self, key: str) -> str | None:
        with contextlib.suppress(ValueError):
            return self._logs.get(int(key))
        return None

    def _on_watch_event(self, event: object) -> None:
        """The watcher's events, as the lifecycle core reads them."""
        run = _run_id(getattr(event, "run", None))
        if isinstance(event, wp.Error):
            log.warning("host %s: watcher: %s", self.name, event.why)
            return
        if run is None:
            return
        if isinstance(event, wp.Started):
            self._sink(lc.Launched(run, event.pid, event.start))
        elif isinstance(event, wp.LaunchFailed):
            self._sink(lc.LaunchFailed(run, event.why))
        elif isinstance(event, wp.Alive):
            self._sink(lc.Alive(run, event.pid, event.start))
        elif isinstance(event, wp.Size):
            self._sink(lc.LogGrew(run, event.size))
        elif isinstance(event, wp.Exited):
            self._sink(lc.Exited(run, event.status, event.stage, event.size))
        elif isinstance(event, wp.Clean):
            self._sink(lc.Cleaned(run, tuple(event.ended)))


def _run_id(key: object) -> int | None:
    try:
        return int(str(key))
    except ValueError:
        return None


class LocalHost(Host):
    """The daemon's own machine: the watcher runs as a child process, the runs' logs are
    written where the daemon reads them, GPUs are read through NVML or nvidia-smi."""

    name = "local"
    send_logs = False
    in_inventory = False

    def __init__(self, config: LocalHostConfig, root: Path, *, gpu_poll: float = 5.0, kill_grace: float = 10.0,
                 tick: float = 0.05) -> None:
        super().__init__()
        self.config = config
        self.root = str(root)
        self.gpu_poll = gpu_poll
        self.kill_grace = kill_grace
        self.tick = tick
        self.probe = LocalGpuProbe()

    def rules(self) -> HostRules:
        c = self.config
        return HostRules(self.name, self.accepting, c.cpu_slots, max(1, c.max_per_gpu), c.gpus,
                         c.busy_memory_mib, c.busy_utilization, c.labels)

    async def prepare_study(self, spec: StudySpec) -> str:
        return spec.workdir

    async def fetch(self, run_dir: str, patterns: tuple[str, ...], dest: Path) -> FetchResult:
        """A copy when the run's folder is not `dest` (output_dir elsewhere); when it is,
        the files are already there and are only listed."""
        try:
            return await asyncio.to_thread(copy_local, Path(run_dir), patterns, dest)
        except OSError as exc:
            raise HostError(f"copying {run_dir} to {dest}: {exc.strerror or exc}") from None

    async def serve(self, sink: Sink) -> None:
        self._sink = sink
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_gpus(), name="local-gpus")
                tg.create_task(self._keep_watcher(), name="local-watcher")
        finally:
            await asyncio.to_thread(self.probe.close)

    async def _read_gpus(self) -> None:
        while True:
            self._set_gpus(await self.probe.read())
            await asyncio.sleep(self.gpu_poll)

    async def _keep_watcher(self) -> None:
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                proc, link = await start_local_watcher(self.root, send_logs=self.send_logs, tick=self.tick,
                                                       on_event=self._on_watch_event, log_path_for=self._log_path)
            except OSError as exc:
                why = f"cannot start the host watcher: {exc.strerror or exc}"
            else:
                try:
                    why = await self._run_watcher(link)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self._set_down(why)
            if time.monotonic() - started > 30:
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
