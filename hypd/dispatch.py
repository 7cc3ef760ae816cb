"""Placing work: free capacity from the hosts' readings and the runs there, pending runs
and new trials from the studies, `scheduler.place` to match them, then launches.

It runs whenever something may have freed or added capacity or work (a run's processes
gone, a host up, a GPU reading that changed, a submit, a retry): `wake()` sets the event
it waits on, so a freed GPU takes its next run in the same turn of the loop. An adaptive
study's next trials are asked ahead in the background (hypd/ahead.py): a freed GPU takes
one of those, pending, with no search call on the way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from hypd import lifecycle as lc
from hypd.capacity import Holding, host_capacity
from hypd.display import trial_no
from hypd.hosts import Host, HostDownError, HostError
from hypd.ingest import RunData
from hypd.metrics import MetricsReader
from hypd.runs import Runs
from hypd.runstate import RunState, StopIntent
from hypd.scheduler import HostCapacity, HostChoice, StudyDemand, place
from hypd.store import Store
from hypd.studies import Studies, StudyRuntime
from hypd.study import StudySpec, render_commands, run_dir_path
from hypd.wrapper import PrepareStep, RunScript, gpu_env, prepare_heartbeat, script_text

log = logging.getLogger("hypd.dispatch")


class Dispatcher:
    def __init__(self, store: Store, studies: Studies, runs: Runs, hosts: Callable[[], dict[str, Host]],
                 home: Path) -> None:
        self.store = store
        self.studies = studies
        self.runs = runs
        self.hosts = hosts
        self.home = home
        self.wakeup = asyncio.Event()
        self.placing = False  # a placement is under way: its launches may not be in the core yet
        self.asking: dict[str, asyncio.Task[None]] = {}  # study -> its suggestions being asked ahead
        self.pending_trial: dict[int, int] = {}  # run id -> trial, of the pending runs the last demands named

    def wake(self) -> None:
        self.wakeup.set()

    async def serve(self) -> None:
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                self.placing = True
                try:
                    await self.place_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("placing runs failed; carrying on")
                finally:
                    self.placing = False
                self._refresh_ahead()  # after: a free slot takes a stale suggestion rather than wait for a fit
        finally:
            for task in self.asking.values():
                task.cancel()

    # ------------------------------------------------------------ suggestions asked ahead

    def _refresh_ahead(self) -> None:
        """Each adaptive study keeps suggestions ready (hypd/ahead.py): those that need
        asking again or topping up are asked in the background, one task per study."""
        if self.runs.stopping:
            return
        for name, rt in self.studies.all.items():
            if name not in self.asking and self.studies.wants_ahead(rt):
                task = asyncio.create_task(self._ask_ahead(name, rt), name=f"ask-ahead {name}")
                self.asking[name] = task

    async def _ask_ahead(self, study: str, rt: StudyRuntime) -> None:
        try:
            replaced, rows = await self.studies.ask_ahead(rt)
            for trial in replaced:
                self.runs.core.replaced(study, trial)
            for row in rows:
                self.runs.core.queued(study, row["trial"], row["id"], replicate=row["replicate"])
            for row in rows:
                await self.runs.publish_run(row["id"])
            if rows:
                await self.runs.publish_study(study)
        except asyncio.CancelledError:
            raise
        except Exception:  # a search that breaks must not stop the others
            if self.studies.get(study) is rt:  # (not merely removed meanwhile)
                log.exception("search of study %s failed asking ahead; it proposes nothing more until "
                              "resubmitted", study)
            rt.exhausted = True
        finally:
            self.asking.pop(study, None)
        self.wake()  # its new pending runs, and maybe another refresh (results came meanwhile)

    # ------------------------------------------------------------ capacity and demand

    def capacities(self) -> list[HostCapacity]:
        out = []
        for name, host in self.hosts().items():
            holding = []
            for attempt in self.runs.core.held(name):
                data = self.runs.data.get(attempt.id)
                holding.append(Holding(attempt.gpus, data.gpu_mem_mib if data else 0,
                                       data.started if data else 0.0))
            out.append(host_capacity(host.rules(), host.gpus(), holding, self.runs.released.get(name, [])))
        return out

    async def _demands(self) -> list[StudyDemand]:
        running: dict[str, int] = defaultdict(int)
        for attempt in self.runs.core.live():
            if attempt.phase is not lc.Phase.LOST:
                running[attempt.study] += 1
        demands = []
        for name, rt in self.studies.all.items():
            spec = rt.spec
            room = spec.parallel - running[name]
            if rt.paused or room <= 0:
                continue
            withdrawing = rt.ahead.withdrawing  # being replaced this moment: not to be launched
            waiting = [r for r in await self.store.runs(state=RunState.PENDING.value, study=name,
                                                        limit=room + len(withdrawing), columns=("id", "trial"))
                       if rt.ahead.launchable(r["trial"])][:room]
            self.pending_trial.update((r["id"], r["trial"]) for r in waiting)
            can_create = 0
            if rt.suggester.adaptive and not rt.exhausted:
                can_create = max(0, min(room - len(waiting), ((spec.max_trials or 0) - rt.trials) * spec.replicates))
            if waiting or can_create:
                demands.append(StudyDemand(name, tuple(r["id"] for r in waiting), can_create, running[name],
                                           spec.parallel, spec.gpus, spec.priority, False, rt.last_served,
                                           spec.gpu_mem_mib, await self._hosts_for(spec)))
        return demands

    async def _hosts_for(self, spec: StudySpec) -> HostChoice:
        """Where the study's runs may go: as its file says, less the hosts where its
        prepare step (as it is now) failed."""
        failed = self.runs.prepare_failed.get(spec.name)
        if not failed or spec.prepare is None:
            return spec.hosts
        hosts = self.hosts()
        excluded = []
        for name, (where, _) in failed.items():
            host = hosts.get(name)
            try:
                if host is not None and where == await asyncio.to_thread(self.runs.prepare_dir, host, spec):
                    excluded.append(name)
            except OSError:
                excluded.append(name)
        return dataclasses.replace(spec.hosts, excluded=tuple(excluded))

    async def place_once(self) -> None:
        if self.runs.stopping:
            return
        capacities = self.capacities()
        if not any(c.free_gpus or c.free_cpu_slots or c.job_slots for c in capacities if c.accepting):
            return
        self.pending_trial.clear()
        placements = place(capacities, await self._demands())
        if not placements:
            return
        # New trials: one search call per study for all its free slots, studies in parallel.
        wanted: dict[str, int] = defaultdict(int)
        for p in placements:
            if p.run_id is None:
                wanted[p.study] += 1
        created: dict[str, list[int]] = {}

        async def ask(study: str, count: int) -> None:
            rt = self.studies.all[study]
            try:
                rows = await self.studies.new_trials(rt, count)
            except Exception:  # a search that breaks must not stop the others
                log.exception("search of study %s failed; it proposes nothing more until resubmitted", study)
                rt.exhausted = True
                created[study] = []
                return
            if len(rows) < count * rt.spec.replicates:
                rt.exhausted = True
            rt.ahead.asked_on_path(len({row["trial"] for row in rows}))
            for row in rows:
                self.runs.core.queued(study, row["trial"], row["id"], replicate=row["replicate"])
            created[study] = [r["id"] for r in rows]

        # A trial brings all its replicates: as many trials as fill the slots (the
        # replicates left over wait, pending, for the next slots).
        await asyncio.gather(*(ask(s, -(-n // self.studies.all[s].spec.replicates)) for s, n in wanted.items()))
        now = time.time()
        launches = []
        for p in placements:
            run_id = p.run_id
            rt = self.studies.all[p.study]
            if run_id is None:
                ids = created.get(p.study) or []
                if not ids:
                    continue
                run_id = ids.pop(0)
            elif not rt.ahead.take(self.pending_trial.get(run_id, -1), now):
                continue  # being replaced this moment (the search has more data): its fresh trial comes next
            rt.last_served = now
            launches.append(self._launch(run_id, self.hosts()[p.host], p.gpus))
        # Launched together: each waits on its own host, not on the others.
        for outcome in await asyncio.gather(*launches, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("launch failed: %s", outcome, exc_info=outcome)
        for study in {p.study for p in placements}:
            await self.runs.publish_study(study)

    # ------------------------------------------------------------ one launch

    async def _launch(self, run_id: int, host: Host, gpus: tuple[int, ...]) -> None:
        row = await self.store.run_by_id(run_id)
        if row is None or row["state"] != RunState.PENDING.value:
            return
        rt = self.studies.all[row["study"]]
        spec = rt.spec
        root = Path(host.root)
        run_dir = run_dir_path(root, spec, row["run_no"], row["params"])
        ctl_dir = root / "runs" / spec.name / f"{row['run_no']:04d}"
        # The log is always on this machine: a remote host's watcher streams it here.
        log_path = self.home / "runs" / spec.name / f"{row['run_no']:04d}" / "log"
        prepare = None
        if spec.prepare is not None:
            try:
                prepare = PrepareStep(spec.prepare.command,
                                      await asyncio.to_thread(self.runs.prepare_dir, host, spec),
                                      heartbeat=prepare_heartbeat(spec.keepalive))
            except OSError as exc:
                log.error("%s: cannot read the prepare step's files: %s", row["name"], exc)
                return  # stays pending
        stages = render_commands(spec, row["params"], run_dir=str(run_dir), run=row["name"],
                                 run_no=row["run_no"], trial=row["trial"], replicate=row["replicate"],
                                 prepare_dir=prepare.dir if prepare else "")
        env = dict(spec.env)
        if gpus or not spec.gpus:
            env.update(gpu_env(gpus) if gpus else {"CUDA_VISIBLE_DEVICES": ""})
        # else: a batch host (Slurm) gives the job its GPUs, and sets CUDA_VISIBLE_DEVICES
        env.update(HYPD_RUN=row["name"], HYPD_STUDY=spec.name, HYPD_TRIAL=str(trial_no(row["trial"])),
                   HYPD_REPLICATE=str(row["replicate"]), HYPD_RUN_DIR=str(run_dir))
        try:
            workdir = await host.prepare_study(spec)
        except HostError as exc:
            log.error("%s: cannot prepare study on %s: %s", row["name"], host.name, exc)
            return  # stays pending; the host's state says why
        script = RunScript(run=row["name"], ctl_dir=str(ctl_dir), run_dir=str(run_dir), workdir=workdir,
                           env=env, stages=stages, setup=host.setup, prepare=prepare)
        now = time.time()
        deadline = now + spec.timeout if spec.timeout else None
        where = (f"{host.name}:{','.join(map(str, gpus))}" if gpus
                 else f"{host.name} ({spec.gpus} GPU{'s' if spec.gpus > 1 else ''})" if spec.gpus
                 else f"{host.name} (cpu)")
        await self.store.transition(run_id, RunState.RUNNING, f"started on {where}", host=host.name,
                                    gpus=list(gpus) if gpus or not spec.gpus else None,  # None: the host's choice
                                    run_dir=str(run_dir), ctl_dir=str(ctl_dir), log_path=str(log_path),
                                    deadline=deadline, log_offset=0)
        self.runs.core.rules[spec.name] = lc.study_rules(spec)
        self.runs.core.lost_after[host.name] = host.lost_after
        self.runs.launching(
            lc.Attempt(run_id, row["name"], spec.name, row["trial"], host.name, gpus, deadline=deadline,
                       replicate=row["replicate"]),
            RunData(str(ctl_dir), str(log_path), MetricsReader(spec.metrics_regex), gpu_mem_mib=spec.gpu_mem_mib,
                    started=now))
        if self.runs.stopping:  # `hypd stop --kill-runs` came while this launch was under way
            self.runs.feed(lc.StopRequested(run_id, StopIntent.KILL, "killed: the daemon was stopped", now))
        _set_aside(log_path.parent, row["name"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await host.launch(run_id, str(ctl_dir), script_text(script), str(log_path), gpus=spec.gpus,
                              label=row["name"])
        except HostError as exc:
            self.runs.feed(lc.LaunchFailed(run_id, str(exc), reached_host=not isinstance(exc, HostDownError)))
            return
        log.info("%s launching on %s", row["name"], where)
        await self.runs.publish_run(run_id)


def _set_aside(folder: Path, run: str) -> None:
    """A run never writes into an earlier run's folder: one already there with something in
    it belongs to a run the store no longer holds (it lost data), and is renamed, not reused."""
    try:
        if not any(folder.iterdir()):
            return
    except OSError:  # not there (the usual case)
        return
    aside = folder.with_name(f"{folder.name}.set-aside-{int(time.time())}")
    folder.rename(aside)
    log.warning("%s: its folder %s held an earlier run's files (one the store has lost?); moved to %s",
                run, folder, aside)
