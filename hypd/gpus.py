"""The GPU domain: what GPUs a machine has and which of them are busy with someone else's work.

NVML (nvidia-ml-py) is reached through one choke point, `NvmlProbe`, modelled on nvitop's
`nvmlQuery`: the library is initialised lazily, once; a missing library or driver is logged
once and turns into a snapshot with source "none"; a failing field of a GPU becomes None or a
skipped GPU. Nothing here raises into the caller except where a docstring says so (the pure
parsers raise ValueError on output they do not understand).

`nvidia-smi` is the second source: its CSV output is parsed by pure functions, so a remote host
can run the same query over SSH (`nvidia_smi_args(loop_seconds=...)` streams readings from one
long-running process) and hand the text to `parse_nvidia_smi_csv`.

GPU indexes are NVML's, which are those `nvidia-smi` prints (PCI bus order). CUDA numbers GPUs
fastest-first unless `CUDA_DEVICE_ORDER=PCI_BUS_ID` is set, so whoever starts a trial on GPU i
must set that (or pass the GPU's UUID in `CUDA_VISIBLE_DEVICES`).

Nothing here knows about the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("hypd.gpus")

MIB = 1024 * 1024

SOURCE_NVML = "nvml"
SOURCE_NVIDIA_SMI = "nvidia-smi"
SOURCE_NONE = "none"

# Values nvidia-smi prints for a field it cannot read (with and without `nounits`).
_NOT_AVAILABLE = {"[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]",
                  "[insufficient permissions]", "[gpu is lost]", "[unknown]", ""}


@dataclass(frozen=True)
class GpuReading:
    """One GPU as read at one moment.

    `utilization_pct` is None when the GPU does not report it (MIG mode, some virtual GPUs).
    `pids` are the compute processes on the GPU when known, as the host's (not a container's)
    process ids; empty when none run or they could not be read.
    """

    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpuSnapshot:
    """All GPUs of one machine at one moment.

    `source` is "nvml", "nvidia-smi" or "none"; with "none", `gpus` is empty and `error` says
    why no GPUs could be read (e.g. "nvidia-smi not found"). A machine that has no GPU but a
    working source gives `ok` True and no GPUs.
    """

    gpus: tuple[GpuReading, ...]
    source: str
    taken_at: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the GPUs could be read (possibly none of them)."""
        return self.error is None and self.source != SOURCE_NONE

    @classmethod
    def failed(cls, error: str) -> GpuSnapshot:
        """A snapshot with no GPUs, source "none", taken now, saying why."""
        return cls((), SOURCE_NONE, time.time(), error)


# --------------------------------------------------------------------------- nvidia-smi (pure)

NVIDIA_SMI_QUERY_FIELDS = "index,uuid,name,memory.total,memory.used,utilization.gpu"
NVIDIA_SMI_APPS_FIELDS = "gpu_uuid,pid,used_memory"
NVIDIA_SMI_FORMAT = "--format=csv,noheader,nounits"
NVIDIA_SMI_APPS_ARGS: tuple[str, ...] = (
    "nvidia-smi", f"--query-compute-apps={NVIDIA_SMI_APPS_FIELDS}", NVIDIA_SMI_FORMAT)


def nvidia_smi_args(loop_seconds: float | None = None) -> list[str]:
    """The `nvidia-smi` command line that prints `NVIDIA_SMI_QUERY_FIELDS` as bare CSV.

    With `loop_seconds`, nvidia-smi keeps running and prints one block (one line per GPU) each
    period: `-l N` for whole seconds, `-lms N` otherwise. The first element is "nvidia-smi";
    replace it to run another executable.

    Raises ValueError if `loop_seconds` is not a positive finite number.
    """
    args = ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY_FIELDS}", NVIDIA_SMI_FORMAT]
    if loop_seconds is None:
        return args
    if not (isinstance(loop_seconds, (int, float)) and math.isfinite(loop_seconds) and loop_seconds > 0):
        raise ValueError(f"loop_seconds must be a positive number of seconds, not {loop_seconds!r}")
    if float(loop_seconds).is_integer():
        return args + ["-l", str(int(loop_seconds))]
    return args + ["-lms", str(max(1, round(loop_seconds * 1000)))]


