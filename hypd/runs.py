"""The shell around the run-lifecycle core: events in from hosts and users, actions out to
the store, the hosts, the search and the scheduler.

One task (`serve`) takes events off a queue in order and hands them to the core; the
actions of one event are carried out in order, chained after the previous actions of the
same run, while other runs go on (a slow store write or search call for one run does not
hold up the others). Store writes of records are retried until they succeed: a run's end
is never dropped, and a report is stored exactly once because a run's offset moves only
with the commit of the reports read up to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypd import lifecycle as lc
from hypd.capacity import Released
from hypd.hosts import Host, HostError
from hypd.ingest import LogIngest, RunData
from hypd.metrics import MetricsReader
from hypd.prepare import prepare_dir
from hypd.runstate import LIVE, RunState, StopIntent
from hypd.store import Store, StoreUnavailable
from hypd.studies import Studies
from hypd.study import StudySpec
from hypd.wrapper import PREPARE_STAGE

log = logging.getLogger("hypd.runs")

TICK = 0.25  # seconds between the core's clock ticks (timeouts, lost hosts, store retries)
RELEASED_KEEP = 120.0  # seconds a release is remembered for capacity (until a newer reading)


class Runs:
    def __init__(self, store: Store, studies: Studies, hosts: Callable[[], dict[str, Host]],
                 publish_run: Callable[[int], Awaitable[None]], publish_study: Callable[[str], Awaitable[None]],
                 publish_log: Callable[[str, str], None], wake: Callable[[], None]) -> None:
        self.store = store
        self.studies = studies
        self.hosts = hosts
        self.publish_run = publish_run
        self.publish_study = publish_study
        self.publish_log = publish_log
        self.wake = wake
        self.core = lc.Lifecycle()
        self.data: dict[int, RunData] = {}
        self.ingest = LogIngest(store, studies, self.data, self.core.attempts, self.feed, publish_run, publish_log)
        self.released: dict[str, list[Released]] = {}
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self._chains: dict[object, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False  # `hypd stop --kill-runs`: nothing new, and every run ends
        # [prepare]: how many times each study's step was asked for again, and the hosts
        # where it failed (study -> host -> (its folder there, why)): no run of that
        # study goes there until the step changes or is asked for again.
        self.prepare_generation: dict[str, int] = {}
        self.prepare_failed: dict[str, dict[str, tuple[str, str]]] = {}
        self.released_run: Callable[[int, str], None] = lambda run, study: None  # its processes gone, GPUs free

    # ------------------------------------------------------------ in

    def feed(self, event: object) -> None:
        """From hosts (their sink) and from the shell itself; handled in order by serve."""
        self.events.put_nowait(event)

    async def serve(self) -> None:
        ticker = asyncio.create_task(self._tick(), name="runs-tick")
        try:
            while True:
                event = await self.events.get()
                if isinstance(event, lc.HostDown | lc.HostUp):
                    self.wake()
                try:
                    actions = self.core.handle(event)  # type: ignore[arg-type]
                except Exception:  # a bug in one rule must not stop every run
                    log.exception("the run core failed on %r", event)
                    continue
                if actions:
                    self._carry_out(getattr(event, "run", None), actions)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await self.drain()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.feed(lc.Tick(time.time()))

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the actions under way (at shutdown)."""
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _carry_out(self, key: object, actions: list[lc.Action]) -> None:
        """Each run's actions go after that run's earlier ones (one event, a host back or a
        tick, may act on many runs); an action without a run (a retry, a tell) goes with
        the run whose action came before it."""
        groups: dict[object, list[lc.Action]] = {}
        for action in actions:
            key = getattr(action, "run", None) or key
            groups.setdefault(key, []).append(action)
        for group_key, group in groups.items():
            self._chain(group_key, group)

    def _chain(self, key: object, actions: list[lc.Action]) -> None:
        previous = self._chains.get(key) if key is not None else None
        task = asyncio.create_task(self._run_actions(previous, actions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if key is not None:
            self._chains[key] = task
            task.add_done_callback(lambda t, k=key: self._chains.pop(k, None) if self._chains.get(k) is t else None)

    async def _run_actions(self, previous: asyncio.Task[None] | None, actions: list[lc.Action]) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        for action in actions:
            try:
                await self._act(action)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("carrying out %r failed", action)

    # ------------------------------------------------------------ out

    async def _act(self, action: lc.Action) -> None:
        if isinstance(action, lc.Ingest):
            await self.ingest(action)
        elif isinstance(action, lc.Record):
            await self._durably(self.store.transition, action.run, action.state, action.reason,
                                exit_code=action.exit_code, exit_stage=action.stage)
            if action.stage == PREPARE_STAGE and action.state is RunState.FAILED:
                await self._prepare_failed(action)
            await self.publish_run(action.run)  # capacity changes with its Release, not here
        elif isinstance(action, lc.Persist):
            await self._durably(self.store.update_run, action.run, **dict(action.fields))
        elif isinstance(action, lc.Signal):
            await self._host_call(action.host, lambda h: h.kill(action.run))
        elif isinstance(action, lc.Watch):
            data = self.data.get(action.run)
            if data is not None:
                await self._host_call(action.host, lambda h: h.watch(action.run, data.ctl_dir, data.log_path,
                                                                     action.offset, action.pid, action.start))
        elif isinstance(action, lc.Unwatch):
            await self._host_call(action.host, lambda h: h.unwatch(action.run))
        elif isinstance(action, lc.Release):
            self._release(action)
            self.released_run(action.run, action.study)  # after: fetching its artifacts never holds its GPUs
        elif isinstance(action, lc.Requeue):
            await self._durably(self.store.transition, action.run, RunState.PENDING, action.reason, host=None,
                                gpus=None, started=None, ctl_dir=None, log_path=None, deadline=None, pid=None,
                                proc_start=None)
            await self.publish_run(action.run)
            self.wake()
        elif isinstance(action, lc.Retry):
            await self._retry(action)
        elif isinstance(action, lc.Supersede):
            await self._supersede(action)
        elif isinstance(action, lc.Tell):
            # Retried like a record: a tell whose store write failed would otherwise wait
            # for the study's next ending (none, for its last trial). Telling again is
            # safe: the search ignores a trial it was told about already.
            await self._durably(self.studies.tell, action.study)
            await self.publish_study(action.study)
            rt = self.studies.get(action.study)
            if rt is not None and self.studies.wants_ahead(rt):
                self.wake()  # its suggestions asked ahead are stale now: the dispatcher asks again
        elif isinstance(action, lc.PauseStudy):
            await self._pause_study(action)
        elif isinstance(action, lc.Note):
            getattr(log, action.level)("%s", action.text)

    async def _pause_study(self, action: lc.PauseStudy) -> None:
        rt = self.studies.get(action.study)
        if rt is None or rt.paused:
            return
        data = self.data.get(action.run)
        last = data.last_line if data is not None and data.last_line else ""
        if not last:  # nothing in its log (a launch that failed): how it ended
            row = await self.store.run_by_id(action.run)
            last = row["reason"] if row else ""
        reason = f"{action.reason} — last error: {last}" if last else action.reason
        await self._durably(self.studies.set_paused, rt, True, reason)
        log.warning("study %s paused: %s (`hypd resume %s` carries on)", action.study, reason, action.study)
        await self.publish_study(action.study)

    async def _durably(self, write: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """A write that must happen: retried while the store is unavailable (locked by
        another process, disk full), with one log line per trouble."""
        delay = 0.2
        troubled = False
        while True:
            try:
                result = await write(*args, **kwargs)
            except StoreUnavailable as exc:
                if not troubled:
                    log.warning("store unavailable (%s); retrying until it takes the write", exc)
                    troubled = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if troubled:
                log.info("store available again")
            return result

    async def _host_call(self, host_name: str, call: Callable[[Host], Awaitable[None]]) -> None:
        host = self.hosts().get(host_name)
        if host is None:
            return
        try:
            await call(host)
        except (HostError, OSError, ConnectionError) as exc:
            log.warning("host %s: %s", host_name, exc)

    # ------------------------------------------------------------ trials

    async def _retry(self, action: lc.Retry) -> None:
        if self.stopping:
            return
        row = await self._durably(self.store.add_retry, action.study, action.trial, action.reason,
                                  action.replicate)
        self.core.queued(action.study, action.trial, row["id"], replicate=action.replicate)
        log.info("%s:%d: %s as %s", action.study, action.trial, action.reason, row["name"])
        await self.publish_run(row["id"])
        self.wake()

    async def _supersede(self, action: lc.Supersede) -> None:
        attempts = await self.store.runs(study=action.study, trial=action.trial,
                                         states=[RunState.PENDING.value, RunState.RUNNING.value,
                                                 RunState.QUEUED.value],
                                         columns=("id", "study", "run_no", "trial", "replicate", "state"))
        for row in attempts:
            if row["id"] != action.keep and row["replicate"] == action.replicate:
                await self.kill(row, action.reason)

    async def kill(self, row: dict[str, Any], reason: str = "", intent: StopIntent = StopIntent.KILL) -> None:
        """End a run: a live one through its host, a pending one at once."""
        if row["id"] in self.core.attempts:
            self.feed(lc.StopRequested(row["id"], intent, reason, time.time()))
            return
        if row["state"] == RunState.PENDING.value:
            await self._durably(self.store.transition, row["id"], RunState.KILLED,
                                reason or "killed on request before it started")
            actions = self.core.dropped(row["study"], row["trial"], row["id"], RunState.KILLED, row["replicate"])
            self._carry_out(row["id"], actions)
            await self.publish_run(row["id"])

    # ------------------------------------------------------------ capacity

    def _release(self, action: lc.Release) -> None:
        data = self.data.pop(action.run, None)
        now = time.time()
        kept = [r for r in self.released.get(action.host, []) if now - r.at < RELEASED_KEEP]
        for gpu in action.gpus:
            kept.append(Released(gpu, now, data.gpu_mem_mib if data else 0, data.started if data else 0.0))
        self.released[action.host] = kept
        self.wake()

    # ------------------------------------------------------------ starting runs

    def launching(self, attempt: lc.Attempt, data: RunData) -> None:
        """A run the scheduler is about to launch: the core watches it from now on."""
        self.data[attempt.id] = data
        self.core.adopt(attempt)

    def prepare_dir(self, host: Host, spec: StudySpec) -> str:
        return prepare_dir(host.root, spec, self.prepare_generation.get(spec.name, 0))

    async def _prepare_failed(self, action: lc.Record) -> None:
        """A run's prepare step failed on its host: that host takes no more of the study's
        runs until the step changes or `hypd retry STUDY --prepare`."""
        run = await self.store.run_by_id(action.run)
        rt = self.studies.get(run["study"]) if run else None
        host = self.hosts().get(run["host"] or "") if run else None
        if run is None or rt is None or host is None or rt.spec.prepare is None:
            return
        study, host_name = run["study"], run["host"]
        try:
            where = await asyncio.to_thread(self.prepare_dir, host, rt.spec)
        except OSError:
            return
        if self.prepare_failed.get(study, {}).get(host_name, ("", ""))[0] == where:
            return  # known already (the runs that waited for it fail with it)
        why = f"prepare failed on {host_name}: {action.reason} (see {run['name']}'s log)"
        await self._durably(self.store.add_prepare_failure, study, host_name, where, why)
        self.prepare_failed.setdefault(study, {})[host_name] = (where, why)
        log.error("study %s: %s; its runs go to other hosts (hypd retry %s --prepare once it is fixed)",
                  study, why, study)
        await self.publish_study(study)
        self.wake()

    async def recover(self) -> None:
        """At start: adopt the runs that went on while no daemon watched them, queue the
        pending ones, and tell the search what it missed."""
        self.prepare_generation = await self.store.prepare_generations()
        for study, host_name, where, why in await self.store.prepare_failures():
            self.prepare_failed.setdefault(study, {})[host_name] = (where, why)
        hosts = self.hosts()
        for study, rt in self.studies.all.items():
            self.core.rules[study] = lc.study_rules(rt.spec)
        for name, host in hosts.items():
            self.core.lost_after[name] = host.lost_after
        rows = await self.store.runs(states=[s.value for s in LIVE] + [RunState.PENDING.value],
                                     columns=("id", "study", "run_no", "trial", "replicate", "state", "host", "gpus", "pid",
                                              "proc_start", "ctl_dir", "log_path", "log_offset", "reports",
                                              "metrics", "objective", "last_line", "deadline", "stop_intent",
                                              "stop_reason", "started", "reason", "keepalive"))
        # What the store knows of each replicate of a trial: failed attempts, a completed one.
        failures: dict[tuple[str, int, int], int] = {}
        settled: set[tuple[str, int, int]] = set()
        for row in await self.store.runs(states=[RunState.FAILED.value, RunState.LOST.value,
                                                 RunState.COMPLETED.value],
                                         columns=("study", "trial", "replicate", "state")):
            key = (row["study"], row["trial"], row["replicate"])
            if row["state"] == RunState.COMPLETED.value:
                settled.add(key)
            else:
                failures[key] = failures.get(key, 0) + 1
        for row in rows:
            key = (row["study"], row["trial"], row["replicate"])
            if row["state"] == RunState.PENDING.value:
                self.core.queued(row["study"], row["trial"], row["id"], failures.get(key, 0), row["replicate"])
                continue
            host = hosts.get(row["host"] or "")
            rt = self.studies.get(row["study"])
            if host is None or rt is None:
                why = f"host {row['host']} is not configured" if host is None else "its study cannot be loaded"
                log.error("run %s cannot be adopted: %s", row["name"], why)
                continue
            self.data[row["id"]] = RunData(row["ctl_dir"], row["log_path"],
                                           MetricsReader(rt.spec.metrics_regex, row["reports"]),
                                           dict(row["metrics"] or {}), row["objective"], row["last_line"],
                                           rt.spec.gpu_mem_mib, row["started"] or 0.0)
            attempt = lc.Attempt(
                row["id"], row["name"], row["study"], row["trial"], row["host"], tuple(row["gpus"] or ()),
                lc.Phase.LOST if row["state"] == RunState.LOST.value else lc.Phase.RUNNING,
                row["pid"], row["proc_start"], row["deadline"],
                StopIntent(row["stop_intent"]) if row["stop_intent"] else None, row["stop_reason"] or "",
                log_size=row["log_offset"], stored=row["log_offset"], asked=row["log_offset"],
                unreachable_since=None if host.up else (host.down_since or time.time()), replicate=row["replicate"],
                keepalive=row["keepalive"],
                queued=(row["reason"].removeprefix("queued: ") or "queued") if row["state"] == RunState.QUEUED.value
                else None)
            self._carry_out(row["id"], self.core.adopt(attempt, failures.get(key, 0), key in settled))
            log.info("adopted %s (pid %s)", row["name"], row["pid"] or "unknown")
        for study in self.studies.all:
            self._carry_out(("tell", study), [lc.Tell(study, -1)])

