"""hypd.gpus: parsers, busy/free rules, nvidia-smi through a fake, NVML on a GPU-less machine."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from hypd.gpus import (
    NVIDIA_SMI_APPS_ARGS,
    NVIDIA_SMI_QUERY_FIELDS,
    GpuReading,
    GpuSnapshot,
    LocalGpuProbe,
    NvmlProbe,
    busy_with_others,
    free_gpus,
    nvidia_smi_args,
    parse_nvidia_smi_apps_csv,
    parse_nvidia_smi_csv,
    read_nvidia_smi,
)

try:
    from tests.fakes.nvidia_smi import fake_uuid, install_fake_nvidia_smi, write_gpu_failure, write_gpu_state
except ImportError:  # tests/ has no __init__.py: pytest puts tests/ itself on sys.path
    from fakes.nvidia_smi import fake_uuid, install_fake_nvidia_smi, write_gpu_failure, write_gpu_state


# ------------------------------------------------------------------ parsers

def test_query_args() -> None:
    assert nvidia_smi_args() == ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY_FIELDS}",
                                 "--format=csv,noheader,nounits"]
    assert nvidia_smi_args(2)[-2:] == ["-l", "2"]
    assert nvidia_smi_args(2.0)[-2:] == ["-l", "2"]
    assert nvidia_smi_args(0.25)[-2:] == ["-lms", "250"]
    assert nvidia_smi_args(1.5)[-2:] == ["-lms", "1500"]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            nvidia_smi_args(bad)
    assert NVIDIA_SMI_APPS_ARGS[0] == "nvidia-smi"
    assert "--query-compute-apps=gpu_uuid,pid,used_memory" in NVIDIA_SMI_APPS_ARGS


def test_parse_csv_normal() -> None:
    text = ("0, GPU-aaa, NVIDIA A100-SXM4-40GB, 40960, 1234, 57\n"
            "1, GPU-bbb, NVIDIA A100-SXM4-40GB, 40960, 0, 0\n")
    assert parse_nvidia_smi_csv(text) == [
        GpuReading(0, "GPU-aaa", "NVIDIA A100-SXM4-40GB", 40960, 1234, 57),
        GpuReading(1, "GPU-bbb", "NVIDIA A100-SXM4-40GB", 40960, 0, 0),
    ]


def test_parse_csv_tolerant() -> None:
    text = ("\n  0 ,GPU-aaa ,  Tesla T4  , 15360 ,  3 , [N/A]  \r\n\n"
            "1, GPU-bbb, Weird, Name, With, Commas, 100, 50, [Not Supported]\n"
            "2, GPU-ccc, MIG thing, [N/A], [N/A], [N/A]\n"  # memory unknown: left out
            "\n")
    readings = parse_nvidia_smi_csv(text)
    assert readings == [
        GpuReading(0, "GPU-aaa", "Tesla T4", 15360, 3, None),
        GpuReading(1, "GPU-bbb", "Weird, Name, With, Commas", 100, 50, None),
    ]
    assert parse_nvidia_smi_csv("") == []
    assert parse_nvidia_smi_csv("\n \n") == []


def test_parse_csv_loop_blocks_last_wins() -> None:
    text = "0, GPU-a, X, 100, 1, 0\n1, GPU-b, X, 100, 2, 0\n0, GPU-a, X, 100, 7, 0\n"
    assert [(r.index, r.memory_used_mib) for r in parse_nvidia_smi_csv(text)] == [(0, 7), (1, 2)]


@pytest.mark.parametrize("garbage", [
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
    "index, uuid, name, memory.total [MiB], memory.used [MiB], utilization.gpu [%]",
    "0, GPU-a, X, lots, 1, 0",
    "x, GPU-a, X, 100, 1, 0",
    "0, GPU-a, X, 100, 1, busy",
    "0, GPU-a, X, 100",
])
def test_parse_csv_garbage(garbage: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_nvidia_smi_csv("0, GPU-ok, X, 100, 1, 0\n" + garbage + "\n")
    message = str(info.value)
    assert "\n" not in message and "line 2" in message


def test_parse_apps() -> None:
    text = ("GPU-aaa, 4242, 1000\n"
            " GPU-aaa , 17 , [N/A] \n"
            "\n"
            "GPU-bbb, 99, 5\n"
            "GPU-aaa, 4242, 1000\n")
    assert parse_nvidia_smi_apps_csv(text) == {"GPU-aaa": (17, 4242), "GPU-bbb": (99,)}
    assert parse_nvidia_smi_apps_csv("") == {}
    assert parse_nvidia_smi_apps_csv("No running processes found\n") == {}
    for garbage in ("GPU-aaa, notapid, 3", "GPU-aaa, 3", "[N/A], 3, 3", "Failed to initialize NVML: x"):
        with pytest.raises(ValueError):
            parse_nvidia_smi_apps_csv(garbage)


# ------------------------------------------------------------------ busy / free

def reading(index: int, used: int = 0, util: int | None = 0) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", "X", 40960, used, util)


def snap(*readings: GpuReading) -> GpuSnapshot:
    return GpuSnapshot(tuple(readings), "nvml", 0.0)


def test_busy_with_others_thresholds() -> None:
    assert not busy_with_others(reading(0), ours=set())
    assert not busy_with_others(reading(0, used=1024), ours=set())  # at the threshold: not above
    assert busy_with_others(reading(0, used=1025), ours=set())
    assert not busy_with_others(reading(0, util=30), ours=set())
    assert busy_with_others(reading(0, util=31), ours=set())
    assert not busy_with_others(reading(0, util=None), ours=set())
    assert busy_with_others(reading(0, used=5000, util=None), ours=set())
    assert not busy_with_others(reading(0, used=5000), ours=set(), memory_threshold_mib=8000)
    assert busy_with_others(reading(0, util=10), ours=set(), utilization_threshold_pct=5)


def test_busy_ours_is_never_foreign() -> None:
    heavy = reading(3, used=39000, util=100)
    assert busy_with_others(heavy, ours={0, 1})
    assert not busy_with_others(heavy, ours={3})


def test_free_gpus() -> None:
    s = snap(reading(0), reading(1, used=9000), reading(2, util=95), reading(3), reading(4, util=None))
    assert free_gpus(s, set()) == [0, 3, 4]
    assert free_gpus(s, {0}) == [3, 4]  # handed out already: not free, even though idle
    assert free_gpus(s, {1, 2}) == [0, 3, 4]  # ours and loaded: still not free
    assert free_gpus(s, set(), allowed={0, 1, 4, 7}) == [0, 4]
    assert free_gpus(s, set(), allowed=set()) == []
    assert free_gpus(s, set(), (3, 4)) == [3, 4]
    assert free_gpus(s, set(), memory_threshold_mib=10000, utilization_threshold_pct=99) == [0, 1, 2, 3, 4]
    assert free_gpus(GpuSnapshot.failed("nvidia-smi not found"), set()) == []


def test_snapshot_ok() -> None:
    assert snap().ok
    assert not GpuSnapshot.failed("x").ok
    failed = GpuSnapshot.failed("nvidia-smi not found")
    assert failed.source == "none" and failed.gpus == () and failed.error == "nvidia-smi not found"


# ------------------------------------------------------------------ nvidia-smi through the fake

@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake nvidia-smi first on PATH; returns its state file (two idle GPUs)."""
    state = tmp_path / "gpus.json"
    install_fake_nvidia_smi(tmp_path / "bin", state)
    write_gpu_state(state, [{"index": 0}, {"index": 1}])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    return state


