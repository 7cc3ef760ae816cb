"""The daemon: one asyncio process that owns the store, the hosts and the socket.

Its parts run in one TaskGroup: the host registry (one task per host, each keeping its
connection and watcher), the run shell (the lifecycle core's events and actions,
hypd/runs.py), the dispatcher (placement and launches, hypd/dispatch.py), the socket
server and the periodic chores (search states, early stopping). SIGTERM/SIGINT or
`hypd stop` set `shutdown`; the group is then cancelled and the store closed and the
socket removed in `finally`, also on a second Ctrl-C. Runs go on unless asked to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypd import __version__, ipc
from hypd import lifecycle as lc
from hypd.artifacts import Fetcher
from hypd.budget import StudyBudget
from hypd.config import Config, load_config
from hypd.dispatch import Dispatcher
from hypd.hosts import GpusRead
from hypd.ops import Ops
from hypd.private import UnsafePath, private_dir, private_files
from hypd.registry import Registry
from hypd.runops import RunOps
from hypd.runs import Runs
from hypd.runstate import StopIntent
from hypd.server import EventBus, Refusal, Server
from hypd.store import Store, StoreError, StoreUnavailable
from hypd.storecheck import DamagedStore
from hypd.studies import SEARCH_FLUSH_EVERY, Studies

log = logging.getLogger("hypd.daemon")

EARLY_STOP_EVERY = 2.0  # seconds between early-stopping checks of a study
# While studies load at start, these ops answer at once (a study still loading is shown
# as such); the others wait until the daemon has started, up to START_WAIT seconds.
SERVED_WHILE_STARTING = frozenset({"ping", "ls", "studies", "hosts", "stop"})
ABOUT_STUDIES = frozenset({"ls", "studies"})  # of those, the ones that wait until the studies are listed
START_WAIT = 20.0
LOG_EVENT_SIZE = 256 << 10  # characters of log text in one "log" event (a longer line goes whole)


class AlreadyRunning(RuntimeError):
    pass


class Daemon:
    def __init__(self, home: Path, config: Config | None = None, *, start_wait: float = START_WAIT) -> None:
        self.home = home
        self.start_wait = start_wait  # how long an op waits for the start before it is refused
        self.starting = "opening the store"  # what the start is doing now, for that refusal
        self.config = config or load_config(home)
        self.bus = EventBus()
        self.shutdown = asyncio.Event()
        self.started = asyncio.Event()  # studies loaded, runs adopted: every op is served
        self.socket_path = ipc.socket_path(home)
        self.lock_file: Any = None
        self.store: Store | None = None

    # ------------------------------------------------------------ lifecycle

    def _lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = open(self.home / "daemon.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise AlreadyRunning(f"a hypd daemon (pid {pid}) already runs for {self.home}") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.lock_file = f

    async def run(self, *, handle_signals: bool = True, ready: Callable[[], None] | None = None) -> None:
        """Serve until `shutdown` is set (SIGTERM, SIGINT, `hypd stop`)."""
        self._lock()
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        signals = 0

        def on_signal(sig: int) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("%s: shutting down (runs keep going)", signal.Signals(sig).name)
                self.shutdown.set()
            elif main is not None:
                log.warning("second %s: stopping at once", signal.Signals(sig).name)
                main.cancel()  # the finally below still closes the store and removes the socket

        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
        server: Server | None = None
        studies: Studies | None = None
        try:
            self.store = store = await Store.open(self.home / "hypd.db")
            if store.lost:
                log.warning("%s", store.lost)
            studies = Studies(store)
            self.runs = Runs(store, studies, lambda: self.registry.all(), self._publish_run, self._publish_study,
                             self._publish_log, lambda: self.dispatcher.wake())
            self.registry = Registry(self.home, self.config, self._on_host_event, self._host_summary,
                                     self._host_runs, lambda: self.dispatcher.wake())
            self.dispatcher = Dispatcher(store, studies, self.runs, self.registry.all, self.home)
            self.ops = Ops(self.home, store, studies, self.runs, self.dispatcher.wake, self._publish_run,
                           self._publish_study, self._max_gpus,
                           lambda: sorted(n for n, h in self.registry.all().items() if h.in_inventory),
                           self._host_labels)
            self.run_ops = RunOps(self.ops)
            self.budget = StudyBudget(self.ops)
            self.fetcher = Fetcher(store, studies, self.registry.all, self.home, self.ops._run)
            self.runs.released_run = self.fetcher.after_release
            self.studies = studies
            server = Server(self.socket_path, self.home, self.bus, self._handler)
            # The socket answers at once; studies load behind it (see _handler).
            await server.start()
            async with asyncio.TaskGroup() as tg:
                await self.registry.start(tg)
                tg.create_task(self.registry.follow_inventory(), name="hosts.toml")
                log.info("hypd %s serving on %s (home %s)", __version__, self.socket_path, self.home)
                if ready:
                    ready()
                tg.create_task(self._start(tg), name="start")
                await self.shutdown.wait()
                await self._stop_runs_if_asked()
                raise _Shutdown
        except* _Shutdown:
            pass
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if server is not None:
                await server.close()
            with contextlib.suppress(Exception):
                if studies is not None:
                    await studies.flush()
                    await asyncio.to_thread(studies.close)
            if self.store is not None:
                await self.store.close()
                log.info("hypd stopped")
            if self.lock_file is not None:
                self.lock_file.close()

    async def _start(self, tg: asyncio.TaskGroup) -> None:
        """What the socket does not wait for: each study's search (the first Ax study
        imports Ax: seconds), then adopting the runs that went on meanwhile, then placing."""
        began = time.monotonic()
        assert self.store is not None
        await self.studies.list_stored()
        self.starting = "building the per-metric summaries of the stored reports (once, for a store made before them)"
        if built := await self.store.build_metric_stats():
            log.info("built the per-metric summaries of %d stored reports (once) in %.1f s", built,
                     time.monotonic() - began)
        self.starting = "loading studies"
        await self.studies.load()
        self.starting = "adopting the runs that went on while it was stopped"
        await self.runs.recover()
        self.starting = "catching up on copies of runs' files"
        await self.fetcher.catch_up()
        tg.create_task(self.runs.serve(), name="runs")
        tg.create_task(self.dispatcher.serve(), name="dispatch")
        tg.create_task(self._chores(), name="chores")
        self.started.set()
        self.dispatcher.wake()
        log.info("started: %d studies loaded in %.1f s", len(self.studies.all), time.monotonic() - began)

    async def _chores(self) -> None:
        troubled = False  # the store refused a write: said once, tried again each second
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.studies.flush(older_than=SEARCH_FLUSH_EVERY)
                await self.store.save_highwater()  # type: ignore[union-attr]
                await self._early_stops()
                if troubled:
                    log.info("store available again for search states")
                troubled = False
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                if not troubled:
                    log.warning("cannot store search states now (%s); trying again", exc)
                troubled = True
            except Exception:
                log.exception("periodic chores failed; carrying on")

    async def _early_stops(self) -> None:
        running: dict[str, list[lc.Attempt]] = defaultdict(list)
        for a in self.runs.core.live():
            if a.phase is lc.Phase.RUNNING and a.stop_intent is None:
                running[a.study].append(a)
        for study, attempts in running.items():
            rt = self.studies.get(study)
            if rt is None or rt.spec.early_stop is None or time.time() - rt.last_early_stop < EARLY_STOP_EVERY:
                continue
            stops = await self.studies.early_stops(study, {a.id: a.trial for a in attempts})
            for run, reason in stops.items():
                self.runs.feed(lc.StopRequested(run, StopIntent.EARLY_STOP, reason, at=time.time()))

    # ------------------------------------------------------------ stop

    async def op_stop(self, kill_runs: bool) -> dict[str, Any]:
        names = [a.name for a in self.runs.core.live()]
        if kill_runs:
            # Nothing new starts from now on; runs being launched are ended once started.
            self.runs.stopping = True
            for a in self.runs.core.live():
                self.runs.feed(lc.StopRequested(a.id, StopIntent.KILL, "killed: the daemon was stopped", time.time()))
            deadline = time.time() + self.config.kill_grace + 10
            # Launches under way (waiting on the store, say) are not in the core yet: wait
            # for them too, so that the runs they start are ended before the daemon exits.
            while (self.runs.core.attempts or self.dispatcher.placing) and time.time() < deadline:
                await asyncio.sleep(0.1)
        asyncio.get_running_loop().call_soon(self.shutdown.set)
        return {"stopping": True, "killed": names if kill_runs else [], "left_running": [] if kill_runs else names,
                "pid": os.getpid()}

    async def _stop_runs_if_asked(self) -> None:
        if self.runs.stopping:
            await self.runs.drain()

    async def op_ping(self) -> dict[str, Any]:
        return await self.ops.op_ping()

    def _handler(self, op: str) -> Callable[..., Any]:
        for part in (self, self.ops, self.run_ops, self.budget, self.fetcher, self.registry):
            method = getattr(part, f"op_{op}", None)
            if method is not None:
                break
        else:
            raise AttributeError(op)
        if self.started.is_set() or (op in SERVED_WHILE_STARTING and (
                op not in ABOUT_STUDIES or self.studies.listed.is_set())):
            return method  # type: ignore[no-any-return]
        # `ls` and `studies` answer while studies load, once the daemon knows which exist
        gate = self.studies.listed if op in SERVED_WHILE_STARTING else self.started

        async def once_started(**args: Any) -> Any:
            try:
                await asyncio.wait_for(gate.wait(), self.start_wait)
            except TimeoutError:
                raise Refusal("busy", f"the daemon is still {self._starting_what()}; try again shortly") from None
            return await method(**args)
        return once_started

    def _starting_what(self) -> str:
        if self.starting == "loading studies":
            loading = sorted(self.studies.loading)
            return f"loading studies ({len(loading)} to go: {', '.join(loading[:5])})"
        return self.starting

    # ------------------------------------------------------------ events out

    def _on_host_event(self, event: object) -> None:
        if isinstance(event, GpusRead):
            # The same reading again frees nothing: a run's end frees its GPU by itself.
            if event.changed:
                self.dispatcher.wake()
            if self.bus.subscribers:
                self.bus.publish("host", self._host_summary(event.host))
            return
        self.runs.feed(event)
        if isinstance(event, lc.HostUp | lc.HostDown) and self.bus.subscribers:
            self.bus.publish("host", self._host_summary(event.host))

    async def _publish_run(self, run_id: int) -> None:
        if not self.bus.subscribers or self.store is None:
            return
        row = await self.store.run_by_id(run_id)
        if row is not None:
            self.bus.publish("run", {c: row[c] for c in ipc.RUN_FIELDS}, run=row["name"])

    async def _publish_study(self, study: str) -> None:
        if not self.bus.subscribers:
            return
        summaries = await self.ops.study_summaries(only=study)
        # A study no longer there was removed (`hypd rm`): said so, for the dashboard to drop it.
        self.bus.publish("study", summaries[0] if summaries else {"name": study, "state": "removed"})

    def _publish_log(self, run: str, text: str) -> None:
        # A batch read from a log may be MiBs: sent in pieces of whole lines, so that a
        # subscriber's buffer (hypd.server.MAX_BEHIND) is not taken by one event.
        while text:
            if len(text) <= LOG_EVENT_SIZE:
                cut = len(text)
            else:
                cut = text.rfind("\n", 0, LOG_EVENT_SIZE) + 1 or text.find("\n") + 1 or len(text)
            self.bus.publish("log", {"run": run, "text": text[:cut]}, run=run)
            text = text[cut:]

    # ------------------------------------------------------------ hosts

    def _host_runs(self, name: str) -> list[str]:
        return [a.name for a in self.runs.core.live() if a.host == name]

    def _max_gpus(self) -> int:
        return max((len(s.gpus) for h in self.registry.all().values() if (s := h.gpus()) is not None), default=0)

    def _host_labels(self) -> dict[str, tuple[str, ...]]:
        """Each host's labels (what a study's `hosts` choice matches), hosts in order."""
        return {name: host.rules().labels for name, host in self.registry.all().items()}

    def _host_summary(self, name: str) -> dict[str, Any]:
        host = self.registry.all()[name]
        rules = host.rules()
        snap = host.gpus()
        runs = [a for a in self.runs.core.held(name) if a.phase is not lc.Phase.ENDED]
        held: dict[int, list[str]] = defaultdict(list)
        for a in runs:
            for g in a.gpus:
                held[g].append(a.name)
        gpus = []
        if snap is not None:
            for g in snap.gpus:
                gpus.append({**dataclasses.asdict(g), "runs": held.get(g.index, []),
                             "allowed": rules.allowed_gpus is None or g.index in rules.allowed_gpus,
                             "foreign": not held.get(g.index) and (
                                 g.memory_used_mib > rules.busy_memory_mib
                                 or (g.utilization_pct or 0) > rules.busy_utilization)})
        state, why = host.state
        return {"name": name, "state": state, "why": why, "down_since": host.down_since,
                "cpu_slots": rules.cpu_slots, "cpu_used": sum(1 for a in runs if not a.gpus),
                "cpu_runs": [a.name for a in runs if not a.gpus], "gpus": gpus,
                "gpu_source": snap.source if snap else None, "gpu_error": snap.error if snap else None,
                "runs": [a.name for a in runs], "labels": list(rules.labels),
                "prepare_failed": {study: why for study, failed in self.runs.prepare_failed.items()
                                   for host_name, (_, why) in failed.items() if host_name == name},
                **host.details()}


class _Shutdown(Exception):
    """Raised inside the TaskGroup to end it (cancelling every part)."""


def setup_logging(home: Path, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(home / "daemon.log")]
    if foreground:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(home: Path | None = None, *, foreground: bool = True) -> int:
    home = home or ipc.hypd_home()
    # Whatever the umask, what the daemon (and its local host watcher) creates is the
    # user's alone; runs get the user's own umask back (hypd.hostwatch).
    os.environ["HYPD_RUN_UMASK"] = f"{os.umask(0o077):03o}"
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        tightened_home = private_dir(home, follow=True)
    except (UnsafePath, OSError) as exc:
        print(f"hypd: {exc}", file=sys.stderr)
        return 1
    tightened = private_files(home)
    setup_logging(home, foreground)
    if tightened_home:
        log.warning("%s", tightened_home)
    if tightened:
        log.warning("made %s 0600 in %s (other users could read them)", ", ".join(tightened), home)
    try:
        daemon = Daemon(home)
    except Exception as exc:  # a broken config.toml
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(daemon.run())
    except (AlreadyRunning, StoreError, DamagedStore, UnsafePath) as exc:  # one line: what, which file, the way out
        log.error("%s", exc)
        return 1
    except asyncio.CancelledError:
        return 1  # a second signal
    return 0
