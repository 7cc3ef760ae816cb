"""Hosts: where runs execute. The local machine here; SSH hosts share the interface.

A host launches a run's wrapper script (hypd.wrapper) detached in its own session,
reports whether it is still alive and how it ended (from its exit file), signals its
process group, and reads its GPUs. Failures are values or `HostError`s with one line of
text, never a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from hypd.config import LocalHostConfig
from hypd.gpus import GpuSnapshot, LocalGpuProbe
from hypd.study import StudySpec
from hypd.wrapper import RunScript, parse_exit_file, script_text

log = logging.getLogger("hypd.hosts")


class HostError(RuntimeError):
    """A host could not do what was asked; the message is one line."""


@dataclass(frozen=True)
class Launch:
    """What a host needs to start one run."""

    script: RunScript
    log_path: str  # where the run's output goes (on the daemon's machine for local runs)


@dataclass(frozen=True)
class Handle:
    """A started run: its wrapper's pid (= process group) and what identifies that
    process beyond its pid (its start time), so a reused pid is not mistaken for it."""

    pid: int
    proc_start: str | None


@dataclass(frozen=True)
class Status:
    alive: bool
    exit: tuple[int, str] | None = None  # (status, stage) once the exit file exists


class Host(ABC):
    name: str
    root: str  # on the host: runs/<study>/<NNNN>/ (control files) and studies/<study>/ (outputs)
    cpu_slots: int
    max_per_gpu: int = 1  # runs that may share one GPU
    down_since: float | None = None  # when the host became unreachable; None while reachable
    lost_after: float = 120.0  # seconds unreachable before its runs count as lost
    busy_memory_mib: int
    busy_utilization: int
    allowed_gpus: tuple[int, ...] | None

    @property
    def accepting(self) -> bool:
        """Whether new runs may start here (False while down or draining)."""
        return True

    @property
    def state(self) -> tuple[str, str]:
        """("up" | "down" | "draining", why)."""
        return ("up", "")

    @abstractmethod
    async def prepare_study(self, spec: StudySpec) -> str:
        """Make the study's code available on the host; returns the workdir runs use
        there. HostError if it cannot."""

    @abstractmethod
    async def read_gpus(self) -> GpuSnapshot: ...

    @abstractmethod
    async def launch(self, launch: Launch) -> Handle:
        """Start the run detached; HostError if it could not be started."""

    @abstractmethod
    async def status(self, handle: Handle | None, ctl_dir: str) -> Status:
        """Alive or not, and the exit file's content; HostError if the host cannot tell now."""

    @abstractmethod
    async def find_handle(self, ctl_dir: str) -> Handle | None:
        """The handle from the run's pid file (a launch the daemon did not record)."""

    @abstractmethod
    async def signal(self, handle: Handle, sig: int) -> bool:
        """Signal the run's whole process group; False if nothing was there to signal."""

    @abstractmethod
    async def group_alive(self, handle: Handle) -> bool:
        """Whether any process of the run's group is left."""

    async def close(self) -> None:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a local process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2:].split()
    return fields[0], fields[19]


class LocalHost(Host):
    """The daemon's own machine."""

    name = "local"

    def __init__(self, config: LocalHostConfig, root: Path) -> None:
        self.root = str(root)
        self.draining = False
        self.max_per_gpu = max(1, config.max_per_gpu)
        self.cpu_slots = config.cpu_slots
        self.busy_memory_mib = config.busy_memory_mib
        self.busy_utilization = config.busy_utilization
        self.allowed_gpus = config.gpus
        self.probe = LocalGpuProbe()
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def accepting(self) -> bool:
        return not self.draining

    @property
    def state(self) -> tuple[str, str]:
        return ("draining", "drained by hand") if self.draining else ("up", "")

    async def read_gpus(self) -> GpuSnapshot:
        return await self.probe.read()

    async def prepare_study(self, spec: StudySpec) -> str:
        return spec.workdir

    async def launch(self, launch: Launch) -> Handle:
        script = launch.script
        ctl = Path(script.ctl_dir)
        try:
            ctl.mkdir(parents=True, exist_ok=True)
            Path(script.run_dir).mkdir(parents=True, exist_ok=True)
            (ctl / "run.sh").write_text(script_text(script))
            log_file = open(launch.log_path, "ab")
        except OSError as exc:
            raise HostError(f"cannot prepare {ctl}: {exc.strerror or exc}") from None
        try:
            proc = subprocess.Popen(
                ["/bin/sh", str(ctl / "run.sh")], stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd="/")
        except OSError as exc:
            raise HostError(f"cannot start /bin/sh: {exc.strerror or exc}") from None
        finally:
            log_file.close()
        self.children[proc.pid] = proc
        stat = _proc_stat(proc.pid)
        return Handle(proc.pid, stat[1] if stat else None)

    def _alive(self, handle: Handle) -> bool:
        child = self.children.get(handle.pid)
        if child is not None:
            if child.poll() is None:
                return True
            del self.children[handle.pid]  # reaped
            return False
        stat = _proc_stat(handle.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return handle.proc_start is None or stat[1] == handle.proc_start

    async def status(self, handle: Handle | None, ctl_dir: str) -> Status:
        alive = handle is not None and self._alive(handle)
        exit_ = None
        if not alive:
            try:
                exit_ = parse_exit_file((Path(ctl_dir) / "exit").read_text())
            except OSError:
                exit_ = None
        return Status(alive, exit_)

    async def find_handle(self, ctl_dir: str) -> Handle | None:
        try:
            pid = int((Path(ctl_dir) / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        stat = _proc_stat(pid)
        return Handle(pid, stat[1] if stat else None)

    async def signal(self, handle: Handle, sig: int) -> bool:
        if not await self.group_alive(handle):
            return False
        try:
            os.killpg(handle.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise HostError(f"cannot signal process group {handle.pid}: {exc.strerror}") from None
        return True

    async def group_alive(self, handle: Handle) -> bool:
        self._alive(handle)  # reaps our own child if it has ended
        try:
            os.killpg(handle.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        except OSError as exc:  # pragma: no cover - unexpected
            return exc.errno != errno.ESRCH
        # The group may hold only the (unreaped) leader left by an earlier daemon.
        stat = _proc_stat(handle.pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            return True
        return _group_has_live_member(handle.pid)

    async def close(self) -> None:
        await asyncio.to_thread(self.probe.close)


def _group_has_live_member(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = data[data.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False

