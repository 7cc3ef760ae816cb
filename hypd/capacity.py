"""What a host can take now: free GPU slots, free GPU memory, free CPU slots. Pure.

Inputs are snapshots: the host's latest GPU reading, the runs hypd has there now
(`Holding`), and the runs whose processes were confirmed gone after that reading was
taken (`Released`). A released GPU goes to the next run at once: the reading still shows
the memory of the run that just ended, but that run was ours and is gone (its processes,
and so its compute apps, were confirmed ended), so the reading is read as it would have
been without it. A newer reading makes the released entries moot.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypd.gpus import GpuSnapshot, busy_with_others
from hypd.scheduler import HostCapacity

RESERVE_GRACE = 30.0  # seconds a new run's declared GPU memory is counted on top of the readings


@dataclass(frozen=True)
class HostRules:
    name: str
    accepting: bool = True
    cpu_slots: int = 0
    max_per_gpu: int = 1
    allowed_gpus: tuple[int, ...] | None = None
    busy_memory_mib: int = 1024
    busy_utilization: int = 30
    labels: tuple[str, ...] = ()
    max_jobs: int | None = None  # a batch host (Slurm): its jobs at once, queued ones included;
    #                              it gives each job its GPUs itself


@dataclass(frozen=True)
class Holding:
    """A run of ours on the host: its GPUs (none: a CPU slot)."""

    gpus: tuple[int, ...] = ()
    gpu_mem_mib: int = 0
    started: float = 0.0


@dataclass(frozen=True)
class Released:
    """A GPU whose run's processes were confirmed gone at `at`."""

    gpu: int
    at: float
    gpu_mem_mib: int = 0
    started: float = 0.0


def host_capacity(rules: HostRules, snapshot: GpuSnapshot | None, holding: list[Holding],
                  released: list[Released]) -> HostCapacity:
    if rules.max_jobs is not None:  # every run there is a job, whatever GPUs it asks for
        return HostCapacity(rules.name, accepting=rules.accepting, labels=rules.labels,
                            job_slots=max(0, rules.max_jobs - len(holding)))
    cpu_used = sum(1 for h in holding if not h.gpus)
    return HostCapacity(rules.name, free_gpu_slots(rules, snapshot, holding, released),
                        max(0, rules.cpu_slots - cpu_used), rules.accepting,
                        free_gpu_memory(snapshot, holding, released), rules.labels)


def _released_since(snapshot: GpuSnapshot, released: list[Released]) -> list[Released]:
    return [r for r in released if r.at >= snapshot.taken_at]


def free_gpu_slots(rules: HostRules, snapshot: GpuSnapshot | None, holding: list[Holding],
                   released: list[Released]) -> tuple[int, ...]:
    """The GPU indexes runs may be given now, each repeated once per run it can still
    take: not busy with someone else's work, within the allowed GPUs and runs per GPU."""
    if snapshot is None or not snapshot.gpus:
        return ()
    held = Counter(g for h in holding for g in h.gpus)
    # Whose load the reading shows: the runs there now, and those gone since it was taken.
    ours = set(held) | {r.gpu for r in _released_since(snapshot, released)}
    slots: list[int] = []
    for reading in snapshot.gpus:
        index = reading.index
        if rules.allowed_gpus is not None and index not in rules.allowed_gpus:
            continue
        if index not in ours and busy_with_others(reading, ours=(), memory_threshold_mib=rules.busy_memory_mib,
                                                  utilization_threshold_pct=rules.busy_utilization):
            continue
        room = rules.max_per_gpu - held[index]
        slots += [index] * max(0, room)
    return tuple(slots)


def free_gpu_memory(snapshot: GpuSnapshot | None, holding: list[Holding], released: list[Released]
                    ) -> tuple[tuple[int, int], ...]:
    """Free memory of each GPU: what the reading shows free, less what runs launched
    since (or just before) it will take, plus what runs gone since it gave back — so two
    launches in the same second do not both take the last 20 GiB."""
    if snapshot is None:
        return ()
    change: Counter[int] = Counter()
    for h in holding:
        if h.started > snapshot.taken_at - RESERVE_GRACE:
            for g in h.gpus:
                change[g] -= h.gpu_mem_mib
    for r in _released_since(snapshot, released):
        if r.started <= snapshot.taken_at - RESERVE_GRACE:  # the reading shows its memory
            change[r.gpu] += r.gpu_mem_mib
    return tuple((g.index, g.memory_total_mib - g.memory_used_mib + change[g.index]) for g in snapshot.gpus)
