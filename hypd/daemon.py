"""The daemon: one asyncio process that owns the store, the hosts and the socket.

Subsystems run as tasks: the scheduler (places waiting work when something changes), the
run monitor (reads logs and metrics, notices exits, enforces timeouts and kills), the GPU
poller, and the socket server. Search calls (Ax fitting) run in worker threads so the
socket keeps answering while a model fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import signal
import stat
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypd import __version__, ipc
from hypd.config import Config, load_config
from hypd.gpus import GpuSnapshot, free_gpus
from hypd.hosts import Handle, Host, HostError, Launch, LocalHost
from hypd.inventory import (
    HostConfig,
    InventoryError,
    add_host,
    inventory_path,
    load_inventory,
    make_host,
    parse_target,
    remove_host,
    save_inventory,
    set_draining,
)
from hypd.metrics import METRICS_PREFIX, MetricsReader, fold_objective, pareto_front, split_lines
from hypd.runstate import LIVE, STATES, RunState, StopIntent, counts_as_failure, ending
from hypd.scheduler import HostCapacity, StudyDemand, place
from hypd.search import SearchError, Suggester
from hypd.searchworker import SearchWorker, open_suggester
from hypd.store import RUN_COLUMNS, Store
from hypd.study import (
    StudyError,
    StudySpec,
    coerce_value,
    complete_params,
    format_duration,
    parse_study,
    render_commands,
    run_dir_name,
)
from hypd.wrapper import RunScript, gpu_env

log = logging.getLogger("hypd.daemon")

LOG_READ_LIMIT = 1 << 20  # bytes of a run's log read per check
EARLY_STOP_EVERY = 2.0  # seconds between early-stopping checks of a study
RELEASE_TIMEOUT = 60.0  # seconds a GPU waits for a reading after its run ended
STATUS_TIMEOUT = 15.0  # seconds a host may take to say how a run is, before it counts as unreachable
RESERVE_GRACE = 30.0  # seconds a run's declared GPU memory is counted on top of the readings
SEARCH_FLUSH_EVERY = 10.0  # seconds intermediate reports may wait before the search state is stored


class Refusal(Exception):
    """A request the daemon refuses; code is one of ipc.ERROR_EXIT's keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AlreadyRunning(RuntimeError):
    pass


@dataclass
class StudyRuntime:
    spec: StudySpec
    suggester: Suggester
    paused: bool
    last_served: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    exhausted: bool = False  # the search proposed fewer trials than asked
    trials: int = 0
    last_early_stop: float = 0.0
    dirty_since: float | None = None  # reports told to the search and not yet stored


@dataclass
class ActiveRun:
    id: int
    name: str
    study: str
    trial: int
    host: Host
    gpus: tuple[int, ...]
    handle: Handle | None
    ctl_dir: str
    log_path: str
    offset: int
    reader: MetricsReader
    metrics: dict[str, float]
    objective: float | None
    last_line: str
    deadline: float | None
    stop_intent: str | None = None
    stop_sent: float | None = None
    stop_reason: str = ""  # why a kill was hypd's own decision, if it was
    launching: bool = False  # its host has not yet said it started: not checked until then
    started: float = 0.0
    gpu_mem_mib: int = 0  # what its study declared it needs per GPU
    unreachable_since: float | None = None  # its host has not answered about it since then
    hard_killed: bool = False
    lost: bool = False


@dataclass
class _Ended:
    """What `_after_end` needs of a run that never started (killed while pending)."""

    name: str
    study: str
    trial: int
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float | None = None


def _parse_run_name(target: str) -> tuple[str, int] | None:
    study, sep, number = target.rpartition(":")
    if not sep or not study:
        return None
    try:
        return study, int(number)
    except ValueError:
        return None


class EventBus:
    """Subscribers each have a bounded queue; a subscriber too slow to keep up is dropped
    rather than slowing the daemon."""

    def __init__(self) -> None:
        self.queues: dict[asyncio.Queue[bytes | None], tuple[set[str], str | None]] = {}

    def subscribe(self, topics: set[str], run: str | None) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10000)
        self.queues[queue] = (topics, run)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.queues.pop(queue, None)

    def publish(self, topic: str, data: Any, run: str | None = None) -> None:
        if not self.queues:
            return
        line = ipc.event(topic, data)
        for queue, (topics, only_run) in list(self.queues.items()):
            if topic not in topics or (only_run is not None and run != only_run):
                continue
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                self.queues.pop(queue, None)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)


