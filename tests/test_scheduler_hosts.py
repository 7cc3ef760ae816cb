"""Host choice per study (`hosts` in [study]): the placement rule in hypd.scheduler, by
example and on random instances (Hypothesis). Pure: no daemon, no processes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.scheduler import (
    HostCapacity,
    HostChoice,
    StudyDemand,
    hosts_matching,
    label_list,
    no_host_note,
    place,
)


def test_a_study_by_name_goes_only_to_the_hosts_it_names() -> None:
    hosts = [HostCapacity("a", (), 8), HostCapacity("b", (), 8), HostCapacity("c", (), 8)]
    out = place(hosts, [StudyDemand("s", can_create=6, parallel=6, hosts=HostChoice(("b",)))])
    assert [p.host for p in out] == ["b"] * 6


def test_labels_must_all_be_carried() -> None:
    hosts = [HostCapacity("v100", (0, 1), labels=("v100",)),
             HostCapacity("a100", (0,), labels=("a100",)),
             HostCapacity("big", (0, 1, 2), labels=("80gb", "a100"))]
    demand = StudyDemand("s", can_create=4, parallel=4, gpus_per_run=1, hosts=HostChoice((), ("a100",)))
    assert sorted(p.host for p in place(hosts, [demand])) == ["a100", "big", "big", "big"]
    both = StudyDemand("s", can_create=4, parallel=4, gpus_per_run=1, hosts=HostChoice((), ("80gb", "a100")))
    assert {p.host for p in place(hosts, [both])} == {"big"}
    narrowed = StudyDemand("s", can_create=4, parallel=4, gpus_per_run=1, hosts=HostChoice(("a100",), ("a100",)))
    assert [p.host for p in place(hosts, [narrowed])] == ["a100"]


def test_a_study_whose_hosts_are_full_waits_and_others_still_get_theirs() -> None:
    hosts = [HostCapacity("a", (), 0), HostCapacity("b", (), 2)]
    pinned = StudyDemand("pinned", can_create=3, parallel=3, hosts=HostChoice(("a",)))
    free = StudyDemand("free", can_create=3, parallel=3)
    out = place(hosts, [pinned, free])
    assert [(p.study, p.host) for p in out] == [("free", "b"), ("free", "b")]


def test_no_host_note_says_what_there_is() -> None:
    hosts = {"local": (), "gpu1": ("v100",)}
    assert no_host_note(HostChoice(), hosts) == ""
    assert no_host_note(HostChoice(("gpu1",)), hosts) == ""
    assert no_host_note(HostChoice((), ("a100",)), hosts) == \
        'no host matches hosts = { labels = ["a100"] }: its runs wait (hosts: local, gpu1 [v100])'
    assert hosts_matching(HostChoice((), ("v100",)), hosts) == ["gpu1"]


def test_label_list() -> None:
    assert label_list(["b", "a", "b"]) == ("a", "b")
    assert label_list("a100") == ("a100",)
    assert label_list([]) == ()
    for bad in (["a b"], [""], [1], {"a": 1}, ["-x"], ["x\n"]):
        assert label_list(bad) is None


names = st.sampled_from(["h0", "h1", "h2", "h3"])
label = st.sampled_from(["a100", "v100", "80gb"])
host = st.builds(
    lambda name, gpus, cpu, labels, accepting: HostCapacity(name, tuple(gpus), cpu, accepting, labels=tuple(labels)),
    names, st.lists(st.integers(0, 3), max_size=6), st.integers(0, 4), st.lists(label, max_size=2), st.booleans())
choice = st.builds(lambda n, ls: HostChoice(tuple(sorted(set(n))), tuple(sorted(set(ls)))),
                   st.lists(names, max_size=2), st.lists(label, max_size=2))
demand = st.builds(
    lambda i, waiting, create, parallel, gpus, ch: StudyDemand(f"s{i}", tuple(waiting), create, 0, parallel, gpus,
                                                               hosts=ch),
    st.integers(0, 4), st.lists(st.integers(1, 1000), max_size=4, unique=True), st.integers(0, 6),
    st.integers(1, 6), st.integers(0, 2), choice)


@settings(max_examples=300, deadline=None)
@given(st.lists(host, max_size=4, unique_by=lambda h: h.host),
       st.lists(demand, max_size=4, unique_by=lambda d: d.study))
def test_no_run_is_ever_placed_outside_its_studys_choice(hosts: list[HostCapacity],
                                                          demands: list[StudyDemand]) -> None:
    by_name = {h.host: h for h in hosts}
    by_study = {d.study: d for d in demands}
    out = place(hosts, demands)
    for p in out:
        h = by_name[p.host]
        assert h.accepting
        assert by_study[p.study].hosts.allows(h.host, h.labels), (p, h)
    # A study that no accepting host suits gets nothing.
    for d in demands:
        if not d.hosts:
            continue
        suited = [h for h in hosts if h.accepting and d.hosts.allows(h.host, h.labels)]
        if not suited:
            assert all(p.study != d.study for p in out)
