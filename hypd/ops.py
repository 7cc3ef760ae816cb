"""The socket's ops on studies: what `hypd submit`, `pause`, `resume`, `leaderboard`,
`best`, `suggest`, `studies`, `export` ask of the daemon, and the lookups of a study or a
run by name that every op module shares. Each op is `op_<name>` with the arguments
hypd/ipc.py declares for it; a refusal is a `Refusal` with a stable code. A run's ops are
in hypd/runops.py, a study's budget and lifetime in hypd/budget.py."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypd import __version__
from hypd.lifecycle import study_rules
from hypd.metrics import pareto_front
from hypd.runs import Runs
from hypd.runstate import STATES, RunState
from hypd.scheduler import no_host_note
from hypd.search import SearchError
from hypd.server import Refusal
from hypd.store import EXPORT_REPORT_FIELDS, EXPORT_RUN_FIELDS, Store
from hypd.studies import Studies, StudyRuntime
from hypd.study import (
    StudyError,
    StudySpec,
    coerce_value,
    complete_params,
    parse_study,
)

log = logging.getLogger("hypd.ops")

def parse_run_name(target: str) -> tuple[str, int] | None:
    study, sep, number = target.rpartition(":")
    if not sep or not study:
        return None
    try:
        return study, int(number)
    except ValueError:
        return None


class Ops:
    def __init__(self, home: Path, store: Store, studies: Studies, runs: Runs, wake: Callable[[], None],
                 publish_run: Callable[[int], Awaitable[None]], publish_study: Callable[[str], Awaitable[None]],
                 max_gpus: Callable[[], int], remote_hosts: Callable[[], list[str]],
                 host_labels: Callable[[], dict[str, tuple[str, ...]]]) -> None:
        self.home = home
        self.store = store
        self.studies = studies
        self.runs = runs
        self.wake = wake
        self.publish_run = publish_run
        self.publish_study = publish_study
        self.max_gpus = max_gpus
        self.remote_hosts = remote_hosts
        self.host_labels = host_labels  # host name -> its labels, for a study's `hosts` choice
        self.started = time.time()

    def _study(self, name: str) -> StudyRuntime:
        rt = self.studies.all.get(name)
        if rt is None:
            if name in self.studies.broken:
                raise Refusal("invalid", f"study {name} cannot be loaded: {self.studies.broken[name]}")
            if name in self.studies.loading:
                raise Refusal("busy", f"study {name} is still loading (the daemon has just started); "
                                      "try again shortly")
            known = ", ".join(sorted(self.studies.all)) or "none yet"
            raise Refusal("not_found", f"no study {name!r} (studies: {known})")
        return rt

    async def _run(self, target: str) -> dict[str, Any]:
        parsed = parse_run_name(target)
        if parsed is None:
            raise Refusal("invalid", f"{target!r} is not a run name; runs are named STUDY:N, e.g. quadratic:7")
        self._study(parsed[0])
        row = await self.store.run(*parsed)
        if row is None:
            raise Refusal("not_found", f"no run {target}")
        return row

    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "home": str(self.home), "uptime": time.time() - self.started}

    async def op_submit(self, path: str, text: str, as_name: str | None) -> dict[str, Any]:
        base_dir = str(Path(path).parent)
        stored_text = text  # under --as, the study's name is the stored study's, not its text's
        try:  # off the event loop: a file at the caps still takes a while to check
            spec = await asyncio.to_thread(parse_study, text, path, base_dir, as_name)
        except StudyError as exc:
            raise Refusal("invalid", str(exc)) from None
        warnings = list(spec.warnings) + self._workdir_check(spec)
        most = self.max_gpus()
        if spec.gpus > most:
            warnings.append(f"runs need {spec.gpus} GPU(s) but the largest host offers {most}: they wait "
                            "until a host with enough GPUs joins")
        if note := no_host_note(spec.hosts, self.host_labels()):
            warnings.append(f"{note}; add one (hypd hosts add NAME ADDRESS --label ...) or change hosts")
        existing = self.studies.all.get(spec.name)
        if existing is not None:
            change = _space_change(existing.spec, spec)
            if change:
                raise Refusal("conflict", f"study {spec.name} exists with a different search space ({change}); "
                                          f"submit it under another name with --as NAME")
            existing.spec = spec
            self.runs.core.rules[spec.name] = study_rules(spec)
            await self.studies.call(existing, existing.suggester.update_spec, spec, changes=False)
            existing.exhausted = not existing.suggester.adaptive  # (as `resume`: an adaptive search gets another go)
            await self.store.update_study_source(spec.name, path, stored_text, base_dir)
            await self.studies.set_paused(existing, False)
            self.runs.core.resumed(spec.name)
            # A grid with new values or a larger max_trials, a random study with a larger
            # max_trials, a study stored by an older hypd without its trials (killed
            # mid-submit): the trials the search has not queued yet, now.
            rows = await self.studies.top_up(existing)
            self._queue(spec.name, rows)
            await self.publish_study(spec.name)
            return {"study": spec.name, "continued": True, "queued": _trials(rows), "warnings": warnings}
        try:
            _rt, rows = await self.studies.create(spec, path, stored_text, base_dir)
        except SearchError as exc:
            raise Refusal("invalid", f"{path}: study.algorithm: {exc}") from None
        self.runs.core.rules[spec.name] = study_rules(spec)
        self._queue(spec.name, rows)
        log.info("study %s submitted from %s (%d trials queued)", spec.name, path, _trials(rows))
        await self.publish_study(spec.name)
        return {"study": spec.name, "continued": False, "queued": _trials(rows), "warnings": warnings}

    def _queue(self, study: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.runs.core.queued(study, row["trial"], row["id"], replicate=row["replicate"])
        self.wake()

    def _workdir_check(self, spec: StudySpec) -> list[str]:
        """A workdir missing here is refused when every run would start here (or its files
        are copied from here); with SSH hosts it may exist on them only: a warning then."""
        if os.path.isdir(spec.workdir):
            return []
        remote = self.remote_hosts()
        if spec.files or not remote:
            raise Refusal("invalid", f"{spec.source}: run.workdir: {spec.workdir} does not exist on this machine; "
                                     "create it, or fix workdir (relative to the study file)")
        return [f"run.workdir {spec.workdir} does not exist on this machine: runs fail on any host where it "
                f"does not exist either (SSH hosts: {', '.join(remote)})"]

    async def op_pause(self, study: str) -> dict[str, Any]:
        rt = self._study(study)
        await self.studies.set_paused(rt, True)
        await self.publish_study(study)
        return {"study": study, "paused": True}

    async def op_resume(self, study: str) -> dict[str, Any]:
        rt = self._study(study)
        rt.exhausted = not rt.suggester.adaptive  # an adaptive search that failed gets another go
        await self.studies.set_paused(rt, False)
        self.runs.core.resumed(study)
        self.wake()
        await self.publish_study(study)
        return {"study": study, "paused": False}

    async def op_leaderboard(self, study: str, limit: int | None, runs: bool = False) -> dict[str, Any]:
        rt = self._study(study)
        if len(rt.spec.objectives) > 1:
            rows = self._pareto_board(rt, await self.store.runs(study=study, state=RunState.COMPLETED.value))
            rows = rows[:limit] if limit is not None else rows
        elif runs:  # every run with a result (each replicate), best first
            order = "objective IS NULL, objective" + ("" if rt.spec.objective.minimize else " DESC") + ", id"
            rows = await self.store.runs(study=study, states=[RunState.COMPLETED.value, RunState.STOPPED.value],
                                         limit=limit, order=order)
        else:
            rows = await self.store.best_runs(study, rt.spec.objective.minimize, limit,
                                              by_mean=rt.spec.replicates > 1)
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
        predicted = await self.studies.call(rt, rt.suggester.best, changes=False)
        observed = board["runs"][0] if board["runs"] else None
        # Where the best run's files are: what was fetched of them, else its folder on its host.
        artifacts = await self.store.artifacts(observed["id"]) if observed and "id" in observed else None
        return {"study": study, "observed": observed, "predicted": predicted,
                "metric": board["metric"], "goal": board["goal"], "artifacts": artifacts, "fetch": list(rt.spec.fetch)}

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
            runs = await self.studies.new_trials(rt, params=full)
            for run in runs:
                self.runs.core.queued(study, run["trial"], run["id"], replicate=run["replicate"])
        except (ValueError, SearchError) as exc:
            if isinstance(exc, Refusal):
                raise
            raise Refusal("invalid", str(exc)) from None
        self.wake()
        await self.publish_run(runs[0]["id"])
        return {"run": runs[0]["name"], "trial": runs[0]["trial"], "params": full}

    async def study_summaries(self, only: str | None = None, archived: bool = True) -> list[dict[str, Any]]:
        """Each study's progress; archived ones too unless `archived` is False."""
        counts = await self.store.state_counts()
        trials = await self.store.trial_counts()
        outcomes = await self.store.trial_outcomes()
        out = []
        host_labels = self.host_labels()
        for name, rt in self.studies.all.items():
            if (only is not None and name != only) or (rt.archived and not archived):
                continue
            spec = rt.spec
            c = counts.get(name, {})
            best = await self.store.best_runs(name, spec.objective.minimize, 1, by_mean=spec.replicates > 1)
            live = c.get("pending", 0) + c.get("running", 0) + c.get("queued", 0) + c.get("lost", 0)
            done = not live and (rt.exhausted or (spec.max_trials is not None and trials.get(name, 0) >= spec.max_trials))
            o = outcomes.get(name, {})
            out.append({
                "name": name, "algorithm": spec.algorithm, "paused": rt.paused, "pause_reason": rt.pause_reason,
                "max_trials": spec.max_trials, "trials": trials.get(name, 0), "parallel": spec.parallel,
                "gpus": spec.gpus, "priority": spec.priority, "counts": {s: c.get(s, 0) for s in STATES},
                "outcomes": {s: o.get(s, 0) for s in STATES},
                "done": o.get("completed", 0) + o.get("stopped", 0),
                # Hand-given trials may go past max_trials: never "13/12".
                "total": max(spec.max_trials or 0, trials.get(name, 0)),
                "retried": sum(c.values()) - sum(o.values()), "metric": spec.objective.metric,
                "goal": spec.objective.goal,
                "best": (best[0]["mean"] if spec.replicates > 1 else best[0]["objective"]) if best else None,
                "best_run": best[0]["name"] if best else None, "finished": done, "source": spec.source,
                "hosts": spec.hosts.describe(), "hosts_note": no_host_note(spec.hosts, host_labels),
                "archived": rt.archived,
                "prepare_failed": {h: why for h, (_, why) in self.runs.prepare_failed.get(name, {}).items()},
                **({"ahead": rt.ahead.summary()} if rt.suggester.adaptive else {}),
            })
        for name, why in self.studies.broken.items():
            if only is None or name == only:
                out.append({"name": name, "error": why})
        for name in sorted(self.studies.loading):
            if only is None or name == only:
                out.append({"name": name, "state": "loading"})
        return out

    async def op_export(self, study: str, reports: bool, after: Any, limit: int) -> dict[str, Any]:
        """A page of a study's runs (or reports): the client asks page after page, so a
        study of any size goes out without one huge reply."""
        rt = self._study(study)
        limit = max(1, min(limit, 20000))
        # The metric names (the table's columns) with the first page only: on later pages
        # they would cost a scan of every report each time.
        metrics = await self.store.metric_names(study, reports) if after is None else []
        if reports:
            cursor = (0, -1) if after is None else _cursor(after)
            rows, count, last = await self.store.export_reports(study, cursor, limit)
            nxt: Any = f"{last >> 32}:{last & 0xFFFFFFFF}" if count == limit else None
        else:
            if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
                raise Refusal("invalid", "after: the `next` of the page before (a number)")
            rows, count, last = await self.store.export_runs(study, after or 0, limit)
            nxt = last if count == limit else None
        return {"study": study, "params": [p.name for p in rt.spec.params], "metrics": metrics,
                "fields": list(EXPORT_REPORT_FIELDS if reports else EXPORT_RUN_FIELDS), "rows": rows, "next": nxt}

    async def op_studies(self, archived: bool = False) -> list[dict[str, Any]]:
        return await self.study_summaries(archived=archived)


