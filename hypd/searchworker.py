"""Adaptive searches (Ax) run in child processes, a small pool of them.

Fitting a Bayesian model is seconds of Python and PyTorch work; in a thread of the daemon
it would hold the GIL and slow every socket reply. In a process of its own it cannot, and
a search that crashes or leaks memory takes only that process down: the next call starts
a fresh one and reloads each of that process's studies from its last stored state.

Each adaptive study is served by a process of its own (`SearchPool`), so two studies'
fits run in parallel, up to `DEFAULT_WORKERS` processes; past that, a new study shares
the process serving the fewest studies. A process serves one call at a time, so calls
of one study never overlap (the daemon also makes them one at a time). Each process holds
Ax and torch once imported: about 0.55 GB (resident, after a fit), which is why the cap
is small.

`RemoteSuggester` has the `Suggester` interface; its methods block (the daemon calls them
in worker threads, as it calls every search method).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

from hypd.search import SearchError, Suggester, load_suggester
from hypd.study import StudySpec

log = logging.getLogger("hypd.search")

# Algorithms whose work is heavy enough to belong in the worker process.
REMOTE_ALGORITHMS = ("ax", "sobol")

# Search processes at most: one per adaptive study up to this, then studies share.
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Torch threads per search process. One: a fit at hypd's sizes (tens to hundreds of points)
# gains little from more, and on a busy machine torch's threads spin against each other
# and everything else. Two Ax asks (GP, 10 trials) on 2 busy cores (load 6): 7-10 s with
# 2 threads, 1.6-2.0 s with 1. Parallel fits come from the processes.
SEARCH_THREADS = 1


def _serve(conn: Connection, threads: int) -> None:
    """The worker's loop: (study, method, args) in, (ok, value) out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the daemon's to handle
    # Torch (imported with Ax, later) takes a thread per core by default (unless the user
    # set OMP_NUM_THREADS): see SEARCH_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    # BoTorch warns at length about optimizer restarts and jitter: routine for it, noise in
    # the daemon's log.
    warnings.simplefilter("ignore")
    suggesters: dict[str, Suggester] = {}
    while True:
        try:
            study, method, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if method == "__load__":
                spec, state = args
                suggesters[study] = load_suggester(spec, state)
                value: Any = None
            elif method == "__spec__":
                suggesters[study].spec = args[0]
                value = None
            else:
                value = getattr(suggesters[study], method)(*args)
            conn.send((True, value))
        except BaseException as exc:  # every failure goes back to the caller, as a value
            conn.send((False, (type(exc).__name__, str(exc) or repr(exc))))


class SearchWorker:
    """One child process, started on first use and again after it dies."""

    def __init__(self, threads: int = SEARCH_THREADS) -> None:
        self.lock = threading.Lock()
        self.studies: set[str] = set()  # those the pool assigned to it
        self.threads = threads  # torch's threads in the process
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.generation = 0  # bumped at each start: suggesters then reload

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a threaded asyncio process
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.threads), name="hypd-search",
                                   daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.generation += 1
        log.info("search worker started (pid %s)", self.process.pid)

    def call(self, study: str, method: str, args: tuple[Any, ...], reload: RemoteSuggester | None = None) -> Any:
        with self.lock:
            if self.process is None or not self.process.is_alive():
                if self.process is not None:
                    log.warning("search worker died (exit %s); starting a new one", self.process.exitcode)
                self._start()
            assert self.conn is not None
            if reload is not None and reload.generation != self.generation:
                self._roundtrip(study, "__load__", (reload.spec, reload.state))
                reload.generation = self.generation
            return self._roundtrip(study, method, args)

    def _roundtrip(self, study: str, method: str, args: tuple[Any, ...]) -> Any:
        assert self.conn is not None
        try:
            self.conn.send((study, method, args))
            ok, value = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.process = None
            raise SearchError(f"the search worker died during {method}: {exc or 'no reply'}") from None
        if ok:
            return value
        kind, message = value
        if kind == "SearchError":
            raise SearchError(message)
        raise RuntimeError(f"{kind}: {message}")

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
            if self.process is not None:
                self.process.join(5)
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join(5)
            self.process = self.conn = None


class SearchPool:
    """The search processes: a study is assigned one when its suggester opens (a process
    of its own while fewer than `size` exist, else the one serving fewest studies) and
    keeps it until `release`."""

    def __init__(self, size: int = DEFAULT_WORKERS) -> None:
        self.size = max(1, size)
        self.workers: list[SearchWorker] = []
        self.lock = threading.Lock()  # assignment happens in worker threads

    def assign(self, study: str) -> SearchWorker:
        with self.lock:
            for worker in self.workers:
                if study in worker.studies:
                    return worker
            if len(self.workers) < self.size:
                self.workers.append(SearchWorker())
            # The least loaded; an idle one first (a new one is idle).
            worker = min(self.workers, key=lambda w: len(w.studies))
            worker.studies.add(study)
            return worker

    def release(self, study: str) -> None:
        """The study no longer counts in its process's load. (Its suggester stays in the
        process, unused, until the process restarts: dropping it would wait for the
        process's current call; a study opened again under the name is loaded afresh.)"""
        with self.lock:
            for worker in self.workers:
                worker.studies.discard(study)

    def close(self) -> None:
        with self.lock:
            workers, self.workers = self.workers, []
        for worker in workers:
            worker.close()


class RemoteSuggester(Suggester):
    """A study's suggester living in the worker process."""

    adaptive = True

    def __init__(self, spec: StudySpec, state: str | None, worker: SearchWorker) -> None:
        super().__init__(spec)
        self.worker = worker
        self.state = state  # the last dump, to reload from if the worker restarts
        self.generation = -1
        self._call("dump")  # load it now: a bad state or space fails at submit, not later

    def _call(self, method: str, *args: Any) -> Any:
        value = self.worker.call(self.spec.name, method, args, reload=self)
        if method == "dump":
            self.state = value
        return value

    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        return [(int(t), dict(p)) for t, p in self._call("ask", n)]

    def attach(self, params: Mapping[str, Any]) -> int:
        return int(self._call("attach", dict(params)))

    def report(self, trial: int, step: int, values: Mapping[str, float]) -> None:
        self._call("report", trial, step, dict(values))

    def complete(self, trial: int, values: Mapping[str, float], sems: Mapping[str, float] | None = None) -> None:
        self._call("complete", trial, dict(values), dict(sems or {}))

    def fail(self, trial: int) -> None:
        self._call("fail", trial)

    def abandon(self, trial: int) -> None:
        self._call("abandon", trial)

    def withdraw(self, trial: int) -> None:
        self._call("withdraw", trial)

    def early_stop(self, running: list[int]) -> list[int]:
        return list(self._call("early_stop", list(running)))

    def stopped(self, trial: int) -> None:
        self._call("stopped", trial)

    def best(self) -> dict[str, Any] | None:
        return self._call("best")

    def dump(self) -> str:
        return self._call("dump")

    def update_spec(self, spec: StudySpec) -> None:
        super().update_spec(spec)
        self._call("__spec__", spec)

    def _restore(self, state: Mapping[str, Any]) -> None:  # pragma: no cover - loaded in the worker
        raise NotImplementedError


def open_suggester(spec: StudySpec, state: str | None, pool: SearchPool) -> Suggester:
    """The study's search: adaptive ones in a search process, the others in place."""
    if spec.algorithm in REMOTE_ALGORITHMS:
        worker = pool.assign(spec.name)
        try:
            return RemoteSuggester(spec, state, worker)
        except BaseException:
            pool.release(spec.name)
            raise
    return load_suggester(spec, state)