async def test_read_nvidia_smi(fake_smi: Path) -> None:
    write_gpu_state(fake_smi, [
        {"index": 0, "memory_used_mib": 10, "utilization_pct": 0},
        {"index": 1, "memory_used_mib": 20000, "utilization_pct": 88, "pids": [4242, 17]},
        {"index": 2, "memory_total_mib": 81920, "name": "NVIDIA H100 80GB HBM3", "utilization_pct": None},
    ])
    s = await read_nvidia_smi()
    assert s.ok and s.source == "nvidia-smi" and s.error is None
    assert s.gpus == (
        GpuReading(0, fake_uuid(0), "NVIDIA Fake A100", 40960, 10, 0),
        GpuReading(1, fake_uuid(1), "NVIDIA Fake A100", 40960, 20000, 88, (17, 4242)),
        GpuReading(2, fake_uuid(2), "NVIDIA H100 80GB HBM3", 81920, 0, None),
    )
    assert free_gpus(s, set()) == [0, 2]  # GPU 1 is busy with someone else's work
    assert free_gpus(s, {1}) == [0, 2]


async def test_read_nvidia_smi_sees_changes(fake_smi: Path) -> None:
    assert [g.index for g in (await read_nvidia_smi()).gpus] == [0, 1]
    write_gpu_state(fake_smi, [{"index": 1}])  # GPU 0 gone (fell off the bus)
    assert [g.index for g in (await read_nvidia_smi()).gpus] == [1]
    write_gpu_state(fake_smi, [{"index": 0}, {"index": 1}, {"index": 2, "memory_used_mib": 3000}])
    s = await read_nvidia_smi()
    assert [g.index for g in s.gpus] == [0, 1, 2]
    assert free_gpus(s, set()) == [0, 1]


