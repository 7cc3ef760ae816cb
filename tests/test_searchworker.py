"""The search worker process: the Suggester interface across a process boundary."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from hypd.search import SearchError, load_suggester
from hypd.searchworker import RemoteSuggester, SearchPool, SearchWorker
from hypd.study import parse_study

RANDOM = """
[study]
name = "w"
objective = { metric = "loss" }
algorithm = "random"
max_trials = 6
seed = 3
[params]
x = { type = "float", low = 0.0, high = 1.0 }
n = { type = "int", low = 1, high = 4 }
[run]
command = "true {x} {n}"
"""


@pytest.fixture
def worker():
    w = SearchWorker()
    yield w
    w.close()


def test_remote_suggester_behaves_as_the_local_one(worker: SearchWorker) -> None:
    spec = parse_study(RANDOM)
    remote = RemoteSuggester(spec, None, worker)
    local = load_suggester(spec, None)
    assert remote.ask(4) == local.ask(4)
    assert remote.attach({"x": 0.5, "n": 2}) == local.attach({"x": 0.5, "n": 2}) == 4
    assert remote.ask(10) == local.ask(10)  # the budget of 6 is spent
    remote.complete(0, {"loss": 1.0})
    assert remote.dump() == local.dump()


def test_errors_come_back_as_exceptions(worker: SearchWorker) -> None:
    remote = RemoteSuggester(parse_study(RANDOM), None, worker)
    with pytest.raises(SearchError, match="outside"):
        remote.attach({"x": 7.0, "n": 2})
    assert remote.ask(1)  # the worker carries on


def test_a_dead_worker_is_restarted_and_studies_reload_their_state(worker: SearchWorker) -> None:
    spec = parse_study(RANDOM)
    remote = RemoteSuggester(spec, None, worker)
    first = remote.ask(2)
    remote.dump()  # the daemon stores the state after each change
    assert worker.process is not None and worker.process.pid is not None
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.join(5)
    # The next call starts a new worker, which reloads the study from its last dump.
    after = remote.ask(2)
    assert [t for t, _ in after] == [2, 3]
    assert after == load_suggester(spec, None).ask(4)[2:]
    assert first != after


AX = """
[study]
name = "{name}"
objective = {{ metric = "loss" }}
algorithm = "ax"
max_trials = 40
seed = 5
[params]
x = {{ type = "float", low = 0.0, high = 1.0 }}
y = {{ type = "float", low = 0.0, high = 1.0 }}
z = {{ type = "float", low = 0.0, high = 1.0 }}
[run]
command = "true"
"""

# Ax, BoTorch and pandas warn about their own internals in the worker; nothing here.
ax_warnings = pytest.mark.filterwarnings(
    r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")


def fitted_study(name: str, pool: SearchPool) -> RemoteSuggester:
    """An Ax study past its Sobol points: each ask fits a GP."""
    remote = RemoteSuggester(parse_study(AX.format(name=name)), None, pool.assign(name))
    for trial, params in remote.ask(10):
        remote.complete(trial, {"loss": (params["x"] - 0.3) ** 2 + params["y"] * params["z"]})
    remote.dump()
    return remote


@pytest.fixture(scope="module")
def two_studies():
    """Two fitted Ax studies in a pool of two processes (shared: each process imports Ax)."""
    pool = SearchPool(2)
    yield fitted_study("a", pool), fitted_study("b", pool)
    pool.close()


def timed_ask(remote: RemoteSuggester, out: dict[str, tuple[float, float]]) -> None:
    start = time.monotonic()
    remote.ask(1)
    out[remote.spec.name] = (start, time.monotonic())


@ax_warnings
@pytest.mark.slow
def test_two_ax_studies_fit_in_parallel_in_processes_of_their_own(two_studies) -> None:
    a, b = two_studies
    assert a.worker is not b.worker
    assert a.worker.process is not None and b.worker.process is not None
    assert a.worker.process.pid != b.worker.process.pid
    alone: dict[str, tuple[float, float]] = {}
    timed_ask(a, alone)
    timed_ask(b, alone)
    together: dict[str, tuple[float, float]] = {}
    threads = [threading.Thread(target=timed_ask, args=(s, together)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = together["a"], together["b"]
    assert a0 < b1 and b0 < a1  # the two fits ran at the same time (one process would serialise them)
    sum_alone = sum(end - start for start, end in alone.values())
    print(f"two asks alone: {sum_alone:.2f}s in all; together: {max(a1, b1) - min(a0, b0):.2f}s")


@ax_warnings
@pytest.mark.slow
def test_a_killed_search_process_reloads_only_its_own_studies(two_studies) -> None:
    a, b = two_studies
    last = a.attach({"x": 0.5, "y": 0.5, "z": 0.5})
    a.dump()  # the daemon stores the state after each change
    assert a.worker.process is not None and a.worker.process.pid is not None
    os.kill(a.worker.process.pid, signal.SIGKILL)
    a.worker.process.join(5)
    b_generation = b.generation
    b.attach({"x": 0.1, "y": 0.1, "z": 0.1})
    assert b.generation == b_generation  # b's process lived on: nothing reloaded
    a_generation = a.generation
    assert a.attach({"x": 0.6, "y": 0.5, "z": 0.5}) == last + 1  # a reloaded from its last dump
    assert a.generation == a_generation + 1


def test_studies_past_the_cap_share_the_least_loaded_process() -> None:
    pool = SearchPool(2)
    try:
        workers = [pool.assign(name) for name in ("a", "b", "c", "d", "a")]
        assert workers[0] is not workers[1]
        assert {id(w) for w in workers} == {id(workers[0]), id(workers[1])}
        assert workers[4] is workers[0]  # a study keeps its process
        assert sorted(len(w.studies) for w in pool.workers) == [2, 2]
        pool.release("a")
        pool.release("c")
        assert pool.assign("e") is workers[0]  # now the least loaded
    finally:
        pool.close()