class Daemon:
    def __init__(self, home: Path, config: Config | None = None) -> None:
        self.home = home
        self.config = config or load_config(home)
        self.store: Store | None = None
        self.hosts: dict[str, Host] = {}
        self.snapshots: dict[str, GpuSnapshot] = {}
        self.studies: dict[str, StudyRuntime] = {}
        self.broken_studies: dict[str, str] = {}
        self.active: dict[int, ActiveRun] = {}
        self.released: dict[tuple[str, int], float] = {}  # (host, GPU) -> when its last run ended
        self.search_worker = SearchWorker()
        self.inventory_mtime: float | None = None
        self.inventory_error = ""
        self.bus = EventBus()
        self.wake = asyncio.Event()
        self.shutdown = asyncio.Event()
        self.socket_path = ipc.socket_path(home)
        self.lock_file: Any = None
        self.server: asyncio.AbstractServer | None = None
        self.started = time.time()
        self.connections: set[asyncio.Task[None]] = set()

    @property
    def db(self) -> Store:
        assert self.store is not None
        return self.store

    # ================================================================ lifecycle

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
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        tasks: list[asyncio.Task[None]] = []
        try:
            self.store = await Store.open(self.home / "hypd.db")
            if self.config.local.enabled:
                self.hosts["local"] = LocalHost(self.config.local, self.home)
            await self._reload_inventory()
            await self._poll_gpus()
            await self._load_studies()
            await self._recover_runs()
            await self._start_server()
            tasks = [asyncio.create_task(self._loop(self._schedule, wait=self.wake), name="scheduler"),
                     asyncio.create_task(self._loop(self._monitor, every=self.config.poll_interval), name="monitor"),
                     asyncio.create_task(self._loop(self._poll_gpus, every=self.config.gpu_poll), name="gpus")]
            self.wake.set()
            log.info("hypd %s serving on %s (home %s)", __version__, self.socket_path, self.home)
            if ready:
                ready()
            await self.shutdown.wait()
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self.server is not None:
                self.server.close()
                with contextlib.suppress(OSError):
                    self.socket_path.unlink()
            for task in tasks + list(self.connections):
                task.cancel()
            await asyncio.gather(*tasks, *self.connections, return_exceptions=True)
            for host in self.hosts.values():
                with contextlib.suppress(Exception):
                    await host.close()
            await self._flush_search_states()
            await asyncio.to_thread(self.search_worker.close)
            if self.store is not None:
                await self.store.close()
            if self.lock_file is not None:
                self.lock_file.close()
            log.info("hypd stopped; %d run(s) left going", len(self.active))

    def _on_signal(self, sig: int) -> None:
        if self.shutdown.is_set():
            log.warning("second %s: exiting at once", signal.Signals(sig).name)
            os._exit(1)
        log.info("%s: shutting down (runs keep going)", signal.Signals(sig).name)
        self.shutdown.set()

    async def _loop(self, step: Callable[[], Awaitable[None]], *, every: float | None = None,
                    wait: asyncio.Event | None = None) -> None:
        while True:
            if wait is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wait.wait(), timeout=2.0)
                wait.clear()
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; carrying on", getattr(step, "__name__", step))
            if every is not None:
                await asyncio.sleep(every)

    # ================================================================ studies

    async def _load_studies(self) -> None:
        for row in await self.db.studies():
            try:
                spec = parse_study(row.text, row.source, row.base_dir)
                suggester = await asyncio.to_thread(open_suggester, spec, row.search_state, self.search_worker)
            except (StudyError, SearchError, ValueError) as exc:
                self.broken_studies[row.name] = str(exc)
                log.error("study %s cannot be loaded: %s", row.name, exc)
                continue
            runtime = StudyRuntime(spec, suggester, row.paused, row.last_served)
            runtime.trials = await self.db.trial_count(row.name)
            # A search that is not adaptive queued every trial at submit.
            runtime.exhausted = not suggester.adaptive
            self.studies[row.name] = runtime

    async def _search(self, rt: StudyRuntime, method: Callable[..., Any], *args: Any,
                      changes: bool | Callable[[Any], bool] = True) -> Any:
        """Call the study's search off the event loop, one call at a time, and store its
        state after a call that changes it (`changes` may judge by the call's result)."""
        async with rt.lock:
            result = await asyncio.to_thread(method, *args)
            if changes(result) if callable(changes) else changes:
                await self._store_search_state(rt)
            return result

    async def _store_search_state(self, rt: StudyRuntime) -> None:
        """(Under rt.lock.) Dumping an Ax experiment takes up to seconds at a few hundred
        trials, so intermediate reports mark the state dirty and are stored with the next
        change, or by the monitor within SEARCH_FLUSH_EVERY."""
        state = await asyncio.to_thread(rt.suggester.dump)
        await self.db.set_search_state(rt.spec.name, state)
        rt.dirty_since = None

    async def _flush_search_states(self, older_than: float = 0.0) -> None:
        for rt in self.studies.values():
            if rt.dirty_since is not None and time.time() - rt.dirty_since >= older_than:
                async with rt.lock:
                    if rt.dirty_since is not None:
                        await self._store_search_state(rt)

    async def _new_trials(self, rt: StudyRuntime, count: int | None = None,
                          params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Ask the search for `count` trials, or attach a hand-given one, and store the
        trials with the search's new state in one transaction: a crash never leaves the
        search with trials hypd does not know of."""
        async with rt.lock:
            if params is None:
                trials = await asyncio.to_thread(rt.suggester.ask, count)
            else:
                trials = [(await asyncio.to_thread(rt.suggester.attach, params), params)]
            state = await asyncio.to_thread(rt.suggester.dump)
            runs = await self.db.add_trials(rt.spec.name, trials, state,
                                            source="search" if params is None else "user")
            rt.dirty_since = None
            rt.trials += len(trials)
            return runs

    def _max_gpus_on_a_host(self) -> int:
        return max((len(s.gpus) for s in self.snapshots.values()), default=0)

    # ================================================================ runs

    async def _recover_runs(self) -> None:
        """Adopt runs that went on while no daemon watched them."""
        rows = await self.db.runs(states=[s.value for s in LIVE],
                                  columns=RUN_COLUMNS + ("pid", "proc_start", "ctl_dir", "log_offset",
                                                         "stop_intent", "stop_sent"))
        for row in rows:
            host = self.hosts.get(row["host"] or "")
            rt = self.studies.get(row["study"])
            if host is None or rt is None:
                reason = f"host {row['host']} is not configured" if host is None else "its study cannot be loaded"
                log.error("run %s cannot be adopted: %s", row["name"], reason)
                continue
            handle = Handle(row["pid"], row["proc_start"]) if row["pid"] else await host.find_handle(row["ctl_dir"])
            run = ActiveRun(
                id=row["id"], name=row["name"], study=row["study"], trial=row["trial"], host=host,
                gpus=tuple(row["gpus"] or ()), handle=handle, ctl_dir=row["ctl_dir"], log_path=row["log_path"],
                offset=row["log_offset"], reader=MetricsReader(rt.spec.metrics_regex, row["reports"]),
                metrics=dict(row["metrics"] or {}), objective=row["objective"], last_line=row["last_line"],
                deadline=row["deadline"], stop_intent=row["stop_intent"], stop_sent=row["stop_sent"],
                lost=row["state"] == RunState.LOST.value, started=row["started"] or 0.0,
                gpu_mem_mib=rt.spec.gpu_mem_mib)
            self.active[run.id] = run
            log.info("adopted %s (pid %s)", run.name, handle.pid if handle else "unknown")

    async def _schedule(self) -> None:
        capacities = []
        held: dict[str, list[int]] = defaultdict(list)
        cpu_used: dict[str, int] = defaultdict(int)
        for run in self.active.values():
            if run.lost:
                continue  # its host is gone: its slot is not counted
            if run.gpus:
                held[run.host.name].extend(run.gpus)
            else:
                cpu_used[run.host.name] += 1
        for name, host in self.hosts.items():
            capacities.append(HostCapacity(name, self._free_gpu_slots(name, host, held[name]),
                                           max(0, host.cpu_slots - cpu_used[name]), host.accepting,
                                           self._free_gpu_memory(name)))
        if not any(c.free_gpus or c.free_cpu_slots for c in capacities if c.accepting):
            return
        running: dict[str, int] = defaultdict(int)
        for run in self.active.values():
            if not run.lost:
                running[run.study] += 1
        demands = []
        for name, rt in self.studies.items():
            if rt.paused:
                continue
            spec = rt.spec
            room = spec.parallel - running[name]
            if room <= 0:
                continue
            waiting = await self.db.runs(state=RunState.PENDING.value, study=name, limit=room, columns=("id",))
            can_create = 0
            if rt.suggester.adaptive and not rt.exhausted:
                budget = (spec.max_trials or 0) - rt.trials
                can_create = max(0, min(room - len(waiting), budget))
            if waiting or can_create:
                demands.append(StudyDemand(name, tuple(r["id"] for r in waiting), can_create, running[name],
                                           spec.parallel, spec.gpus, spec.priority, False, rt.last_served,
                                           spec.gpu_mem_mib))
        placements = place(capacities, demands)
        if not placements:
            return
        # New trials: one search call per study for all its free slots, studies in parallel.
        wanted: dict[str, list[Any]] = defaultdict(list)
        for p in placements:
            if p.run_id is None:
                wanted[p.study].append(p)
        created: dict[str, list[int]] = {}

        async def ask(study: str, count: int) -> None:
            rt = self.studies[study]
            try:
                runs = await self._new_trials(rt, count)
            except Exception:  # a search that breaks must not stop the others
                log.exception("search of study %s failed; it proposes nothing more until resubmitted", study)
                rt.exhausted = True
                created[study] = []
                return
            if len(runs) < count:
                rt.exhausted = True
            created[study] = [r["id"] for r in runs]

        await asyncio.gather(*(ask(s, len(ps)) for s, ps in wanted.items()))
        now = time.time()
        launches = []
        for p in placements:
            run_id = p.run_id
            if run_id is None:
                ids = created.get(p.study) or []
                if not ids:
                    continue
                run_id = ids.pop(0)
            self.studies[p.study].last_served = now
            launches.append(self._launch(run_id, self.hosts[p.host], p.gpus))
        # Launched together: each waits on its own host, not on the others.
        for outcome in await asyncio.gather(*launches, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("launch failed: %s", outcome, exc_info=outcome)
        for study in {p.study for p in placements}:
            await self.db.set_last_served(study, now)
            await self._publish_study(study)

    def _free_gpu_slots(self, name: str, host: Host, held: list[int]) -> tuple[int, ...]:
        """The GPU indexes runs may be given now, each repeated once per run it can take:
        not someone else's, within the host's allowed GPUs and runs per GPU, and not a GPU
        whose last run ended after the latest reading (its memory may not be free yet)."""
        snap = self.snapshots.get(name)
        if snap is None or not snap.gpus:
            return ()
        allowed = set(host.allowed_gpus) if host.allowed_gpus is not None else None
        idle = set(free_gpus(snap, set(held), allowed, memory_threshold_mib=host.busy_memory_mib,
                             utilization_threshold_pct=host.busy_utilization))
        slots: list[int] = []
        for reading in snap.gpus:
            index = reading.index
            released = self.released.get((name, index))
            if released is not None:
                if snap.taken_at <= released:
                    if time.time() - released < RELEASE_TIMEOUT:
                        continue
                    log.warning("%s GPU %d: no reading since its last run ended %.0fs ago; handing it out",
                                name, index, RELEASE_TIMEOUT)
                del self.released[(name, index)]
            ours = held.count(index)
            if index in idle:
                slots += [index] * host.max_per_gpu
            elif 0 < ours < host.max_per_gpu and (allowed is None or index in allowed):
                slots += [index] * (host.max_per_gpu - ours)  # shared: room beside our own runs
        return tuple(slots)

    def _free_gpu_memory(self, name: str) -> tuple[tuple[int, int], ...]:
        """Free memory of each GPU of a host: what its latest reading shows free, less what
        runs launched since (or just before) that reading will take, so two launches in
        the same second do not both take the last 20 GiB."""
        snap = self.snapshots.get(name)
        if snap is None:
            return ()
        reserved: dict[int, int] = defaultdict(int)
        for run in self.active.values():
            if run.host.name == name and not run.lost and run.started > snap.taken_at - RESERVE_GRACE:
                for gpu in run.gpus:
                    reserved[gpu] += run.gpu_mem_mib
        return tuple((g.index, g.memory_total_mib - g.memory_used_mib - reserved[g.index]) for g in snap.gpus)

    async def _launch(self, run_id: int, host: Host, gpus: tuple[int, ...]) -> None:
        row = await self.db.run_by_id(run_id)
        if row is None or row["state"] != RunState.PENDING.value:
            return
        rt = self.studies[row["study"]]
        spec = rt.spec
        root = Path(host.root)
        study_dir = Path(spec.output_dir) if spec.output_dir else root / "studies" / spec.name
        run_dir = study_dir / run_dir_name(row["run_no"], row["params"], spec)
        ctl_dir = root / "runs" / spec.name / f"{row['run_no']:04d}"
        # The log is always on this machine: a remote host streams its copy here.
        log_path = self.home / "runs" / spec.name / f"{row['run_no']:04d}" / "log"
        stages = render_commands(spec, row["params"], run_dir=str(run_dir), run=row["name"],
                                 run_no=row["run_no"], trial=row["trial"])
        env = dict(spec.env)
        env.update(gpu_env(gpus) if gpus else {"CUDA_VISIBLE_DEVICES": ""})
        env.update(HYPD_RUN=row["name"], HYPD_STUDY=spec.name, HYPD_TRIAL=str(row["trial"]),
                   HYPD_RUN_DIR=str(run_dir))
        try:
            workdir = await host.prepare_study(spec)
        except HostError as exc:
            log.error("%s: cannot prepare study on %s: %s", row["name"], host.name, exc)
            return  # stays pending; the host's state says why
        script = RunScript(run=row["name"], ctl_dir=str(ctl_dir), run_dir=str(run_dir), workdir=workdir,
                           env=env, stages=stages, setup=getattr(host, "setup", ""))
        deadline = time.time() + spec.timeout if spec.timeout else None
        where = f"{host.name}:{','.join(map(str, gpus))}" if gpus else f"{host.name} (cpu)"
        await self.db.transition(run_id, RunState.RUNNING, f"started on {where}", host=host.name, gpus=list(gpus),
                                 run_dir=str(run_dir), ctl_dir=str(ctl_dir), log_path=str(log_path),
                                 deadline=deadline, log_offset=0)
        run = ActiveRun(id=run_id, name=row["name"], study=spec.name, trial=row["trial"], host=host, gpus=gpus,
                        handle=None, ctl_dir=str(ctl_dir), log_path=str(log_path), offset=0,
                        reader=MetricsReader(spec.metrics_regex), metrics={}, objective=None, last_line="",
                        deadline=deadline, started=time.time(), gpu_mem_mib=spec.gpu_mem_mib)
        self.active[run_id] = run
        run.launching = True
        try:
            run.handle = await host.launch(Launch(script, str(log_path)))
        except HostError as exc:
            log.error("%s: launch failed: %s", run.name, exc)
            await self._finish(run, RunState.FAILED, f"launch failed: {exc}", None)
            return
        finally:
            run.launching = False
        await self.db.update_run(run_id, pid=run.handle.pid, proc_start=run.handle.proc_start)
        log.info("%s started on %s (pid %d)", run.name, where, run.handle.pid)
        await self._publish_run(run_id)

    # ---------------------------------------------------------------- monitoring

    async def _monitor(self) -> None:
        await self._flush_search_states(older_than=SEARCH_FLUSH_EVERY)
        # Runs are checked concurrently: a remote check is a network round trip.
        await asyncio.gather(*(self._check_one(run) for run in list(self.active.values()) if not run.launching))

    async def _check_one(self, run: ActiveRun) -> None:
        try:
            await self._check(run)
        except HostError as exc:
            log.warning("%s: cannot check: %s", run.name, exc)
        except Exception:
            log.exception("%s: check failed; carrying on", run.name)

    def _read_log(self, run: ActiveRun, final: bool) -> tuple[list[str], int]:
        try:
            with open(run.log_path, "rb") as f:
                f.seek(run.offset)
                data = f.read(LOG_READ_LIMIT)
        except FileNotFoundError:
            return [], 0
        lines, used = split_lines(data)
        if final and used < len(data) and len(data) < LOG_READ_LIMIT:
            # The run has ended: its unterminated last line is complete too.
            tail = data[used:].decode("utf-8", errors="replace").rstrip("\r")
            lines.append(tail.rsplit("\r", 1)[-1])
            used = len(data)
        return lines, used

    async def _ingest(self, run: ActiveRun, final: bool = False) -> None:
        """Read the run's new output: reports, latest metrics, last line."""
        rt = self.studies[run.study]
        while True:
            lines, used = self._read_log(run, final)
            if not used:
                return
            text_lines = lines
            reports = []
            now = time.time()
            objective = rt.spec.objective
            for line in lines:
                if line.strip() and not line.lstrip().startswith(METRICS_PREFIX):
                    run.last_line = line.strip()[:500]
                report = run.reader.line(line)
                if report is None:
                    continue
                reports.append((report.step, now, dict(report.values)))
                run.metrics.update(report.values)
                if objective.metric in report.values:
                    run.objective = fold_objective(run.objective, report.values[objective.metric],
                                                   objective.minimize, objective.use)
            run.offset += used
            await self.db.add_reports(run.id, reports, log_offset=run.offset, metrics=run.metrics,
                                      objective=_finite(run.objective), last_line=run.last_line)
            self.bus.publish("log", {"run": run.name, "text": "\n".join(text_lines) + "\n"}, run=run.name)
            if reports:
                if rt.spec.early_stop is not None:
                    await self._search(rt, _report_all, rt.suggester, run.trial, reports, changes=False)
                    rt.dirty_since = rt.dirty_since or time.time()
                await self._publish_run(run.id)
            if used < LOG_READ_LIMIT // 2:
                return

    async def _check(self, run: ActiveRun) -> None:
        await self._ingest(run)
        try:
            # A host that stops answering mid-request must not hold up every other check.
            status = await asyncio.wait_for(run.host.status(run.handle, run.ctl_dir), STATUS_TIMEOUT)
        except (HostError, asyncio.TimeoutError) as exc:
            await self._unreachable(run, str(exc) or f"no answer within {STATUS_TIMEOUT:.0f}s")
            return
        run.unreachable_since = None
        now = time.time()
        if run.lost:
            if status.alive and (run.stop_intent is None and await self._retried_meanwhile(run)):
                # Its trial got a new attempt while the host was away: one attempt is enough.
                await self._request_stop(run, StopIntent.KILL)
                run.stop_reason = "ended: its trial was retried while its host was away"
            elif status.alive and run.stop_intent is None:
                run.lost = False
                await self.db.transition(run.id, RunState.RUNNING, f"host {run.host.name} is back; run adopted")
                log.info("%s: host %s is back; run adopted", run.name, run.host.name)
                await self._publish_run(run.id)
                self.wake.set()
                return
        if status.alive:
            if run.stop_intent is None and run.deadline is not None and now >= run.deadline:
                await self._request_stop(run, StopIntent.TIMEOUT)
            elif (run.stop_sent is not None and not run.hard_killed
                  and now - run.stop_sent >= self.config.kill_grace):
                log.info("%s: still alive %.0fs after SIGTERM: SIGKILL", run.name, now - run.stop_sent)
                run.hard_killed = True
                if run.handle is not None:
                    await run.host.signal(run.handle, signal.SIGKILL)
            await self._maybe_early_stop(run.study)
            return
        if run.handle is None:
            # Started, but the daemon died before it recorded the pid: the pid file knows.
            run.handle = await run.host.find_handle(run.ctl_dir)
            if run.handle is not None and (await run.host.status(run.handle, run.ctl_dir)).alive:
                await self.db.update_run(run.id, pid=run.handle.pid, proc_start=run.handle.proc_start)
                return
        await self._ingest(run, final=True)
        code, stage = status.exit if status.exit else (None, None)
        timeout_text = format_duration(self.studies[run.study].spec.timeout or 0)
        end = ending(code, stage, run.stop_intent, timeout_text)
        reason = run.stop_reason if run.stop_reason and end.state is RunState.KILLED else end.reason
        await self._finish(run, end.state, reason, code)

    async def _unreachable(self, run: ActiveRun, why: str) -> None:
        """The run's host does not answer. Past the host's grace the run is lost: its
        slot no longer counts and its trial is retried elsewhere, within the retry budget."""
        host = run.host
        if run.unreachable_since is None:
            run.unreachable_since = time.time()
        since = min(host.down_since or run.unreachable_since, run.unreachable_since)
        if run.lost or time.time() - since < host.lost_after:
            return
        run.lost = True
        reason = f"host {host.name} unreachable for {format_duration(time.time() - since)}: {why}"
        await self.db.transition(run.id, RunState.LOST, reason)
        log.warning("%s lost: %s", run.name, reason)
        await self._after_end(run, RunState.LOST)
        await self._publish_run(run.id)
        await self._publish_study(run.study)
        self.wake.set()

    async def _retried_meanwhile(self, run: ActiveRun) -> bool:
        others = await self.db.runs(study=run.study, trial=run.trial, columns=("id",),
                                    states=[RunState.PENDING.value, RunState.RUNNING.value])
        return any(o["id"] != run.id for o in others)

    async def _finish(self, run: ActiveRun, state: RunState, reason: str, code: int | None) -> None:
        was_lost = run.lost
        await self.db.transition(run.id, state, reason, exit_code=code)
        self.active.pop(run.id, None)
        for gpu in run.gpus:
            self.released[(run.host.name, gpu)] = time.time()
        if was_lost:
            # Its trial was dealt with (retried or abandoned) when the run was lost.
            await self._publish_run(run.id)
            self.wake.set()
            return
        log.info("%s %s: %s", run.name, state.value, reason)
        if run.stop_intent and run.handle is not None and await run.host.group_alive(run.handle):
            # The wrapper is gone but some of its processes linger: end them after the grace.
            asyncio.create_task(self._kill_leftovers(run))
        await self._after_end(run, state)
        await self._publish_run(run.id)
        await self._publish_study(run.study)
        self.wake.set()

    async def _kill_leftovers(self, run: ActiveRun) -> None:
        assert run.handle is not None
        delay = self.config.kill_grace - (time.time() - (run.stop_sent or time.time()))
        await asyncio.sleep(max(0.0, delay))
        with contextlib.suppress(HostError):
            await run.host.signal(run.handle, signal.SIGKILL)

    async def _after_end(self, run: ActiveRun | dict[str, Any], state: RunState) -> None:
        """Retry a failure within the study's budget, and tell the search the outcome.
        `run` is the ended run, or the row of a pending run killed before it started."""
        if isinstance(run, dict):
            run = _Ended(run["name"], run["study"], run["trial"])
        rt = self.studies.get(run.study)
        if rt is None:
            return
        attempts = await self.db.runs(study=run.study, trial=run.trial, columns=("state",))
        if counts_as_failure(state):
            failures = sum(1 for a in attempts if counts_as_failure(a["state"]))
            if failures <= rt.spec.retries:
                retry = await self.db.add_retry(run.study, run.trial,
                                                f"retry {failures} of {rt.spec.retries} after {run.name} {state.value}")
                log.info("%s %s: retrying as %s", run.name, state.value, retry["name"])
                await self._publish_run(retry["id"])
                return
        if any(a["state"] in (RunState.PENDING.value, RunState.RUNNING.value, RunState.LOST.value) for a in attempts):
            return  # another attempt of this trial will tell
        if await self.db.trial_told(run.study, run.trial):
            return
        if state is RunState.COMPLETED:
            values = {k: v for k, v in run.metrics.items() if math.isfinite(v)}
            for objective in rt.spec.objectives:
                if objective.metric == rt.spec.objective.metric and run.objective is not None:
                    values[objective.metric] = run.objective
            await self._search(rt, rt.suggester.complete, run.trial, values)
            told = "completed"
        elif state is RunState.FAILED:
            await self._search(rt, rt.suggester.fail, run.trial)
            told = "failed"
        elif state is RunState.STOPPED:
            told = "stopped"  # the search itself decided to stop it and has its data
        else:
            await self._search(rt, rt.suggester.abandon, run.trial)
            told = "abandoned"
        await self.db.set_told(run.study, run.trial, told)

    async def _maybe_early_stop(self, study: str) -> None:
        rt = self.studies.get(study)
        if rt is None or rt.spec.early_stop is None or time.time() - rt.last_early_stop < EARLY_STOP_EVERY:
            return
        rt.last_early_stop = time.time()
        running = {r.trial: r for r in self.active.values()
                   if r.study == study and r.stop_intent is None and not r.lost}
        if not running:
            return
        for trial in await self._search(rt, rt.suggester.early_stop, sorted(running), changes=bool):
            run = running.get(trial)
            if run is not None:
                log.info("%s: early-stopped by the search", run.name)
                await self._request_stop(run, StopIntent.EARLY_STOP)

    async def _request_stop(self, run: ActiveRun, intent: StopIntent) -> None:
        if run.stop_intent is not None:
            return
        run.stop_intent = intent.value
        run.stop_sent = time.time()
        await self.db.update_run(run.id, stop_intent=run.stop_intent, stop_sent=run.stop_sent)
        if run.handle is not None:
            try:
                await run.host.signal(run.handle, signal.SIGTERM)
            except HostError as exc:
                # Recorded: the kill escalates (SIGKILL) once the host answers again.
                log.warning("%s: cannot signal now (%s); it is ended when its host answers", run.name, exc)

    # ---------------------------------------------------------------- hosts

    async def _reload_inventory(self) -> None:
        """Bring the SSH hosts in line with $HYPD_HOME/hosts.toml: hosts added start,
        hosts removed close, hosts changed are replaced (their runs move to the new
        object and go on). Called at start, after `hypd hosts ...`, and when the file's
        modification time changes."""
        path = inventory_path(self.home)
        try:
            self.inventory_mtime = path.stat().st_mtime if path.exists() else None
            configs = {c.name: c for c in load_inventory(path)}
            self.inventory_error = ""
        except InventoryError as exc:
            self.inventory_error = str(exc)
            log.error("%s (hosts unchanged until it is fixed)", exc)
            return
        from hypd.ssh import SshHost  # asyncssh: only where SSH hosts are used

        for name, host in list(self.hosts.items()):
            if isinstance(host, LocalHost):
                continue
            config = configs.get(name)
            old = getattr(host, "config", None)
            if config == old:
                continue
            if config is not None and dataclasses.replace(config, draining=old.draining) == old:
                host.set_draining(config.draining)  # type: ignore[attr-defined]
                host.config = config  # type: ignore[attr-defined]
                log.info("host %s %s", name, "draining" if config.draining else "taking runs again")
                continue
            if config is None and any(r.host is host for r in self.active.values()):
                host.set_draining(True)  # type: ignore[attr-defined]
                log.warning("host %s left hosts.toml with runs going: draining until they end", name)
                continue
            del self.hosts[name]
            self.snapshots.pop(name, None)
            await host.close()  # first: two hosts must never follow the same logs
            replacement = None
            if config is not None:
                replacement = SshHost(config, self.home)
                self.hosts[name] = replacement
                await replacement.start()
                for run in self.active.values():
                    if run.host is host:
                        run.host = replacement
            log.info("host %s %s", name, "changed" if replacement else "removed")
        for name, config in configs.items():
            if name not in self.hosts:
                host = SshHost(config, self.home)
                self.hosts[name] = host
                await host.start()
                log.info("host %s added (%s)", name, config.address)
        self.wake.set()

    def _check_inventory_file(self) -> bool:
        path = inventory_path(self.home)
        mtime = path.stat().st_mtime if path.exists() else None
        return mtime != self.inventory_mtime

    async def _poll_gpus(self) -> None:
        if self._check_inventory_file():
            await self._reload_inventory()
        for name, host in list(self.hosts.items()):
            try:
                snap = await host.read_gpus()
            except Exception as exc:  # a probe must never take the daemon down
                log.warning("host %s: reading GPUs failed: %s", name, exc)
                continue
            previous = self.snapshots.get(name)
            self.snapshots[name] = snap
            if previous is None or previous.gpus != snap.gpus:
                self.wake.set()
            self.bus.publish("host", await self._host_summary(name))

    # ---------------------------------------------------------------- events

    async def _publish_run(self, run_id: int) -> None:
        if not self.bus.queues:
            return
        row = await self.db.run_by_id(run_id)
        if row is not None:
            self.bus.publish("run", {c: row.get(c) for c in RUN_COLUMNS + ("name",)}, run=row["name"])

    async def _publish_study(self, study: str) -> None:
        if not self.bus.queues:
            return
        summaries = await self._study_summaries(only=study)
        if summaries:
            self.bus.publish("study", summaries[0])

    # ================================================================ socket

    async def _start_server(self) -> None:
        directory = self.socket_path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        if directory.stat().st_uid != os.getuid():
            raise RuntimeError(f"{directory} belongs to another user; refusing to put a socket there")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale: we hold the lock, so no daemon owns it
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve_client, str(self.socket_path),
                                                          limit=ipc.MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, stat.S_IRUSR | stat.S_IWUSR)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            sock = writer.get_extra_info("socket")
            uid = ipc.peer_uid(sock) if sock is not None else None
            if uid is not None and uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                writer.write(ipc.error(None, "denied", f"refused: this daemon serves uid {os.getuid()} only, "
                                                      f"the client runs as uid {uid}"))
                await writer.drain()
                return
            writer.write(ipc.encode({"hello": "hypd", "version": __version__, "pid": os.getpid(),
                                     "home": str(self.home)}))
            await writer.drain()
            subscription: asyncio.Task[None] | None = None
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(ipc.error(None, "too_large", f"message over {ipc.MAX_LINE} bytes; closing"))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    request = ipc.parse_request(line)
                except ipc.ProtocolError as exc:
                    writer.write(ipc.error(None, exc.code, exc.message))
                    await writer.drain()
                    continue
                if request.op == "subscribe":
                    topics = set(request.args["topics"])
                    bad = topics - set(ipc.TOPICS)
                    if bad or subscription is not None:
                        why = f"unknown topic(s) {sorted(bad)}" if bad else "already subscribed"
                        writer.write(ipc.error(request.id, "bad_request", why))
                    else:
                        queue = self.bus.subscribe(topics, request.args["run"])
                        writer.write(ipc.ok(request.id, {"topics": sorted(topics)}))
                        subscription = asyncio.create_task(self._pump(queue, writer))
                    await writer.drain()
                    continue
                writer.write(await self._dispatch(request))
                await writer.drain()
                if request.op == "stop":
                    return
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            self.connections.discard(task)
            if "subscription" in locals() and subscription is not None:
                subscription.cancel()
            writer.close()

    async def _pump(self, queue: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await queue.get()
                if line is None:
                    writer.write(ipc.event("dropped", {"why": "too slow to keep up; reconnect"}))
                    await writer.drain()
                    writer.close()
                    return
                writer.write(line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.bus.unsubscribe(queue)

    async def _dispatch(self, request: ipc.Request) -> bytes:
        handler = getattr(self, f"op_{request.op}")
        try:
            return ipc.ok(request.id, await handler(**request.args))
        except Refusal as exc:
            return ipc.error(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("op %s failed", request.op)
            return ipc.error(request.id, "error", f"{request.op} failed inside the daemon: {exc}")

    # ================================================================ ops

    def _study(self, name: str) -> StudyRuntime:
        rt = self.studies.get(name)
        if rt is None:
            if name in self.broken_studies:
                raise Refusal("invalid", f"study {name} cannot be loaded: {self.broken_studies[name]}")
            known = ", ".join(sorted(self.studies)) or "none yet"
            raise Refusal("not_found", f"no study {name!r} (studies: {known})")
        return rt

    async def _run(self, target: str) -> dict[str, Any]:
        parsed = _parse_run_name(target)
        if parsed is None:
            raise Refusal("invalid", f"{target!r} is not a run name; runs are named STUDY:N, e.g. quadratic:7")
        self._study(parsed[0])
        row = await self.db.run(*parsed)
        if row is None:
            raise Refusal("not_found", f"no run {target}")
        return row

    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "home": str(self.home), "uptime": time.time() - self.started}

    async def op_submit(self, path: str, text: str, as_name: str | None) -> dict[str, Any]:
        base_dir = str(Path(path).parent)
        # Under --as, the stored text carries the new name, so it parses as the study it is.
        stored_text = text if as_name is None else _renamed_text(text, as_name)
        try:
            spec = parse_study(stored_text, path, base_dir)
        except StudyError as exc:
            raise Refusal("invalid", str(exc)) from None
        warnings = list(spec.warnings)
        most = self._max_gpus_on_a_host()
        if spec.gpus > most:
            warnings.append(f"runs need {spec.gpus} GPU(s) but the largest host offers {most}: they wait "
                            "until a host with enough GPUs joins")
        existing = self.studies.get(spec.name)
        if existing is not None:
            change = _space_change(existing.spec, spec)
            if change:
                raise Refusal("conflict", f"study {spec.name} exists with a different search space ({change}); "
                                          f"submit it under another name with --as NAME")
            existing.spec = spec
            await self._search(existing, existing.suggester.update_spec, spec, changes=False)
            existing.paused = False
            existing.exhausted = False
            await self.db.update_study_source(spec.name, path, stored_text, base_dir)
            await self.db.set_paused(spec.name, False)
            self.wake.set()
            await self._publish_study(spec.name)
            return {"study": spec.name, "continued": True, "queued": 0, "warnings": warnings}
        try:
            suggester = await asyncio.to_thread(open_suggester, spec, None, self.search_worker)
        except SearchError as exc:
            raise Refusal("invalid", f"{path}: study.algorithm: {exc}") from None
        state = await asyncio.to_thread(suggester.dump)
        await self.db.add_study(spec.name, path, stored_text, base_dir, state)
        rt = StudyRuntime(spec, suggester, False, 0.0)
        self.studies[spec.name] = rt
        queued = 0
        if not suggester.adaptive:
            budget = spec.max_trials if spec.max_trials is not None else 1 << 30
            queued = len(await self._new_trials(rt, budget))
            rt.exhausted = True
        log.info("study %s submitted from %s (%d trials queued)", spec.name, path, queued)
        self.wake.set()
        await self._publish_study(spec.name)
        return {"study": spec.name, "continued": False, "queued": queued, "warnings": warnings}

    async def op_ls(self, state: str | None, study: str | None, limit: int | None) -> list[dict[str, Any]]:
        if state is not None and state not in STATES:
            raise Refusal("invalid", f"unknown state {state!r}; use one of {', '.join(STATES)}")
        if study is not None:
            self._study(study)
        return await self.db.runs(state=state, study=study, limit=limit)

    async def op_info(self, run: str) -> dict[str, Any]:
        row = await self._run(run)
        rt = self._study(row["study"])
        row["transitions"] = await self.db.transitions(row["id"])
        row["attempts"] = [a["name"] for a in await self.db.runs(study=row["study"], trial=row["trial"],
                                                                 columns=("study", "run_no"))]
        row["retries"] = rt.spec.retries
        row["objective_metric"] = rt.spec.objective.metric
        row["goal"] = rt.spec.objective.goal
        row["reports"] = await self.db.reports(row["id"])
        run_dir = row["run_dir"] or "<run_dir>"
        row["commands"] = render_commands(rt.spec, row["params"], run_dir=run_dir, run=row["name"],
                                          run_no=row["run_no"], trial=row["trial"])
        row["timeout"] = rt.spec.timeout
        return row

    async def op_logs(self, run: str, offset: int, limit: int, tail: int | None) -> dict[str, Any]:
        row = await self._run(run)
        data = b""
        size = 0
        if row["log_path"]:
            try:
                with open(row["log_path"], "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if tail is not None:
                        offset = max(0, size - tail)
                    f.seek(max(0, offset))
                    data = f.read(max(0, min(limit, 16 << 20)))
            except FileNotFoundError:
                pass
        return {"text": data.decode("utf-8", errors="replace"), "offset": max(0, offset) + len(data), "size": size,
                "state": row["state"], "live": row["state"] in (RunState.PENDING.value, RunState.RUNNING.value,
                                                               RunState.LOST.value),
                "path": row["log_path"]}

    async def op_metrics(self, run: str, since: int) -> dict[str, Any]:
        row = await self._run(run)
        reports = await self.db.reports(row["id"], since)
        return {"run": row["name"], "reports": reports, "next": max(since, 0) + len(reports)}

    async def op_kill(self, target: str) -> dict[str, Any]:
        if _parse_run_name(target) is None:
            rt = self._study(target)
            rt.paused = True
            await self.db.set_paused(target, True)
            rows = await self.db.runs(study=target, states=[RunState.PENDING.value, RunState.RUNNING.value,
                                                            RunState.LOST.value],
                                      columns=("id", "study", "run_no", "trial", "state"))
        else:
            row = await self._run(target)
            if row["state"] not in (RunState.PENDING.value, RunState.RUNNING.value, RunState.LOST.value):
                raise Refusal("conflict", f"{target} is {row['state']}: nothing to kill")
            rows = [row]
        killed = []
        for row in rows:
            await self._kill_run(row)
            killed.append(row["name"])
        if _parse_run_name(target) is None:
            await self._publish_study(target)
        return {"killed": killed, "paused": _parse_run_name(target) is None}

    async def _kill_run(self, row: dict[str, Any]) -> None:
        active = self.active.get(row["id"])
        if active is not None:
            await self._request_stop(active, StopIntent.KILL)
            return
        if row["state"] == RunState.PENDING.value:
            await self.db.transition(row["id"], RunState.KILLED, "killed on request before it started")
            await self._after_end(row, RunState.KILLED)
            await self._publish_run(row["id"])

    async def op_retry(self, target: str, state: str | None) -> dict[str, Any]:
        if _parse_run_name(target) is not None:
            if state is not None:
                raise Refusal("invalid", "--state goes with a study, not with one run")
            rows = [await self._run(target)]
        else:
            self._study(target)
            if state is None:
                raise Refusal("invalid", f"retry a run (e.g. {target}:7) or give --state failed to retry a study's runs")
            if state not in STATES:
                raise Refusal("invalid", f"unknown state {state!r}; use one of {', '.join(STATES)}")
            rows = await self.db.runs(study=target, state=state)
        created = []
        seen: set[tuple[str, int]] = set()
        for row in rows:
            if row["state"] in (RunState.PENDING.value, RunState.RUNNING.value):
                raise Refusal("conflict", f"{row['name']} is {row['state']}; kill it first to retry it")
            key = (row["study"], row["trial"])
            if key in seen:
                continue
            live = await self.db.runs(study=row["study"], trial=row["trial"],
                                      states=[RunState.PENDING.value, RunState.RUNNING.value, RunState.LOST.value],
                                      columns=("id",))
            if live:
                continue  # that trial already has an attempt under way
            seen.add(key)
            new = await self.db.add_retry(row["study"], row["trial"], f"retry of {row['name']} on request")
            created.append(new["name"])
            await self._publish_run(new["id"])
        self.wake.set()
        return {"retried": created}

    async def op_pause(self, study: str) -> dict[str, Any]:
        rt = self._study(study)
        rt.paused = True
        await self.db.set_paused(study, True)
        await self._publish_study(study)
        return {"study": study, "paused": True}

    async def op_resume(self, study: str) -> dict[str, Any]:
        rt = self._study(study)
        rt.paused = False
        rt.exhausted = not rt.suggester.adaptive  # an adaptive search that failed gets another go
        await self.db.set_paused(study, False)
        self.wake.set()
        await self._publish_study(study)
        return {"study": study, "paused": False}

    async def op_leaderboard(self, study: str, limit: int | None) -> dict[str, Any]:
        rt = self._study(study)
        if len(rt.spec.objectives) > 1:
            rows = self._pareto_board(rt, await self.db.runs(study=study, state=RunState.COMPLETED.value))
            rows = rows[:limit] if limit is not None else rows
        else:
            rows = await self.db.best_runs(study, rt.spec.objective.minimize, limit)
        return {"study": study, "metric": rt.spec.objective.metric, "goal": rt.spec.objective.goal,
                "objectives": [dataclasses.asdict(o) for o in rt.spec.objectives], "runs": rows}

    @staticmethod
    def _pareto_board(rt: StudyRuntime, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Runs with a value for every objective: the Pareto front first, each part by
        the first objective."""
        objectives = rt.spec.objectives
        scored = []
        for run in runs:
            values = dict(run["metrics"])
            if run["objective"] is not None:
                values[objectives[0].metric] = run["objective"]
            if all(o.metric in values for o in objectives):
                run["values"] = {o.metric: values[o.metric] for o in objectives}
                scored.append(run)
        front = pareto_front([tuple(r["values"][o.metric] for o in objectives) for r in scored],
                             tuple(o.minimize for o in objectives))
        for run, on_front in zip(scored, front):
            run["pareto"] = on_front
        first = objectives[0]
        scored.sort(key=lambda r: (not r["pareto"], r["values"][first.metric] * (1 if first.minimize else -1)))
        return scored

    async def op_best(self, study: str) -> dict[str, Any]:
        rt = self._study(study)
        board = await self.op_leaderboard(study, 1)
        predicted = await self._search(rt, rt.suggester.best, changes=False)
        return {"study": study, "observed": board["runs"][0] if board["runs"] else None, "predicted": predicted,
                "metric": board["metric"], "goal": board["goal"]}

    async def op_suggest(self, study: str, params: dict[str, Any]) -> dict[str, Any]:
        rt = self._study(study)
        values: dict[str, Any] = {}
        try:
            for name, raw in params.items():
                try:
                    param = rt.spec.param(name)
                except KeyError:
                    names = ", ".join(p.name for p in rt.spec.params)
                    raise Refusal("invalid", f"unknown parameter {name!r}; the study has {names}") from None
                values[name] = coerce_value(param, raw) if isinstance(raw, str) else raw
            full = complete_params(rt.spec, values)
            runs = await self._new_trials(rt, params=full)
        except (ValueError, SearchError) as exc:
            if isinstance(exc, Refusal):
                raise
            raise Refusal("invalid", str(exc)) from None
        self.wake.set()
        await self._publish_run(runs[0]["id"])
        return {"run": runs[0]["name"], "trial": runs[0]["trial"], "params": full}

    async def _study_summaries(self, only: str | None = None) -> list[dict[str, Any]]:
        counts = await self.db.state_counts()
        trials = await self.db.trial_counts()
        out = []
        for name, rt in self.studies.items():
            if only is not None and name != only:
                continue
            spec = rt.spec
            c = counts.get(name, {})
            best = await self.db.best_runs(name, spec.objective.minimize, 1)
            live = c.get("pending", 0) + c.get("running", 0) + c.get("lost", 0)
            done = not live and (rt.exhausted or (spec.max_trials is not None and trials.get(name, 0) >= spec.max_trials))
            out.append({
                "name": name, "algorithm": spec.algorithm, "paused": rt.paused, "max_trials": spec.max_trials,
                "trials": trials.get(name, 0), "parallel": spec.parallel, "gpus": spec.gpus, "priority": spec.priority,
                "counts": {s: c.get(s, 0) for s in STATES}, "metric": spec.objective.metric,
                "goal": spec.objective.goal, "best": best[0]["objective"] if best else None,
                "best_run": best[0]["name"] if best else None, "finished": done, "source": spec.source,
            })
        for name, why in self.broken_studies.items():
            if only is None or name == only:
                out.append({"name": name, "error": why})
        return out

    async def op_studies(self) -> list[dict[str, Any]]:
        return await self._study_summaries()

    async def _host_summary(self, name: str) -> dict[str, Any]:
        host = self.hosts[name]
        snap = self.snapshots.get(name)
        runs = [r for r in self.active.values() if r.host is host]
        held: dict[int, list[str]] = defaultdict(list)
        for r in runs:
            for g in r.gpus:
                held[g].append(r.name)
        gpus = []
        if snap is not None:
            for g in snap.gpus:
                gpus.append({**dataclasses.asdict(g), "runs": held.get(g.index, []),
                             "allowed": host.allowed_gpus is None or g.index in host.allowed_gpus,
                             "foreign": not held.get(g.index) and (
                                 g.memory_used_mib > host.busy_memory_mib
                                 or (g.utilization_pct or 0) > host.busy_utilization)})
        state, why = host.state
        return {"name": name, "state": state, "why": why, "down_since": host.down_since,
                "cpu_slots": host.cpu_slots, "cpu_used": sum(1 for r in runs if not r.gpus),
                "cpu_runs": [r.name for r in runs if not r.gpus], "gpus": gpus,
                "gpu_source": snap.source if snap else None, "gpu_error": snap.error if snap else None,
                "runs": [r.name for r in runs]}

    async def op_hosts(self) -> list[dict[str, Any]]:
        out = [await self._host_summary(name) for name in self.hosts]
        if self.inventory_error:
            out.append({"name": "hosts.toml", "state": "error", "why": self.inventory_error, "cpu_slots": 0,
                        "cpu_used": 0, "cpu_runs": [], "gpus": [], "gpu_source": None, "gpu_error": None,
                        "runs": [], "down_since": None})
        return out

    async def _edit_inventory(self, change: Callable[[list[HostConfig]], list[HostConfig]]) -> None:
        path = inventory_path(self.home)
        try:
            save_inventory(path, change(load_inventory(path)))
        except InventoryError as exc:
            raise Refusal("invalid", str(exc)) from None
        await self._reload_inventory()

    async def op_hosts_add(self, name: str, target: str, options: dict[str, Any]) -> dict[str, Any]:
        try:
            user, address, port = parse_target(target)
            values = {"address": address, **({"user": user} if user else {}), **({"port": port} if port else {}),
                      **options}
            config = make_host(name, values)
        except InventoryError as exc:
            raise Refusal("invalid", str(exc)) from None
        await self._edit_inventory(lambda hosts: add_host(hosts, config))
        host = self.hosts[name]
        await host.wait_up(5)  # type: ignore[attr-defined]
        return await self._host_summary(name)

    async def op_hosts_rm(self, name: str) -> dict[str, Any]:
        host = self.hosts.get(name)
        if isinstance(host, LocalHost):
            raise Refusal("invalid", "the local host is not in hosts.toml; set [local] enabled = false in config.toml")
        going = [r.name for r in self.active.values() if r.host is host]
        if going:
            raise Refusal("conflict", f"host {name} has {len(going)} run(s) going ({', '.join(going[:5])}); "
                                      f"`hypd hosts drain {name}` and remove it once they end, or kill them")
        await self._edit_inventory(lambda hosts: remove_host(hosts, name))
        return {"removed": name}

    async def op_hosts_drain(self, name: str, undo: bool) -> dict[str, Any]:
        host = self.hosts.get(name)
        if isinstance(host, LocalHost):
            host.draining = not undo  # the local host is not in hosts.toml: until the daemon restarts
            self.wake.set()
        else:
            await self._edit_inventory(lambda hosts: set_draining(hosts, name, not undo))
        return await self._host_summary(name)

    async def op_stop(self, kill_runs: bool) -> dict[str, Any]:
        names = [r.name for r in self.active.values()]
        if kill_runs:
            for run in list(self.active.values()):
                await self._request_stop(run, StopIntent.KILL)
            deadline = time.time() + self.config.kill_grace + 5
            while self.active and time.time() < deadline:
                await asyncio.sleep(self.config.poll_interval)
        asyncio.get_running_loop().call_soon(self.shutdown.set)
        return {"stopping": True, "killed": names if kill_runs else [],
                "left_running": [] if kill_runs else names}


def _report_all(suggester: Suggester, trial: int, reports: list[tuple[int, float, dict[str, float]]]) -> None:
    for step, _, values in reports:
        suggester.report(trial, step, values)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _space_change(old: StudySpec, new: StudySpec) -> str:
    """What differs between two studies' search spaces, or '' if nothing does."""
    if old.params != new.params:
        before = {p.name: p for p in old.params}
        after = {p.name: p for p in new.params}
        changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        return f"parameters differ: {', '.join(changed)}"
    if old.objectives != new.objectives:
        return "the objective differs"
    if old.algorithm != new.algorithm:
        return f"algorithm {old.algorithm} became {new.algorithm}"
    if (old.constraints, old.param_constraints) != (new.constraints, new.param_constraints):
        return "constraints differ"
    return ""


def _renamed_text(text: str, name: str) -> str:
    """The study file with its [study] name replaced, so the stored text parses as the
    study it is stored under."""
    import re

    out, n = re.subn(r'(?m)^(\s*name\s*=\s*)(".*?"|\'.*?\')', lambda m: m.group(1) + json.dumps(name), text, count=1)
    if n == 0:
        raise Refusal("invalid", "cannot rename the study: no name = \"...\" line under [study]")
    return out


def setup_logging(home: Path, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(home / "daemon.log")]
    if foreground:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(home: Path | None = None, *, foreground: bool = True) -> int:
    home = home or ipc.hypd_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    setup_logging(home, foreground)
    try:
        daemon = Daemon(home)
    except Exception as exc:  # a broken config.toml
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(daemon.run())
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return 1
    return 0