def _na(value: str) -> bool:
    return value.strip().lower() in _NOT_AVAILABLE


def _int_field(value: str, what: str, lineno: int, line: str) -> int:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:  # some drivers print "40960.0" or a unit despite nounits
        number = float(text.split()[0]) if text else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"nvidia-smi output line {lineno}: {what} is not a number: {line.strip()!r}")
    return int(number)


def parse_nvidia_smi_csv(text: str) -> list[GpuReading]:
    """Parse the output of `nvidia_smi_args()` (one or more blocks) into readings.

    Fields are NVIDIA_SMI_QUERY_FIELDS in that order. Blank lines and spaces around fields are
    ignored; a utilization of "[N/A]", "[Not Supported]" and the like becomes None. A GPU whose
    memory is not available is left out (it cannot be judged free). A name holding commas is
    kept whole. When `text` holds several blocks (a looping nvidia-smi), the last reading of
    each index wins, in index order.

    Returns [] for empty output. Raises ValueError, with one line saying where, on anything
    else that is not such CSV (a header, an error message, a missing field, a bad number).
    """
    readings: dict[int, GpuReading] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) < 6:
            raise ValueError(f"nvidia-smi output line {lineno}: expected 6 comma-separated fields "
                             f"({NVIDIA_SMI_QUERY_FIELDS}), got {len(parts)}: {line.strip()[:120]!r}")
        index_s, uuid_s = parts[0], parts[1]
        total_s, used_s, util_s = parts[-3:]
        name = ",".join(parts[2:-3]).strip()
        index = _int_field(index_s, "index", lineno, line)
        uuid = uuid_s.strip()
        if _na(total_s) or _na(used_s):
            continue
        total = _int_field(total_s, "memory.total", lineno, line)
        used = _int_field(used_s, "memory.used", lineno, line)
        util = None if _na(util_s) else _int_field(util_s, "utilization.gpu", lineno, line)
        readings[index] = GpuReading(index, uuid, name, total, used, util)
    return [readings[i] for i in sorted(readings)]


