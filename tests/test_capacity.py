"""hypd.capacity: free GPU slots, free GPU memory and CPU slots of a host from snapshots.
Pure: no daemon, no GPU."""

from __future__ import annotations

from hypd.capacity import (
    RESERVE_GRACE,
    Holding,
    HostRules,
    Released,
    free_gpu_memory,
    free_gpu_slots,
    host_capacity,
)
from hypd.gpus import GpuReading, GpuSnapshot

TOTAL = 80_000


def G(index: int, used: int = 0, util: int | None = 0, total: int = TOTAL) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", "H100", total, used, util)


def snap(*gpus: GpuReading, at: float = 100.0) -> GpuSnapshot:
    return GpuSnapshot(tuple(gpus), "nvml", at)


R = HostRules("h")


# ------------------------------------------------------------------ GPU slots

def test_no_reading_no_gpu_slots() -> None:
    assert free_gpu_slots(R, None, [], []) == ()
    assert free_gpu_slots(R, snap(), [], []) == ()
    assert free_gpu_slots(R, GpuSnapshot.failed("nvidia-smi not found"), [], []) == ()


def test_idle_gpus_are_free() -> None:
    assert free_gpu_slots(R, snap(G(0), G(1), G(2)), [], []) == (0, 1, 2)


def test_gpus_busy_with_someone_else_are_left_alone() -> None:
    s = snap(G(0, used=5000), G(1, util=90), G(2, used=1024, util=30), G(3, used=200, util=None))
    # 0: memory over the threshold; 1: utilization over it; 2, 3: at or under both.
    assert free_gpu_slots(R, s, [], []) == (2, 3)
    # Thresholds are the host's.
    strict = HostRules("h", busy_memory_mib=100, busy_utilization=95)
    assert free_gpu_slots(strict, s, [], []) == (1,)
    lax = HostRules("h", busy_memory_mib=10_000, busy_utilization=95)
    assert free_gpu_slots(lax, s, [], []) == (0, 1, 2, 3)


def test_our_own_load_is_not_someone_elses() -> None:
    s = snap(G(0, used=30_000, util=100), G(1, used=30_000, util=100))
    two = HostRules("h", max_per_gpu=2)
    # GPU 0 carries one of our runs: room for one more beside it; GPU 1's load is foreign.
    assert free_gpu_slots(two, s, [Holding((0,))], []) == (0,)
    assert free_gpu_slots(R, s, [Holding((0,))], []) == ()


def test_only_allowed_gpus() -> None:
    rules = HostRules("h", allowed_gpus=(1, 3))
    assert free_gpu_slots(rules, snap(G(0), G(1), G(2), G(3)), [], []) == (1, 3)
    assert free_gpu_slots(HostRules("h", allowed_gpus=()), snap(G(0)), [], []) == ()
    # Our own run on a GPU that is no longer allowed gets no company there.
    assert free_gpu_slots(HostRules("h", allowed_gpus=(1,), max_per_gpu=2), snap(G(0), G(1)),
                          [Holding((0,))], []) == (1, 1)


def test_max_per_gpu_sharing() -> None:
    rules = HostRules("h", max_per_gpu=3)
    s = snap(G(0), G(1))
    assert free_gpu_slots(rules, s, [], []) == (0, 0, 0, 1, 1, 1)
    held = [Holding((0,)), Holding((0, 1)), Holding(())]  # the CPU run holds no GPU
    assert free_gpu_slots(rules, s, held, []) == (0, 1, 1)
    full = [Holding((0,))] * 3 + [Holding((1,))] * 5  # more than allowed: no slot, not negative
    assert free_gpu_slots(rules, s, full, []) == ()


def test_released_gpu_is_free_at_once_though_the_reading_shows_its_memory() -> None:
    s = snap(G(0, used=30_000, util=100), G(1, used=30_000, util=100), at=100.0)
    # GPU 0's run was confirmed gone after the reading: what it shows there was ours.
    assert free_gpu_slots(R, s, [], [Released(0, at=101.0)]) == (0,)
    assert free_gpu_slots(R, s, [], [Released(0, at=100.0)]) == (0,)  # at the same moment
    # ... released before the reading: the load it shows is someone else's.
    assert free_gpu_slots(R, s, [], [Released(0, at=99.0)]) == ()


