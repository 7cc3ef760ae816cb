"""hypd.scheduler.place: fair share, caps, packing and spreading, and the invariants on
random instances. Pure: no daemon, no processes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hypd.scheduler import HostCapacity, Placement, StudyDemand, place


def H(name: str, gpus: tuple[int, ...] = (), cpu: int = 0, accepting: bool = True) -> HostCapacity:
    return HostCapacity(name, tuple(gpus), cpu, accepting)


def S(name: str, **kw: object) -> StudyDemand:
    return StudyDemand(name, **kw)  # type: ignore[arg-type]


def per_study(out: list[Placement]) -> Counter[str]:
    return Counter(p.study for p in out)


# ------------------------------------------------------------------ basics

def test_nothing_to_do() -> None:
    assert place([], []) == []
    assert place([H("a", cpu=4)], []) == []
    assert place([], [S("s", can_create=3, parallel=3)]) == []
    assert place([H("a", cpu=4)], [S("s", parallel=3)]) == []  # no work


def test_waiting_runs_go_first_oldest_first_then_new_trials() -> None:
    out = place([H("a", cpu=10)], [S("s", waiting=(7, 3, 9), can_create=5, parallel=5)])
    assert [p.run_id for p in out] == [7, 3, 9, None, None]
    assert all(p.host == "a" and p.gpus == () for p in out)


def test_new_trials_limited_by_can_create() -> None:
    out = place([H("a", cpu=10)], [S("s", can_create=2, parallel=8)])
    assert [p.run_id for p in out] == [None, None]


@pytest.mark.parametrize("running, parallel, expected", [
    (0, 1, 1), (0, 3, 3), (2, 3, 1), (3, 3, 0), (5, 3, 0), (0, 10, 4),  # 4: the host's slots
])
def test_parallel_cap_counts_running(running: int, parallel: int, expected: int) -> None:
    out = place([H("a", cpu=4)], [S("s", waiting=(1, 2), can_create=10, running=running, parallel=parallel)])
    assert len(out) == expected


def test_paused_study_gets_nothing_and_others_get_everything() -> None:
    out = place([H("a", cpu=3)], [S("p", can_create=9, parallel=9, paused=True, priority=100),
                                  S("q", can_create=9, parallel=9)])
    assert per_study(out) == {"q": 3}
    assert place([H("a", cpu=3)], [S("p", waiting=(1,), parallel=9, paused=True)]) == []


def test_hosts_not_accepting_get_nothing() -> None:
    hosts = [H("down", gpus=(0, 1, 2, 3), cpu=8, accepting=False), H("up", gpus=(0,), cpu=1)]
    out = place(hosts, [S("g", can_create=9, parallel=9, gpus_per_run=1),
                        S("c", can_create=9, parallel=9)])
    assert {p.host for p in out} == {"up"}
    assert sorted((p.study, p.gpus) for p in out) == [("c", ()), ("g", (0,))]
    assert place([H("down", cpu=8, accepting=False)], [S("c", can_create=9, parallel=9)]) == []


# ------------------------------------------------------------------ CPU spreads, GPU packs

def test_cpu_runs_spread_to_the_host_with_most_free_slots() -> None:
    out = place([H("a", cpu=1), H("b", cpu=3), H("c", cpu=2)], [S("s", can_create=3, parallel=3)])
    # b(3) -> b(2) ties c(2): host order -> b; then c(2) is the most.
    assert [p.host for p in out] == ["b", "b", "c"]


def test_cpu_spread_fills_evenly() -> None:
    out = place([H("a", cpu=4), H("b", cpu=4)], [S("s", can_create=4, parallel=4)])
    assert Counter(p.host for p in out) == {"a": 2, "b": 2}


def test_cpu_runs_ignore_gpus_and_gpu_runs_ignore_cpu_slots() -> None:
    assert place([H("g", gpus=(0, 1), cpu=0)], [S("c", can_create=1, parallel=1)]) == []
    out = place([H("g", gpus=(0,), cpu=0)], [S("g", can_create=1, parallel=1, gpus_per_run=1)])
    assert out == [Placement("g", None, "g", (0,))]


def test_gpu_runs_pack_onto_the_host_with_fewest_free_gpus_that_fit() -> None:
    hosts = [H("big", gpus=(0, 1, 2, 3)), H("small", gpus=(0, 1))]
    out = place(hosts, [S("s", can_create=3, parallel=3, gpus_per_run=1)])
    assert [(p.host, p.gpus) for p in out] == [("small", (0,)), ("small", (1,)), ("big", (0,))]


def test_gpu_packing_keeps_large_blocks_whole_for_multi_gpu_runs() -> None:
    hosts = [H("big", gpus=(0, 1, 2, 3)), H("small", gpus=(4, 5))]
    out = place(hosts, [S("one", can_create=2, parallel=2, gpus_per_run=1),
                        S("four", can_create=1, parallel=1, gpus_per_run=4)])
    assert sorted((p.study, p.host, p.gpus) for p in out) == [
        ("four", "big", (0, 1, 2, 3)), ("one", "small", (4,)), ("one", "small", (5,))]


def test_best_fit_skips_hosts_too_small() -> None:
    hosts = [H("one", gpus=(0,)), H("three", gpus=(0, 1, 2)), H("two", gpus=(5, 7))]
    out = place(hosts, [S("s", can_create=1, parallel=1, gpus_per_run=2)])
    assert out == [Placement("s", None, "two", (5, 7))]


def test_equal_fit_goes_to_the_first_host() -> None:
    out = place([H("x", gpus=(0, 1)), H("y", gpus=(0, 1))], [S("s", can_create=1, parallel=1, gpus_per_run=1)])
    assert out == [Placement("s", None, "x", (0,))]


def test_multi_gpu_runs_take_distinct_gpus_on_one_host() -> None:
    hosts = [H("a", gpus=(0, 1)), H("b", gpus=(2, 3))]  # 4 GPUs, but no host has 3
    assert place(hosts, [S("s", can_create=1, parallel=1, gpus_per_run=3)]) == []
    out = place(hosts, [S("s", can_create=2, parallel=2, gpus_per_run=2)])
    assert sorted((p.host, p.gpus) for p in out) == [("a", (0, 1)), ("b", (2, 3))]


def test_repeated_gpu_index_takes_several_runs() -> None:
    out = place([H("a", gpus=(0, 0, 0))], [S("s", can_create=5, parallel=5, gpus_per_run=1)])
    assert [p.gpus for p in out] == [(0,), (0,), (0,)]


def test_repeated_gpu_index_never_twice_in_one_run() -> None:
    assert place([H("a", gpus=(0, 0))], [S("s", can_create=1, parallel=1, gpus_per_run=2)]) == []
    out = place([H("a", gpus=(0, 0, 1, 1))], [S("s", can_create=3, parallel=3, gpus_per_run=2)])
    assert [p.gpus for p in out] == [(0, 1), (0, 1)]


def test_shared_gpu_least_loaded_first() -> None:
    # GPU 1 has two slots left, GPU 0 one: a single-GPU run goes to 1 first.
    out = place([H("a", gpus=(0, 1, 1))], [S("s", can_create=3, parallel=3, gpus_per_run=1)])
    assert [p.gpus for p in out] == [(1,), (0,), (1,)]


def test_study_that_fits_nowhere_does_not_block_others() -> None:
    hosts = [H("a", gpus=(0, 1), cpu=1)]
    demands = [S("huge", waiting=(1, 2), can_create=5, parallel=5, gpus_per_run=8, priority=10),
               S("small", can_create=5, parallel=5, gpus_per_run=1),
               S("cpu", can_create=5, parallel=5)]
    out = place(hosts, demands)
    assert per_study(out) == {"small": 2, "cpu": 1}


# ------------------------------------------------------------------ fair share

def test_equal_priority_alternates() -> None:
    out = place([H("a", cpu=6)], [S("x", can_create=9, parallel=9), S("y", can_create=9, parallel=9)])
    assert [p.study for p in out] == ["x", "y"] * 3


def test_running_counts_towards_share() -> None:
    out = place([H("a", cpu=4)], [S("x", can_create=9, parallel=9, running=3),
                                  S("y", can_create=9, parallel=9, running=1)])
    assert per_study(out) == {"x": 1, "y": 3}


def test_ties_go_to_the_study_served_least_recently_then_by_name() -> None:
    out = place([H("a", cpu=1)], [S("a", can_create=1, last_served=20.0), S("b", can_create=1, last_served=10.0)])
    assert [p.study for p in out] == ["b"]
    out = place([H("a", cpu=1)], [S("b", can_create=1, last_served=5.0), S("a", can_create=1, last_served=5.0)])
    assert [p.study for p in out] == ["a"]


def test_load_beats_last_served() -> None:
    out = place([H("a", cpu=1)], [S("a", can_create=1, parallel=3, running=1, last_served=0.0),
                                  S("b", can_create=1, parallel=3, running=0, last_served=99.0)])
    assert [p.study for p in out] == ["b"]


@pytest.mark.parametrize("slots, high, low", [(1, 1, 0), (2, 1, 1), (3, 2, 1), (4, 3, 1), (6, 4, 2), (9, 6, 3), (30, 20, 10)])
def test_priority_two_to_one(slots: int, high: int, low: int) -> None:
    out = place([H("a", cpu=slots)], [S("hi", can_create=99, parallel=99, priority=2),
                                      S("lo", can_create=99, parallel=99, priority=1)])
    assert per_study(out) == Counter({"hi": high, "lo": low})


def test_high_priority_cannot_exceed_its_parallel() -> None:
    out = place([H("a", cpu=10)], [S("hi", can_create=99, parallel=3, priority=100),
                                   S("lo", can_create=99, parallel=99)])
    assert per_study(out) == {"hi": 3, "lo": 7}


def test_gpu_and_cpu_studies_do_not_compete() -> None:
    out = place([H("a", gpus=(0, 1), cpu=2)], [S("g", can_create=9, parallel=9, gpus_per_run=1, priority=5),
                                               S("c", can_create=9, parallel=9)])
    assert per_study(out) == {"g": 2, "c": 2}


def test_inputs_are_not_mutated() -> None:
    hosts = [H("a", gpus=(0, 1), cpu=2)]
    demands = [S("s", waiting=(1, 2), can_create=3, parallel=9, gpus_per_run=1)]
    before = (list(hosts), list(demands))
    place(hosts, demands)
    assert (hosts, demands) == before


# ------------------------------------------------------------------ invariants on random instances

def _random_instance(rng: random.Random) -> tuple[list[HostCapacity], list[StudyDemand]]:
    hosts = []
    for i in range(rng.randint(0, 4)):
        gpus = [g for g in range(rng.randint(0, 8)) if rng.random() < 0.7]
        gpus += [rng.choice(gpus) for _ in range(rng.randint(0, 3))] if gpus and rng.random() < 0.3 else []
        rng.shuffle(gpus)
        hosts.append(H(f"h{i}", tuple(gpus), rng.randint(0, 6), rng.random() < 0.85))
    demands = []
    for i in range(rng.randint(0, 5)):
        waiting = tuple(rng.sample(range(1000 * i, 1000 * i + 100), rng.randint(0, 5)))
        demands.append(S(f"s{i}", waiting=waiting, can_create=rng.randint(0, 6), running=rng.randint(0, 4),
                         parallel=rng.randint(1, 8), gpus_per_run=rng.choice([0, 0, 1, 1, 2, 4]),
                         priority=rng.choice([1, 1, 2, 3]), paused=rng.random() < 0.15,
                         last_served=float(rng.randint(0, 3))))
    return hosts, demands


def _fits_somewhere(left: dict[str, tuple[Counter[int], int]], k: int) -> bool:
    return any((len(+gpus) >= k) if k else cpu > 0 for gpus, cpu in left.values())


def check_invariants(hosts: list[HostCapacity], demands: list[StudyDemand], out: list[Placement]) -> None:
    by_name = {d.study: d for d in demands}
    left = {h.host: (Counter(h.free_gpus), h.free_cpu_slots) for h in hosts if h.accepting}
    for p in out:
        d = by_name[p.study]
        assert not d.paused, p
        assert p.host in left, f"{p} on a host not accepting"
        gpus, cpu = left[p.host]
        assert len(p.gpus) == d.gpus_per_run, p
        assert len(set(p.gpus)) == len(p.gpus), f"{p}: a GPU twice in one run"
        assert list(p.gpus) == sorted(p.gpus)
        if d.gpus_per_run == 0:
            assert cpu > 0, f"{p}: CPU slots over-allocated"
            left[p.host] = (gpus, cpu - 1)
        else:
            for g in p.gpus:
                assert gpus[g] > 0, f"{p}: GPU {g} over-allocated"
                gpus[g] -= 1
    placed = per_study(out)
    for d in demands:
        mine = [p for p in out if p.study == d.study]
        assert d.running + len(mine) <= max(d.parallel, d.running), d
        if mine:
            assert d.running + len(mine) <= d.parallel
        ids = [p.run_id for p in mine]
        n_wait = sum(1 for r in ids if r is not None)
        assert ids[:n_wait] == list(d.waiting[:n_wait]), "waiting runs first, oldest first"
        assert all(r is None for r in ids[n_wait:])
        assert len(ids) - n_wait <= d.can_create
        if len(ids) - n_wait:
            assert n_wait == len(d.waiting), "a new trial while a run was waiting"
        # Work-conserving: a study with room and work left has nothing that fits anywhere.
        work_left = len(d.waiting) + d.can_create - placed[d.study] > 0
        room = d.running + placed[d.study] < d.parallel
        if not d.paused and work_left and room:
            assert not _fits_somewhere(left, d.gpus_per_run), f"{d.study} left idle with room and work"


@pytest.mark.parametrize("seed", range(400))
def test_invariants_on_random_instances(seed: int) -> None:
    rng = random.Random(seed)
    hosts, demands = _random_instance(rng)
    out = place(hosts, demands)
    check_invariants(hosts, demands, out)
    assert place(hosts, demands) == out  # deterministic


@pytest.mark.parametrize("seed", range(100))
def test_equal_priorities_split_within_one(seed: int) -> None:
    rng = random.Random(seed)
    k = rng.choice([0, 1, 2])
    hosts = [H(f"h{i}", tuple(range(rng.randint(0, 8))), rng.randint(0, 8)) for i in range(rng.randint(1, 4))]
    work = 100
    demands = [S("x", can_create=work, parallel=work, gpus_per_run=k, last_served=rng.random()),
               S("y", waiting=tuple(range(work)), parallel=work, gpus_per_run=k, last_served=rng.random())]
    out = place(hosts, demands)
    check_invariants(hosts, demands, out)
    n = per_study(out)
    assert abs(n["x"] - n["y"]) <= 1, n


@pytest.mark.parametrize("seed", range(100))
def test_priority_two_to_one_on_random_capacity(seed: int) -> None:
    rng = random.Random(seed)
    slots = rng.randint(1, 40)
    hosts = [H("a", cpu=slots // 2), H("b", cpu=slots - slots // 2)]
    demands = [S(rng.choice(["hi", "zz"]), can_create=99, parallel=99, priority=2, last_served=rng.random()),
               S("lo", can_create=99, parallel=99, priority=1, last_served=rng.random())]
    hi = demands[0].study
    out = place(hosts, demands)
    check_invariants(hosts, demands, out)
    n = per_study(out)
    assert n[hi] + n["lo"] == slots
    assert abs(n[hi] - 2 * slots / 3) <= 1, n
    if slots >= 2:
        assert n["lo"] >= 1, n


# ------------------------------------------------------------------ GPU memory

def test_runs_that_declare_memory_share_a_gpu_while_it_has_room() -> None:
    host = HostCapacity("h", free_gpus=(0, 0, 0, 0), free_mib=((0, 40000),))
    demand = StudyDemand("s", can_create=4, parallel=4, gpus_per_run=1, gpu_mem_mib=15000)
    placed = place([host], [demand])
    assert [p.gpus for p in placed] == [(0,), (0,)]  # 15 + 15 fit in 40; a third would not


def test_memory_need_packs_onto_the_fullest_gpu_that_fits() -> None:
    host = HostCapacity("h", free_gpus=(0, 0, 1, 1), free_mib=((0, 30000), (1, 12000)))
    placed = place([host], [StudyDemand("s", can_create=1, parallel=1, gpus_per_run=1, gpu_mem_mib=10000)])
    assert placed[0].gpus == (1,)  # GPU 0's larger block stays whole


def test_a_memory_need_no_gpu_meets_places_nothing_and_blocks_no_one() -> None:
    host = HostCapacity("h", free_gpus=(0,), free_cpu_slots=1, free_mib=((0, 8000),))
    big = StudyDemand("big", can_create=1, parallel=1, gpus_per_run=1, gpu_mem_mib=20000)
    cpu = StudyDemand("cpu", can_create=1, parallel=1)
    assert [p.study for p in place([host], [big, cpu])] == ["cpu"]


def test_a_batch_host_takes_jobs_up_to_its_slots_without_choosing_gpus() -> None:
    cluster = HostCapacity("cluster", job_slots=3)
    out = place([cluster], [S("a", can_create=10, parallel=10, gpus_per_run=2)])
    assert [(p.host, p.gpus) for p in out] == [("cluster", ())] * 3


def test_a_batch_hosts_jobs_count_against_parallel_and_hosts_hypd_sees_come_first() -> None:
    out = place([HostCapacity("cluster", job_slots=50), H("gpu1", gpus=(0,))],
                [S("a", can_create=10, parallel=4, running=1, gpus_per_run=1)])
    assert len(out) == 3 and out[0].host == "gpu1" and [p.host for p in out[1:]] == ["cluster", "cluster"]
    cpu = place([HostCapacity("cluster", job_slots=5), H("box", cpu=1)], [S("c", can_create=3, parallel=3)])
    assert [p.host for p in cpu] == ["box", "cluster", "cluster"]