async def test_read_nvidia_smi_failure(fake_smi: Path) -> None:
    write_gpu_failure(fake_smi)
    s = await read_nvidia_smi()
    assert s.source == "none" and not s.ok and s.gpus == ()
    assert s.error is not None and "\n" not in s.error
    assert "status 9" in s.error and "couldn't communicate with the NVIDIA driver" in s.error

    fake_smi.unlink()  # no state at all: fails the same way
    s = await read_nvidia_smi()
    assert s.source == "none" and "status 9" in (s.error or "")

    write_gpu_failure(fake_smi, "No devices were found", exit_code=6)
    assert (await read_nvidia_smi()).error == "nvidia-smi exited with status 6: No devices were found"


async def test_read_nvidia_smi_garbage(fake_smi: Path) -> None:
    write_gpu_state(fake_smi, [], raw="Unable to determine the device handle for GPU0000:41:00.0: Unknown\n")
    s = await read_nvidia_smi()
    assert s.source == "none" and s.error is not None and "\n" not in s.error
    assert "expected 6 comma-separated fields" in s.error


async def test_read_nvidia_smi_timeout(fake_smi: Path) -> None:
    write_gpu_state(fake_smi, [{"index": 0}], sleep=30)
    s = await asyncio.wait_for(read_nvidia_smi(timeout=0.5), 10)
    assert s.source == "none" and s.error == "nvidia-smi timed out after 0.5s"


async def test_read_nvidia_smi_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    s = await read_nvidia_smi()
    assert s.source == "none" and s.gpus == () and s.error == "nvidia-smi not found"


async def test_fake_works_without_environment(fake_smi: Path) -> None:
    """The state path and interpreter are baked in: it runs under `env -i`, as over SSH."""
    bin_dir = fake_smi.parent / "bin"
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/env", "-i", str(bin_dir / "nvidia-smi"), "-L", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().splitlines() == [f"GPU {i}: NVIDIA Fake A100 (UUID: {fake_uuid(i)})" for i in (0, 1)]


async def test_loop_streams_blocks(fake_smi: Path) -> None:
    """`-lms` keeps one process printing a block per period, re-reading the GPUs each time."""
    args = nvidia_smi_args(loop_seconds=0.05)
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        async def block() -> list[GpuReading]:
            lines = [await asyncio.wait_for(proc.stdout.readline(), 10) for _ in range(2)]
            return parse_nvidia_smi_csv(b"".join(lines).decode())

        first = await block()
        second = await block()
        assert [g.index for g in first] == [g.index for g in second] == [0, 1]
        write_gpu_state(fake_smi, [{"index": 0, "memory_used_mib": 777}, {"index": 1}])
        for _ in range(100):
            if (await block())[0].memory_used_mib == 777:
                break
        else:
            pytest.fail("the looping fake never showed the new state")
    finally:
        proc.kill()
        await proc.wait()


# ------------------------------------------------------------------ NVML

