"""The search worker process: the Suggester interface across a process boundary."""

from __future__ import annotations

import os
import signal

import pytest

from hypd.search import SearchError, load_suggester
from hypd.searchworker import RemoteSuggester, SearchWorker
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