def parse_nvidia_smi_apps_csv(text: str) -> dict[str, tuple[int, ...]]:
    """Parse `NVIDIA_SMI_APPS_ARGS` output (gpu_uuid, pid, used_memory) into uuid -> pids.

    Pids are sorted and unique per GPU; used_memory is ignored (it is "[N/A]" in some
    containers). Returns {} for empty output or "No running processes found". Raises
    ValueError, with one line saying where, on anything else that is not such CSV.
    """
    pids: dict[str, set[int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.lower().startswith("no running processes"):
            continue
        parts = [p.strip() for p in stripped.split(",")]
        if len(parts) != 3:
            raise ValueError(f"nvidia-smi compute-apps line {lineno}: expected 3 comma-separated "
                             f"fields ({NVIDIA_SMI_APPS_FIELDS}), got {len(parts)}: {stripped[:120]!r}")
        uuid, pid_s = parts[0], parts[1]
        try:
            pid = int(pid_s)
        except ValueError:
            raise ValueError(f"nvidia-smi compute-apps line {lineno}: pid is not a number: "
                             f"{stripped[:120]!r}") from None
        if not uuid or _na(uuid):
            raise ValueError(f"nvidia-smi compute-apps line {lineno}: no GPU uuid: {stripped[:120]!r}")
        pids.setdefault(uuid, set()).add(pid)
    return {uuid: tuple(sorted(p)) for uuid, p in pids.items()}


def with_pids(readings: Iterable[GpuReading], pids_by_uuid: dict[str, tuple[int, ...]]) -> list[GpuReading]:
    """The readings with `pids` filled in from a uuid -> pids map (pure; unknown uuids get ())."""
    return [replace(r, pids=pids_by_uuid.get(r.uuid, ())) for r in readings]


# --------------------------------------------------------------------------- busy / free (pure)

def busy_with_others(reading: GpuReading, *, ours: Collection[int], memory_threshold_mib: int = 1024,
                     utilization_threshold_pct: int = 30) -> bool:
    """Whether a GPU is in use by work hypd did not start, and so must be left alone.

    A GPU in `ours` (indexes hypd has handed out on this host) is never busy with others: its
    load is ours. Any other GPU is busy when more than `memory_threshold_mib` of its memory is
    used or its utilization is above `utilization_threshold_pct` (an unknown utilization counts
    as idle; memory decides then).
    """
    if reading.index in ours:
        return False
    if reading.memory_used_mib > memory_threshold_mib:
        return True
    return reading.utilization_pct is not None and reading.utilization_pct > utilization_threshold_pct


def free_gpus(snapshot: GpuSnapshot, ours: Collection[int], allowed: Collection[int] | None = None, *,
              memory_threshold_mib: int = 1024, utilization_threshold_pct: int = 30) -> list[int]:
    """Indexes, ascending, of the GPUs hypd may hand out now.

    A GPU is free when it is in the snapshot, in `allowed` (None: every GPU), not in `ours`
    (already handed out) and not `busy_with_others` with the given thresholds. A snapshot that
    is not ok has no free GPU.
    """
    free = []
    for reading in snapshot.gpus:
        if allowed is not None and reading.index not in allowed:
            continue
        if reading.index in ours:
            continue
        if busy_with_others(reading, ours=ours, memory_threshold_mib=memory_threshold_mib,
                            utilization_threshold_pct=utilization_threshold_pct):
            continue
        free.append(reading.index)
    return sorted(set(free))


# --------------------------------------------------------------------------- nvidia-smi (process)

def _one_line(text: str, limit: int = 200) -> str:
    for line in text.splitlines():
        if line.strip():
            line = " ".join(line.split())
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


async def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a command; (exit status, stdout, stderr). Kills it on timeout or cancellation.

    Raises OSError when it cannot be started and asyncio.TimeoutError when it runs too long.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def read_nvidia_smi(executable: str = "nvidia-smi", timeout: float = 10.0) -> GpuSnapshot:
    """Read this machine's GPUs by running `nvidia-smi` (looked up on the current PATH).

    Runs the GPU query and the compute-apps query side by side; the second only fills `pids`
    and its failure is ignored. Never raises (except cancellation): a missing binary gives a
    "none" snapshot with error "nvidia-smi not found"; a failure to start, a non-zero exit,
    output that does not parse or a run longer than `timeout` seconds gives a "none" snapshot
    with a one-line error.
    """
    path = shutil.which(executable)
    if path is None:
        return GpuSnapshot.failed(f"{executable} not found")

    gpu_task = asyncio.ensure_future(_run([path, *nvidia_smi_args()[1:]], timeout))
    apps_task = asyncio.ensure_future(_run([path, *NVIDIA_SMI_APPS_ARGS[1:]], timeout))
    try:
        results = await asyncio.gather(gpu_task, apps_task, return_exceptions=True)
    except asyncio.CancelledError:
        gpu_task.cancel()
        apps_task.cancel()
        await asyncio.gather(gpu_task, apps_task, return_exceptions=True)
        raise
    taken_at = time.time()
    gpu_result, apps_result = results

    if isinstance(gpu_result, asyncio.TimeoutError):
        return GpuSnapshot.failed(f"{executable} timed out after {timeout:g}s")
    if isinstance(gpu_result, OSError):
        return GpuSnapshot.failed(f"cannot run {path}: {gpu_result.strerror or gpu_result}")
    if isinstance(gpu_result, BaseException):
        if isinstance(gpu_result, asyncio.CancelledError):
            raise gpu_result
        return GpuSnapshot.failed(f"{executable} failed: {type(gpu_result).__name__}: {gpu_result}")
    rc, out, err = gpu_result
    if rc != 0:
        why = _one_line(err) or _one_line(out) or "no message"
        return GpuSnapshot.failed(f"{executable} exited with status {rc}: {why}")
    try:
        readings = parse_nvidia_smi_csv(out)
    except ValueError as exc:
        return GpuSnapshot.failed(str(exc))

    pids: dict[str, tuple[int, ...]] = {}
    if isinstance(apps_result, tuple) and apps_result[0] == 0:
        try:
            pids = parse_nvidia_smi_apps_csv(apps_result[1])
        except ValueError as exc:
            log.debug("ignoring nvidia-smi compute-apps output: %s", exc)
    else:
        log.debug("nvidia-smi compute-apps query failed: %r", apps_result)
    return GpuSnapshot(tuple(with_pids(readings, pids)), SOURCE_NVIDIA_SMI, taken_at)


# --------------------------------------------------------------------------- NVML

class NvmlProbe:
    """Reads the local GPUs through NVML; the only place hypd calls nvidia-ml-py.

    Synchronous and blocking (nvmlInit can take seconds with persistence mode off): call it
    from a worker thread. Thread-safe. `nvml` replaces the `pynvml` module (tests pass a fake).
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml: Any = nvml
        self._lock = threading.Lock()
        self._tried = False
        self._initialised = False
        self._error: str | None = None
        self._warned: set[str] = set()
        self._memory_v2 = True  # nvmlDeviceGetMemoryInfo_v2 until it proves missing

    # -- logging once
    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # -- init
    def _ensure_init(self) -> bool:
        if self._tried:
            return self._initialised
        self._tried = True
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                self._error = f"NVML unavailable: nvidia-ml-py is not installed ({exc})"
                self._warn_once("init", "%s", self._error)
                return False
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError, ...
            self._error = f"NVML unavailable: {_nvml_error_text(exc)}"
            self._warn_once("init", "%s; GPUs will be read another way or not at all", self._error)
            return False
        self._initialised = True
        self._error = None
        return True

    @property
    def available(self) -> bool:
        """Whether NVML can be used here. The first access tries nvmlInit (blocking)."""
        with self._lock:
            return self._ensure_init()

    @property
    def error(self) -> str | None:
        """Why NVML is not available (None while it is or has not been tried)."""
        return self._error

    # -- reading
    def read(self) -> GpuSnapshot:
        """Read every GPU. Never raises.

        Returns a snapshot with source "nvml"; or source "none" with the error when NVML is not
        available (logged once) or the GPUs cannot be counted. A GPU whose handle or memory
        cannot be read is left out; a failing name, uuid, utilization or process list becomes
        "", None or ().
        """
        with self._lock:
            if not self._ensure_init():
                return GpuSnapshot.failed(self._error or "NVML unavailable")
            try:
                return self._read_all()
            except Exception as exc:  # a last resort: nothing from NVML may escape
                error = f"NVML: cannot read GPUs: {_nvml_error_text(exc)}"
                self._warn_once(f"read:{error}", "%s", error)
                return GpuSnapshot.failed(error)

    def _read_all(self) -> GpuSnapshot:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            error = f"NVML: cannot count GPUs: {_nvml_error_text(exc)}"
            self._warn_once(f"count:{error}", "%s", error)
            return GpuSnapshot.failed(error)
        readings = []
        for index in range(count):
            reading = self._read_device(index)
            if reading is not None:
                readings.append(reading)
        return GpuSnapshot(tuple(readings), SOURCE_NVML, time.time())

    def _field(self, index: int, what: str, fn: Any, *args: Any) -> Any:
        """fn(*args), or None after logging (once) why not."""
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            if isinstance(exc, _errors(nvml, "NotSupported")):
                log.debug("GPU %d: %s not supported", index, what)
            else:
                self._warn_once(f"{index}:{what}:{exc}", "GPU %d: cannot read %s: %s",
                                index, what, _nvml_error_text(exc))
            return None

    def _memory(self, index: int, handle: Any) -> Any:
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        if self._memory_v2 and version is not None:
            try:  # v2 reports `used` without the driver's reservation, as nvidia-smi does
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except nvml.NVMLError as exc:
                if not isinstance(exc, _errors(nvml, "FunctionNotFound", "NotSupported",
                                               "ArgumentVersionMismatch")):
                    self._warn_once(f"{index}:memory:{exc}", "GPU %d: cannot read memory: %s",
                                    index, _nvml_error_text(exc))
                    return None
                self._memory_v2 = False  # an older driver: use v1 from now on
            except TypeError:  # an old nvidia-ml-py without the version argument
                self._memory_v2 = False
        return self._field(index, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)

    def _pids(self, index: int, handle: Any) -> tuple[int, ...]:
        nvml = self._nvml
        fns = [getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)]
        fns += [getattr(nvml, f"nvmlDeviceGetComputeRunningProcesses_v{v}", None) for v in (3, 2)]
        for fn in fns:
            if fn is None:
                continue
            try:
                procs = fn(handle)
            except nvml.NVMLError as exc:
                if isinstance(exc, _errors(nvml, "FunctionNotFound")):
                    continue
                if not isinstance(exc, _errors(nvml, "NotSupported")):
                    self._warn_once(f"{index}:processes:{exc}", "GPU %d: cannot list processes: %s",
                                    index, _nvml_error_text(exc))
                return ()
            except Exception as exc:  # NVMLLibraryMismatchError: try an older version
                log.debug("GPU %d: %s: %s", index, getattr(fn, "__name__", fn), exc)
                continue
            return tuple(sorted({int(p.pid) for p in procs or ()}))
        return ()

    def _read_device(self, index: int) -> GpuReading | None:
        nvml = self._nvml
        handle = self._field(index, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            return None
        memory = self._memory(index, handle)
        if memory is None:
            return None
        uuid = self._field(index, "uuid", nvml.nvmlDeviceGetUUID, handle)
        name = self._field(index, "name", nvml.nvmlDeviceGetName, handle)
        rates = self._field(index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        return GpuReading(
            index=index,
            uuid=_text(uuid),
            name=_text(name),
            memory_total_mib=int(memory.total) // MIB,
            memory_used_mib=int(memory.used) // MIB,
            utilization_pct=None if rates is None else int(rates.gpu),
            pids=self._pids(index, handle),
        )

    def close(self) -> None:
        """nvmlShutdown if initialised; a later read() initialises again. Never raises."""
        with self._lock:
            if self._initialised:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown: %s", exc)
            self._initialised = False
            self._tried = False


def _errors(nvml: Any, *names: str) -> tuple[type[BaseException], ...]:
    """The module's NVMLError_<name> classes that exist (for isinstance)."""
    return tuple(getattr(nvml, f"NVMLError_{name}") for name in names if hasattr(nvml, f"NVMLError_{name}"))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):  # nvidia-ml-py < 11.515 returned bytes
        return value.decode(errors="replace")
    return str(value)


def _nvml_error_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ calls into the library
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- local machine

class LocalGpuProbe:
    """The local machine's GPUs, through NVML if it works, else `nvidia-smi` on PATH.

    The first source that works is kept. When it fails, the same read tries the other, and the
    one that works is kept from then on; when none works the snapshot has source "none" (the
    host then offers CPU slots) and every read tries again.
    """

    def __init__(self, *, nvml: NvmlProbe | None = None, nvidia_smi: str = "nvidia-smi",
                 nvidia_smi_timeout: float = 10.0, use_nvml: bool = True) -> None:
        self.nvml = nvml if nvml is not None else NvmlProbe()
        self.nvidia_smi = nvidia_smi
        self.nvidia_smi_timeout = nvidia_smi_timeout
        self.use_nvml = use_nvml
        self.source: str | None = None  # the source kept; None until one works
        self._last_error: str | None = None

    async def _read(self, source: str) -> GpuSnapshot:
        if source == SOURCE_NVML:
            return await asyncio.to_thread(self.nvml.read)
        return await read_nvidia_smi(self.nvidia_smi, self.nvidia_smi_timeout)

    async def read(self) -> GpuSnapshot:
        """Read the GPUs. Never raises (except cancellation); see the class for the order."""
        order = [SOURCE_NVML, SOURCE_NVIDIA_SMI] if self.use_nvml else [SOURCE_NVIDIA_SMI]
        if self.source in order:
            order.remove(self.source)
            order.insert(0, self.source)
        errors = []
        for source in order:
            try:
                snapshot = await self._read(source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # neither source should raise; be sure
                snapshot = GpuSnapshot.failed(f"{source}: {type(exc).__name__}: {exc}")
            if snapshot.ok:
                if source != self.source:
                    log.info("reading GPUs through %s (%d found)", source, len(snapshot.gpus))
                    self.source = source
                self._last_error = None
                return snapshot
            errors.append(snapshot.error or f"{source} failed")
        error = "; ".join(errors)
        if self.source is not None or error != self._last_error:
            log.warning("cannot read GPUs on this machine: %s", error)
        self.source = None
        self._last_error = error
        return GpuSnapshot.failed(error)

    def close(self) -> None:
        """Release NVML. Blocking; never raises."""
        self.nvml.close()
