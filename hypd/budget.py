"""A study's budget and lifetime over the socket: `hypd extend` (more trials for a study,
its search carrying on where it was), `hypd archive` (hidden from `studies` and `ls`) and
`hypd rm` (gone from the store; its logs and outputs too with --files)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from hypd.lifecycle import study_rules
from hypd.ops import Ops
from hypd.runstate import RunState
from hypd.server import Refusal
from hypd.studies import StudyRuntime
from hypd.study import MAX_TRIALS, StudySpec, parse_study, run_dir_path, with_max_trials

log = logging.getLogger("hypd.budget")

LIVE = (RunState.PENDING.value, RunState.RUNNING.value, RunState.LOST.value)


class StudyBudget:
    def __init__(self, ops: Ops) -> None:
        self.ops = ops
        self.store = ops.store
        self.studies = ops.studies

    async def op_extend(self, study: str, trials: int) -> dict[str, Any]:
        rt = self.ops._study(study)
        spec = rt.spec
        if trials < 1:
            raise Refusal("invalid", f"give how many trials to add, at least 1 (e.g. hypd extend {study} 20)")
        if spec.max_trials is None:
            raise Refusal("invalid", f"study {study} is a grid of all its points: add points (more values, a finer "
                                     "step) and submit it under another name (--as NAME)")
        new_max = max(spec.max_trials, rt.trials) + trials
        if new_max > MAX_TRIALS:
            raise Refusal("invalid", f"{new_max} trials is over the cap of {MAX_TRIALS} per study; add at most "
                                     f"{MAX_TRIALS - max(spec.max_trials, rt.trials)}, or go on in another study "
                                     "(hypd submit FILE --as NAME)")
        row = await self.store.study(study)
        assert row is not None
        try:
            text = with_max_trials(row.text, new_max)
            new_spec = await asyncio.to_thread(parse_study, text, row.source, row.base_dir, study)
        except ValueError as exc:
            raise Refusal("invalid", f"cannot set max_trials in study {study}'s file: {exc}") from None
        if new_spec.max_trials != new_max:
            raise Refusal("invalid", f"cannot set max_trials in study {study}'s file; edit max_trials there and "
                                     "submit it again")
        # The stored file says what the study now is: a restart loads it so.
        await self.store.update_study_source(study, row.source, text, row.base_dir)
        rows = await self.grow(rt, new_spec)
        log.info("study %s extended by %d trials to %d (%d queued)", study, trials, new_max, len(rows))
        await self.ops.publish_study(study)
        return {"study": study, "max_trials": new_max, "queued": len(rows), "paused": rt.paused}

    async def grow(self, rt: StudyRuntime, spec: StudySpec) -> list[dict[str, Any]]:
        """Take a spec whose space is unchanged (a larger max_trials): the search follows it
        (an adaptive one proposes the new trials as slots free; one that is not queues
        them now). Returns the runs queued."""
        rt.spec = spec
        self.ops.runs.core.rules[spec.name] = study_rules(spec)
        await self.studies.call(rt, rt.suggester.update_spec, spec, changes=False)
        rt.exhausted = not rt.suggester.adaptive
        rows = await self.studies.top_up(rt)
        self.ops._queue(spec.name, rows)
        return rows

    async def op_archive(self, study: str, undo: bool) -> dict[str, Any]:
        rt = self.ops._study(study)
        if not undo:
            await self._refuse_live(study, "archive")
            unfinished = rt.suggester.adaptive and not rt.exhausted and rt.trials < (rt.spec.max_trials or 0)
            if unfinished and not rt.paused:  # its search would start runs nobody sees
                await self.studies.set_paused(rt, True)
        rt.archived = not undo
        await self.store.set_archived(study, not undo)
        await self.ops.publish_study(study)
        return {"study": study, "archived": not undo}

    async def op_rm(self, study: str, files: bool) -> dict[str, Any]:
        rt = self.studies.all.get(study)
        if rt is None and study not in self.studies.broken:
            self.ops._study(study)  # says why there is no such study
        await self._refuse_live(study, "remove")
        runs = await self.store.runs(study=study, columns=("run_no", "params", "host", "run_dir"))
        await self.store.remove_study(study)
        self.studies.forget(study)
        self.ops.runs.core.forget_study(study)
        self.ops.runs.prepare_failed.pop(study, None)  # (its rows went with the study's)
        self.ops.runs.prepare_generation.pop(study, None)
        removed: list[str] = []
        left = sorted({r["host"] for r in runs if r["host"] and r["host"] != "local"})
        if files:
            home = self.ops.home
            paths = [home / "runs" / study]
            if rt is not None:
                paths += [run_dir_path(home, rt.spec, r["run_no"], r["params"]) for r in runs]
                study_dir = Path(rt.spec.output_dir) if rt.spec.output_dir else home / "studies" / study
            else:
                study_dir = home / "studies" / study
            removed = await asyncio.to_thread(_remove, paths, study_dir)
        log.info("study %s removed (%d runs%s)", study, len(runs), ", with its files" if files else "")
        await self.ops.publish_study(study)
        return {"removed": study, "runs": len(runs), "files": removed,
                "left_on_hosts": left if files else []}

    async def _refuse_live(self, study: str, what: str) -> None:
        live = await self.store.runs(study=study, states=list(LIVE), columns=("study", "run_no", "state"))
        if live:
            names = ", ".join(f"{r['name']} ({r['state']})" for r in live[:5]) + (" ..." if len(live) > 5 else "")
            raise Refusal("conflict", f"study {study} has {len(live)} run(s) pending or running ({names}); "
                                      f"kill them first (hypd kill {study}), then {what} it")


def _remove(paths: list[Path], study_dir: Path) -> list[str]:
    """Remove these folders (those that exist), then the study's folder if left empty."""
    removed = []
    for path in dict.fromkeys(paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    try:
        study_dir.rmdir()
        removed.append(str(study_dir))
    except OSError:
        pass  # not empty (files of others, runs set aside) or not there
    return removed