def test_nvml_unavailable_here(caplog: pytest.LogCaptureFixture) -> None:
    """This machine has no libnvidia-ml: NVML reads as "none", warned about once."""
    caplog.set_level(logging.WARNING, logger="hypd.gpus")
    probe = NvmlProbe()
    snapshots = [probe.read() for _ in range(3)]
    assert probe.available is False
    for s in snapshots:
        assert s.source == "none" and s.gpus == () and not s.ok
        assert s.error is not None and "NVML" in s.error
    warnings = [r for r in caplog.records if r.name == "hypd.gpus" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    probe.close()  # never initialised: nothing to shut down, no error
    probe.close()


class FakeNvml(SimpleNamespace):
    """Enough of pynvml for NvmlProbe, with pynvml's own error classes."""

    def __init__(self, devices: list[dict[str, Any]], init_error: int | None = None) -> None:
        super().__init__(devices=devices, init_error=init_error, inits=0, shutdowns=0, count_error=None)
        for name in dir(pynvml):
            if name.startswith("NVMLError") or name == "nvmlMemory_v2":
                setattr(self, name, getattr(pynvml, name))

    def _dev(self, handle: int) -> dict[str, Any]:
        dev = self.devices[handle]
        if dev.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return dev

    def _get(self, handle: int, key: str) -> Any:
        value = self._dev(handle)[key]
        if isinstance(value, int) and key.startswith("err_"):
            raise pynvml.NVMLError(value)
        return value

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if self.devices[index].get("no_handle"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> str:
        if self._dev(handle).get("name_error"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return "Fake"

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> Any:
        dev = self._dev(handle)
        if version and dev.get("v1_only"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(total=dev["total"] * 2**20, used=dev["used"] * 2**20)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        util = self._dev(handle).get("util")
        if util is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=util, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        pids = self._dev(handle).get("pids")
        if pids is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if pids == "old":  # what nvidia-ml-py does when the driver lacks the _v3 function
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")
        return [SimpleNamespace(pid=p, usedGpuMemory=None) for p in pids]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=5, usedGpuMemory=None)]


def test_nvml_reads_and_tolerates_failing_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hypd.gpus")
    nvml = FakeNvml([
        {"total": 40960, "used": 100, "util": 3, "pids": [9, 7, 9]},
        {"total": 40960, "used": 9000, "util": None, "pids": None, "name_error": True},
        {"total": 40960, "used": 0, "util": 0, "lost": True},  # left out
        {"total": 40960, "used": 0, "util": 0, "no_handle": True},  # left out
        {"total": 81920, "used": 5, "util": 1, "pids": "old", "v1_only": True},
    ])
    probe = NvmlProbe(nvml)
    assert probe.available
    for _ in range(3):
        s = probe.read()
        assert s.ok and s.source == "nvml"
        assert s.gpus == (
            GpuReading(0, "GPU-0", "Fake", 40960, 100, 3, (7, 9)),
            GpuReading(1, "GPU-1", "", 40960, 9000, None, ()),
            GpuReading(4, "GPU-4", "Fake", 81920, 5, 1, (5,)),
        )
    assert nvml.inits == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3, warned  # GPU 1's name, GPU 2 lost, GPU 3's handle: once each

    nvml.count_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    s = probe.read()
    assert s.source == "none" and "cannot count GPUs" in (s.error or "")
    probe.close()
    assert nvml.shutdowns == 1
    probe.close()
    assert nvml.shutdowns == 1


def test_nvml_driver_not_loaded() -> None:
    probe = NvmlProbe(FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    s = probe.read()
    assert not probe.available and s.source == "none" and "Driver Not Loaded" in (s.error or "")


# ------------------------------------------------------------------ LocalGpuProbe

async def test_local_probe_falls_back_to_nvidia_smi(fake_smi: Path) -> None:
    probe = LocalGpuProbe()  # the real NVML: unavailable on this machine
    s = await probe.read()
    assert s.source == "nvidia-smi" and [g.index for g in s.gpus] == [0, 1]
    assert probe.source == "nvidia-smi"
    assert (await probe.read()).source == "nvidia-smi"
    probe.close()


async def test_local_probe_nothing_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hypd.gpus")
    monkeypatch.setenv("PATH", str(tmp_path))
    probe = LocalGpuProbe()
    for _ in range(3):
        s = await probe.read()
        assert s.source == "none" and s.gpus == () and "nvidia-smi not found" in (s.error or "")
    assert probe.source is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2  # NVML, then the probe


async def test_local_probe_switches_when_the_source_fails(fake_smi: Path) -> None:
    nvml = FakeNvml([{"total": 100, "used": 0, "util": 0, "pids": []}])
    probe = LocalGpuProbe(nvml=NvmlProbe(nvml))
    s = await probe.read()
    assert s.source == "nvml" and probe.source == "nvml"

    nvml.count_error = pynvml.NVML_ERROR_GPU_IS_LOST  # NVML breaks: nvidia-smi takes over at once
    s = await probe.read()
    assert s.source == "nvidia-smi" and [g.index for g in s.gpus] == [0, 1]
    assert probe.source == "nvidia-smi"

    nvml.count_error = None  # kept on nvidia-smi while it works
    assert (await probe.read()).source == "nvidia-smi"

    write_gpu_failure(fake_smi)  # nvidia-smi breaks: back to NVML
    assert (await probe.read()).source == "nvml"

    nvml.count_error = pynvml.NVML_ERROR_UNKNOWN  # both broken
    s = await probe.read()
    assert s.source == "none" and probe.source is None
    assert "NVML" in (s.error or "") and "status 9" in (s.error or "")
    probe.close()
    assert nvml.shutdowns == 1


def test_fake_uses_given_python(tmp_path: Path) -> None:
    script = install_fake_nvidia_smi(tmp_path / "bin", tmp_path / "state.json")
    assert script.read_text().splitlines()[0] == f"#!{sys.executable} -S"
    assert os.access(script, os.X_OK)