def test_newer_reading_supersedes_the_release() -> None:
    released = [Released(0, at=101.0)]
    assert free_gpu_slots(R, snap(G(0, used=30_000), at=100.0), [], released) == (0,)
    # A reading after the release that still shows load there: someone else took it.
    assert free_gpu_slots(R, snap(G(0, used=30_000), at=102.0), [], released) == ()
    assert free_gpu_slots(R, snap(G(0), at=102.0), [], released) == (0,)


def test_released_gpu_shared_with_a_run_still_there() -> None:
    rules = HostRules("h", max_per_gpu=2)
    s = snap(G(0, used=40_000, util=100), at=100.0)
    # Two runs were there at the reading; one of them ended since.
    assert free_gpu_slots(rules, s, [Holding((0,))], [Released(0, at=105.0)]) == (0,)


# ------------------------------------------------------------------ GPU memory

def test_free_memory_is_what_the_reading_shows() -> None:
    assert free_gpu_memory(None, [], []) == ()
    s = snap(G(0, used=10_000), G(1, used=0), at=1000.0)
    assert free_gpu_memory(s, [], []) == ((0, TOTAL - 10_000), (1, TOTAL))
    # A run started long before the reading is in it already.
    assert free_gpu_memory(s, [Holding((0,), 10_000, started=1000.0 - RESERVE_GRACE - 1)], []) == \
        ((0, TOTAL - 10_000), (1, TOTAL))


def test_runs_started_just_before_or_after_the_reading_reserve_their_memory() -> None:
    s = snap(G(0, used=10_000), G(1), at=1000.0)
    before = Holding((0,), 20_000, started=1000.0 - RESERVE_GRACE / 2)  # may not have allocated yet
    after = Holding((0, 1), 5_000, started=1010.0)
    assert free_gpu_memory(s, [before], []) == ((0, TOTAL - 30_000), (1, TOTAL))
    assert free_gpu_memory(s, [before, after], []) == ((0, TOTAL - 35_000), (1, TOTAL - 5_000))
    # Two launches in the same second each count.
    assert free_gpu_memory(s, [after, after], []) == ((0, TOTAL - 20_000), (1, TOTAL - 10_000))


def test_memory_of_a_run_gone_since_the_reading_is_given_back() -> None:
    s = snap(G(0, used=30_000), at=1000.0)
    old = 1000.0 - RESERVE_GRACE - 1
    assert free_gpu_memory(s, [], [Released(0, at=1001.0, gpu_mem_mib=20_000, started=old)]) == \
        ((0, TOTAL - 10_000),)
    # Gone before the reading: the reading already shows it gone.
    assert free_gpu_memory(s, [], [Released(0, at=999.0, gpu_mem_mib=20_000, started=old)]) == \
        ((0, TOTAL - 30_000),)
    # Started just before the reading: the reading may not show its memory; nothing given back.
    assert free_gpu_memory(s, [], [Released(0, at=1001.0, gpu_mem_mib=20_000, started=995.0)]) == \
        ((0, TOTAL - 30_000),)


# ------------------------------------------------------------------ CPU slots and the whole

def test_cpu_slots() -> None:
    rules = HostRules("h", cpu_slots=3)
    assert host_capacity(rules, None, [], []).free_cpu_slots == 3
    assert host_capacity(rules, None, [Holding(()), Holding((0,))], []).free_cpu_slots == 2
    assert host_capacity(rules, None, [Holding(())] * 5, []).free_cpu_slots == 0
    assert host_capacity(HostRules("h"), None, [], []).free_cpu_slots == 0


def test_host_capacity_puts_it_together() -> None:
    rules = HostRules("h", cpu_slots=2, max_per_gpu=2, accepting=False)
    s = snap(G(0, used=5000), G(1), at=1000.0)
    cap = host_capacity(rules, s, [Holding((1,), 1000, started=1001.0), Holding(())], [])
    assert cap.host == "h"
    assert cap.free_gpus == (1,)
    assert cap.free_cpu_slots == 1
    assert cap.accepting is False
    assert cap.free_mib == ((0, TOTAL - 5000), (1, TOTAL - 1000))


def test_a_batch_host_counts_jobs_against_max_jobs_whatever_their_gpus() -> None:
    rules = HostRules("cluster", max_jobs=3)
    cap = host_capacity(rules, None, [Holding(()), Holding(())], [])  # queued or running: the same
    assert cap.job_slots == 1 and cap.free_gpus == () and cap.free_cpu_slots == 0
    assert host_capacity(rules, None, [Holding(())] * 5, []).job_slots == 0
    assert host_capacity(HostRules("gpu1", cpu_slots=2), None, [], []).job_slots is None
