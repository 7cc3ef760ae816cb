"""The socket's ops on runs: what `hypd ls`, `info`, `logs`, `kill` and `retry` ask of the
daemon (a study's own ops are in hypd/ops.py, its budget and lifetime in hypd/budget.py)."""

from __future__ import annotations

import os
from typing import Any

from hypd.ipc import MAX_REPORTS_PAGE, RUN_FIELDS
from hypd.ops import Ops, parse_run_name
from hypd.runstate import STATES, RunState
from hypd.server import Refusal
from hypd.store import RUN_COLUMNS
from hypd.study import render_commands

INFO_LOG_LINES = 10  # the end of a run's log `hypd info` shows


class RunOps:
    def __init__(self, ops: Ops) -> None:
        self.ops = ops
        self.store = ops.store
        self.studies = ops.studies

    async def op_ls(self, state: str | None, study: str | None, limit: int | None, newest_first: bool,
                    fields: list[str] | None, archived: bool = False) -> list[dict[str, Any]]:
        if state is not None and state not in STATES:
            raise Refusal("invalid", f"unknown state {state!r}; use one of {', '.join(STATES)}")
        if study is not None and study not in self.studies.loading:  # (the store has a loading study's runs)
            self.ops._study(study)
        if limit is not None and limit < 0:
            raise Refusal("invalid", f"limit must be 0 or more, got {limit}")
        columns = RUN_COLUMNS
        if fields is not None:
            unknown = set(fields) - set(RUN_FIELDS)
            if unknown:
                raise Refusal("invalid", f"unknown field(s) {', '.join(sorted(unknown))}; a run has "
                                         f"{', '.join(RUN_FIELDS)}")
            wanted = set(fields) | ({"study", "run_no"} if "name" in fields else set())
            columns = tuple(c for c in RUN_COLUMNS if c in wanted)
        # Archived studies' runs only when asked for (or their study is named).
        hidden = [] if archived or study is not None else [n for n, rt in self.studies.all.items() if rt.archived]
        return await self.store.runs(state=state, study=study, limit=limit, columns=columns,
                                     order="id DESC" if newest_first else "id", exclude_studies=hidden)

    async def op_info(self, run: str, reports: int) -> dict[str, Any]:
        row = await self.ops._run(run)
        rt = self.ops._study(row["study"])
        attempts = await self.store.runs(study=row["study"], trial=row["trial"], columns=("study", "run_no"))
        # A summary of every metric, and a page of the latest reports: a run with millions
        # of reports answers as fast as one with ten, in a reply of bounded size.
        first = max(0, row["reports"] - _page(reports))
        return {
            "run": {k: row[k] for k in RUN_FIELDS},
            "summary": await self.store.metric_summary(row["id"]),
            "reports": await self.store.reports(row["id"], first, _page(reports)),
            "reports_from": first,
            "reports_total": row["reports"],
            "transitions": await self.store.transitions(row["id"]),
            "attempts": [a["name"] for a in attempts],
            "retries": rt.spec.retries,
            "objective_metric": rt.spec.objective.metric,
            "goal": rt.spec.objective.goal,
            "commands": [list(c) for c in render_commands(rt.spec, row["params"], run_dir=row["run_dir"] or "<run_dir>",
                                                          run=row["name"], run_no=row["run_no"], trial=row["trial"])],
            "timeout": rt.spec.timeout,
            "log_tail": _log_tail(row["log_path"], INFO_LOG_LINES),
            "artifacts": await self.store.artifacts(row["id"]),
        }

    async def op_logs(self, run: str, offset: int, limit: int, tail: int | None) -> dict[str, Any]:
        row = await self.ops._run(run)
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
                                                               RunState.QUEUED.value, RunState.LOST.value),
                "path": row["log_path"]}

    async def op_metrics(self, run: str, since: int, limit: int) -> dict[str, Any]:
        row = await self.ops._run(run)
        reports = await self.store.reports(row["id"], since, _page(limit))
        return {"run": row["name"], "reports": reports, "next": max(since, 0) + len(reports)}

    async def op_kill(self, target: str) -> dict[str, Any]:
        if parse_run_name(target) is None:
            rt = self.ops._study(target)
            await self.studies.set_paused(rt, True)
            rows = await self.store.runs(study=target, states=[RunState.PENDING.value, RunState.RUNNING.value,
                                                            RunState.QUEUED.value, RunState.LOST.value],
                                      columns=("id", "study", "run_no", "trial", "replicate", "state"))
        else:
            row = await self.ops._run(target)
            if row["state"] not in (RunState.PENDING.value, RunState.RUNNING.value, RunState.QUEUED.value,
                                    RunState.LOST.value):
                raise Refusal("conflict", f"{target} is {row['state']}: nothing to kill")
            rows = [row]
        killed = []
        for row in rows:
            await self.ops.runs.kill(row)
            killed.append(row["name"])
        if parse_run_name(target) is None:
            await self.ops.publish_study(target)
        return {"killed": killed, "paused": parse_run_name(target) is None}

    async def op_retry(self, target: str, state: str | None, prepare: bool = False) -> dict[str, Any]:
        if parse_run_name(target) is not None:
            if state is not None or prepare:
                raise Refusal("invalid", "--state and --prepare go with a study, not with one run")
            rows = [await self.ops._run(target)]
        elif prepare and state is None:
            return {"retried": [], "prepared": await self._prepare_again(target)}
        else:
            self.ops._study(target)
            if state is None:
                raise Refusal("invalid", f"retry a run (e.g. {target}:7) or give --state failed to retry a study's runs")
            if state not in STATES:
                raise Refusal("invalid", f"unknown state {state!r}; use one of {', '.join(STATES)}")
            rows = await self.store.runs(study=target, state=state)
        created = []
        seen: set[tuple[str, int, int]] = set()
        for row in rows:
            if row["state"] in (RunState.PENDING.value, RunState.RUNNING.value, RunState.QUEUED.value):
                raise Refusal("conflict", f"{row['name']} is {row['state']}; kill it first to retry it")
            key = (row["study"], row["trial"], row["replicate"])
            if key in seen:
                continue
            live = await self.store.runs(study=row["study"], trial=row["trial"],
                                      states=[RunState.PENDING.value, RunState.RUNNING.value, RunState.QUEUED.value,
                                              RunState.LOST.value],
                                      columns=("replicate",))
            if any(r["replicate"] == row["replicate"] for r in live):
                continue  # that replicate of the trial already has an attempt under way
            seen.add(key)
            new = await self.store.add_retry(row["study"], row["trial"], f"retry of {row['name']} on request",
                                             row["replicate"])
            self.ops.runs.core.queued(row["study"], row["trial"], new["id"], replicate=row["replicate"])
            created.append(new["name"])
            await self.ops.publish_run(new["id"])
        self.ops.wake()
        return {"retried": created, "prepared": await self._prepare_again(target) if prepare else False}

    async def _prepare_again(self, study: str) -> bool:
        """The study's prepare step runs again on every host (a new folder there), and the
        hosts where it had failed take its runs again."""
        rt = self.ops._study(study)
        if rt.spec.prepare is None:
            raise Refusal("invalid", f"study {study} has no [prepare] step")
        runs = self.ops.runs
        runs.prepare_generation[study] = await self.store.prepare_again(study)
        runs.prepare_failed.pop(study, None)
        await self.ops.publish_study(study)
        self.ops.wake()
        return True


def _log_tail(path: str | None, lines: int) -> list[str]:
    """The last lines of a run's log (stdout and stderr both go there)."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - (lines + 1) * 400))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line[:400] for line in text.splitlines()[-lines:]]


def _page(count: int) -> int:
    """How many reports one reply carries when `count` are asked for."""
    return max(0, min(count, MAX_REPORTS_PAGE))