def _trials(runs: list[dict[str, Any]]) -> int:
    """Trials among new runs (a trial with replicates brings several)."""
    return len({r["trial"] for r in runs})


def _cursor(after: Any) -> tuple[int, int]:
    """A reports page's `next` ("RUN_ID:SEQ") read back."""
    run_id, _, seq = str(after).partition(":")
    if run_id.isdigit() and seq.isdigit():
        return int(run_id), int(seq)
    raise Refusal("invalid", "after: the `next` of the page before (RUN_ID:SEQ)")


def _space_change(old: StudySpec, new: StudySpec) -> str:
    """What differs between two studies' search spaces, or '' if nothing does."""
    if old.params != new.params and not (old.algorithm == new.algorithm == "grid"
                                         and [p.name for p in old.params] == [p.name for p in new.params]):
        # (A grid may take other values for its parameters: its new points are added.)
        before = {p.name: p for p in old.params}
        after = {p.name: p for p in new.params}
        changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        return f"parameters differ: {', '.join(changed)}"
    if old.objectives != new.objectives:
        return "the objective differs"
    if old.algorithm != new.algorithm:
        return f"algorithm {old.algorithm} became {new.algorithm}"
    if old.replicates != new.replicates:
        return f"replicates {old.replicates} became {new.replicates}"
    if (old.constraints, old.param_constraints) != (new.constraints, new.param_constraints):
        return "constraints differ"
    return ""
