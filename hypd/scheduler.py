"""Placement of runs onto free GPUs and CPU slots. Pure: snapshots in, decisions out.

Fairness: every study gets up to its `parallel`; free slots go to the study with the
fewest runs per unit of `priority` (weighted fair share), ties to the one served least
recently, so a study with a high priority gets more slots but never all of them while
another study has work waiting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


def label_list(value: Any) -> tuple[str, ...] | None:
    """Host names or labels as written in a file (a list of short names), sorted and
    without repeats; None when `value` is not such a list."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and _LABEL_RE.match(v) for v in value):
        return None
    return tuple(sorted(set(value)))


@dataclass(frozen=True)
class HostChoice:
    """The hosts a study's runs may use (`hosts` in [study]): by name, by labels (a host
    must carry every label given), or both. Empty: any host. A run is never placed on a
    host the choice does not allow."""

    names: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    # Not in a study file: hosts hypd keeps the study's runs off (its prepare step failed there).
    excluded: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names or self.labels)

    def allows(self, host: str, labels: Iterable[str] = ()) -> bool:
        if host in self.excluded:
            return False
        if self.names and host not in self.names:
            return False
        return set(self.labels) <= set(labels)

    def describe(self) -> str:
        """As a study file writes it: `["gpu1", "gpu2"]`, `{ labels = ["a100"] }`."""
        quoted = ", ".join(f'"{n}"' for n in self.names)
        if not self.labels:
            return f"[{quoted}]" if self.names else "any host"
        parts = ([f"names = [{quoted}]"] if self.names else []) + \
            ["labels = [" + ", ".join(f'"{x}"' for x in self.labels) + "]"]
        return "{ " + ", ".join(parts) + " }"


def hosts_matching(choice: HostChoice, hosts: Mapping[str, Iterable[str]]) -> list[str]:
    """The hosts (name -> labels) a choice allows, in the given order."""
    return [name for name, labels in hosts.items() if choice.allows(name, labels)]


def no_host_note(choice: HostChoice, hosts: Mapping[str, Iterable[str]]) -> str:
    """'' when some host matches the choice; otherwise one line saying so and what there is,
    so a study never waits silently for a host that does not exist."""
    if not choice or hosts_matching(choice, hosts):
        return ""
    known = ", ".join(f"{n} [{', '.join(ls)}]" if (ls := sorted(labels)) else n
                      for n, labels in hosts.items()) or "none"
    return f"no host matches hosts = {choice.describe()}: its runs wait (hosts: {known})"


@dataclass(frozen=True)
class HostCapacity:
    """What one host can take right now."""

    host: str
    free_gpus: tuple[int, ...] = ()  # GPU indexes hypd may hand out now (an index repeats
    #                                  when a GPU may take several runs)
    free_cpu_slots: int = 0
    accepting: bool = True  # False while the host is down or draining
    free_mib: tuple[tuple[int, int], ...] = ()  # (GPU index, free memory in MiB), for runs
    #                                             that declare the memory they need
    labels: tuple[str, ...] = ()  # what a study's `hosts = { labels = [...] }` matches
    job_slots: int | None = None  # a batch host (Slurm): jobs it may still take, of any size;
    #                               it places them on GPUs hypd does not see


@dataclass(frozen=True)
class StudyDemand:
    """A study's work waiting to be placed."""

    study: str
    waiting: tuple[int, ...] = ()  # pending run ids, oldest first
    can_create: int = 0  # new trials the search may still propose now
    running: int = 0
    parallel: int = 1
    gpus_per_run: int = 0  # 0: a CPU slot
    priority: int = 1
    paused: bool = False
    last_served: float = 0.0  # when it last got a slot; older first on ties
    gpu_mem_mib: int = 0  # memory a run needs on each GPU; 0: memory is not considered
    hosts: HostChoice = HostChoice()  # where its runs may go (empty: anywhere)


@dataclass(frozen=True)
class Placement:
    study: str
    run_id: int | None  # None: a new trial, to be asked of the study's search
    host: str
    gpus: tuple[int, ...] = ()  # empty: a CPU slot


@dataclass
class _Host:
    name: str
    gpus: list[int]
    cpu: int
    order: int
    free_mib: dict[int, int] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    jobs: int | None = None  # HostCapacity.job_slots

    def usable(self, mem: int) -> list[int]:
        """Distinct GPUs with a slot left (and, when mem > 0, that much memory free)."""
        return [i for i in set(self.gpus) if not mem or self.free_mib.get(i, 0) >= mem]

    def fits(self, k: int, mem: int = 0) -> bool:
        if self.jobs is not None:
            return self.jobs > 0
        return len(self.usable(mem)) >= k if k else self.cpu > 0

    def take(self, k: int, mem: int = 0) -> tuple[int, ...]:
        if self.jobs is not None:
            self.jobs -= 1
            return ()  # its GPUs are the batch host's to choose
        if k == 0:
            self.cpu -= 1
            return ()
        # With a memory need, pack: the GPUs with the least memory that still fits, so
        # large free blocks stay whole. Otherwise the least-loaded GPUs, lowest index first.
        if mem:
            order = sorted(self.usable(mem), key=lambda i: (self.free_mib[i], i))
        else:
            order = sorted(set(self.gpus), key=lambda i: (-self.gpus.count(i), i))
        chosen = order[:k]
        for idx in chosen:
            self.gpus.remove(idx)
            if mem:
                self.free_mib[idx] -= mem
        return tuple(sorted(chosen))


@dataclass
class _Study:
    demand: StudyDemand
    waiting: list[int] = field(default_factory=list)
    create: int = 0
    placed: int = 0

    def load(self) -> float:
        return (self.demand.running + self.placed) / self.demand.priority

    def wants(self) -> bool:
        d = self.demand
        return (not d.paused and (bool(self.waiting) or self.create > 0)
                and d.running + self.placed < d.parallel)


def _best_host(hosts: list[_Host], k: int, mem: int = 0, choice: HostChoice = HostChoice()) -> _Host | None:
    fitting = [h for h in hosts if h.fits(k, mem) and choice.allows(h.name, h.labels)]
    if not fitting:
        return None
    # Hosts whose GPUs hypd sees first: a batch host's job may wait in its queue.
    if k == 0:
        # CPU work spreads: the host with the most free slots.
        return min(fitting, key=lambda h: (h.jobs is not None, -h.cpu, h.order))
    # GPU work packs: the host with the fewest free GPUs that still fit, so that large
    # free blocks stay whole for runs that need several GPUs.
    return min(fitting, key=lambda h: (h.jobs is not None, len(set(h.gpus)), h.order))


def place(hosts: list[HostCapacity], demands: list[StudyDemand]) -> list[Placement]:
    """Decide which waiting runs (or new trials) start where, now."""
    free = [_Host(h.host, list(h.free_gpus), h.free_cpu_slots, i, dict(h.free_mib), h.labels, h.job_slots)
            for i, h in enumerate(hosts) if h.accepting]
    studies = [_Study(d, list(d.waiting), d.can_create) for d in demands]
    out: list[Placement] = []
    while True:
        candidates = [s for s in studies if s.wants()]
        if not candidates:
            return out
        # Weighted fair share; then the study served least recently; then name, for a
        # deterministic order.
        candidates.sort(key=lambda s: (s.load(), s.demand.last_served, s.demand.study))
        for s in candidates:
            host = _best_host(free, s.demand.gpus_per_run, s.demand.gpu_mem_mib, s.demand.hosts)
            if host is None:
                s.create = 0  # nothing of this study fits anywhere it may go, this round
                s.waiting.clear()
                continue
            gpus = host.take(s.demand.gpus_per_run, s.demand.gpu_mem_mib)
            run_id = s.waiting.pop(0) if s.waiting else None
            if run_id is None:
                s.create -= 1
            s.placed += 1
            out.append(Placement(s.demand.study, run_id, host.name, gpus))
            break

