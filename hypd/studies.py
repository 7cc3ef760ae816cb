"""The daemon's studies: their specs, their searches, and what the search is told.

Search calls (Ax fitting) run off the event loop (a search process, reached from a
thread), one call at a time per study. The search's state is stored with what changed
it in one transaction: new trials with the state that proposed them, and the outcomes of
ended trials with the state that learnt them and their `told` marks — so after a crash
the stored state and the marks never disagree, and every ended trial is told exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypd import asha, trend
from hypd.ahead import AheadQueue, depth_for, refresh_plan
from hypd.replicates import combine
from hypd.runstate import RunState
from hypd.search import SearchError, Suggester
from hypd.searchworker import SearchPool, open_suggester
from hypd.store import Store, StudyRow
from hypd.study import StudyError, StudySpec, parse_study

log = logging.getLogger("hypd.studies")

SEARCH_FLUSH_EVERY = 10.0  # seconds intermediate reports may wait before the search state is stored


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
    served_stored: float = 0.0  # last_served as the store has it (stored by `flush`)
    tell_queued: bool = False  # a tell waits for the lock: it will tell every trial ended by then
    pause_reason: str = ""  # why hypd paused it itself ("" when a user did, or it is not paused)
    archived: bool = False  # hidden from `studies` and `ls` unless asked for
    ledger: asha.Ledger | trend.Ledger | None = None  # hypd's own early_stop rule's view of the reports (read at first use)
    ahead: AheadQueue = field(default_factory=AheadQueue)  # its suggestions asked ahead (hypd/ahead.py)

    def room(self) -> int:
        """How many more trials its search may propose now (0: none)."""
        if self.paused or self.exhausted or not self.suggester.adaptive:
            return 0
        return max(0, self.spec.max_trials - self.trials) if self.spec.max_trials is not None else 1 << 30


class Studies:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pool = SearchPool()
        self.all: dict[str, StudyRuntime] = {}
        self.broken: dict[str, str] = {}  # name -> why it cannot be loaded
        self.loading: set[str] = set()  # stored studies not loaded yet (at start)
        # Set once the stored studies are known (`loading` filled): before that, "no such
        # study" would be a wrong answer, so ops about studies wait for it.
        self.listed = asyncio.Event()
        self._stored: list[StudyRow] = []

    def get(self, name: str) -> StudyRuntime | None:
        return self.all.get(name)

    async def list_stored(self) -> None:
        """Learn which studies the store holds (one query), before they load."""
        self._stored = await self.store.studies()
        self.loading = {row.name for row in self._stored}
        self.listed.set()

    async def load(self) -> None:
        """Load the stored studies one by one (the first Ax study imports Ax, seconds);
        `loading` names those still to come."""
        if not self.listed.is_set():
            await self.list_stored()
        rows, self._stored = self._stored, []
        for row in rows:
            try:
                await self._load_one(row)
            finally:
                self.loading.discard(row.name)

    async def _load_one(self, row: StudyRow) -> None:
        try:
            spec = await asyncio.to_thread(parse_study, row.text, row.source, row.base_dir, row.name, False)
            suggester = await asyncio.to_thread(open_suggester, spec, row.search_state, self.pool)
        except (StudyError, SearchError, ValueError) as exc:
            self.broken[row.name] = str(exc)
            log.error("study %s cannot be loaded: %s", row.name, exc)
            return
        rt = StudyRuntime(spec, suggester, row.paused, row.last_served, served_stored=row.last_served,
                          pause_reason=row.pause_reason, archived=row.archived)
        rt.trials = await self.store.trial_count(row.name)
        rt.exhausted = not suggester.adaptive  # a search that is not adaptive queued every trial at submit
        self.all[row.name] = rt

    async def create(self, spec: StudySpec, path: str, text: str,
                     base_dir: str) -> tuple[StudyRuntime, list[dict[str, Any]]]:
        """A new study, and the new runs of its trials. A search that is not adaptive
        proposes every trial now, and they are stored with the study in one transaction: a
        daemon killed meanwhile leaves the whole study or none of it."""
        suggester = await asyncio.to_thread(open_suggester, spec, None, self.pool)
        trials: list[tuple[int, dict[str, Any]]] = []
        try:
            if not suggester.adaptive:
                trials = await asyncio.to_thread(suggester.ask, suggester.budget())
            state = await asyncio.to_thread(suggester.dump)
            runs = await self.store.add_study(spec.name, path, text, base_dir, state, trials, spec.replicates)
        except BaseException:
            self.pool.release(spec.name)  # its search process serves it no more
            raise
        rt = StudyRuntime(spec, suggester, False, 0.0)
        rt.trials = len(trials)
        rt.exhausted = not suggester.adaptive
        self.all[spec.name] = rt
        return rt, runs

    async def top_up(self, rt: StudyRuntime) -> list[dict[str, Any]]:
        """A search that is not adaptive has every trial up to its budget queued: the
        missing ones now (after a larger max_trials, a grid's new values, or for a study
        stored without its trials; a grid's points that have a trial are not proposed
        again). Returns the new runs."""
        if rt.suggester.adaptive or (rt.suggester.budget() <= rt.trials and rt.spec.algorithm != "grid"):
            return []
        return await self.new_trials(rt, extend=True)

    def forget(self, name: str) -> None:
        """A study removed from the store (`hypd rm`)."""
        self.all.pop(name, None)
        self.broken.pop(name, None)
        self.pool.release(name)

    async def set_paused(self, rt: StudyRuntime, paused: bool, reason: str = "") -> None:
        """Pause (start nothing new) or resume a study; `reason` when hypd pauses it itself."""
        rt.paused, rt.pause_reason = paused, reason if paused else ""
        await self.store.set_paused(rt.spec.name, paused, rt.pause_reason)

    async def call(self, rt: StudyRuntime, method: Callable[..., Any], *args: Any,
                   changes: bool | Callable[[Any], bool] = True) -> Any:
        """Call the study's search off the event loop, one call at a time, and store its
        state after a call that changes it (`changes` may judge by the call's result)."""
        async with rt.lock:
            result = await asyncio.to_thread(method, *args)
            if changes(result) if callable(changes) else changes:
                await self._store_state(rt)
            return result

    async def _store_state(self, rt: StudyRuntime) -> None:
        """(Under rt.lock.) Dumping an Ax experiment takes up to seconds at a few hundred
        trials, so intermediate reports mark the state dirty and are stored with the next
        change, or by `flush` within SEARCH_FLUSH_EVERY."""
        state = await asyncio.to_thread(rt.suggester.dump)
        await self.store.set_search_state(rt.spec.name, state)
        rt.dirty_since = None

    async def flush(self, older_than: float = 0.0) -> None:
        """Store what is kept in memory between changes: search states with intermediate
        reports, and when each study was last given a slot (fairness across restarts; a
        write per placement would cost more than it is worth)."""
        for name, rt in self.all.items():
            if rt.last_served != rt.served_stored:
                await self.store.set_last_served(name, rt.last_served)
                rt.served_stored = rt.last_served
            if rt.dirty_since is not None and time.time() - rt.dirty_since >= older_than:
                async with rt.lock:
                    if rt.dirty_since is not None:
                        await self._store_state(rt)

    async def new_trials(self, rt: StudyRuntime, count: int | None = None,
                         params: dict[str, Any] | None = None, extend: bool = False) -> list[dict[str, Any]]:
        """Ask the search for `count` trials, or attach a hand-given one, or (`extend`) the
        trials a resubmitted grid or random study adds, and store the trials with the
        search's new state in one transaction: a crash never leaves the search with trials
        hypd does not know of."""
        async with rt.lock:
            if extend:
                existing = await self.store.trial_params(rt.spec.name)
                trials = await asyncio.to_thread(rt.suggester.extend, existing)
            elif params is None:
                trials = await asyncio.to_thread(rt.suggester.ask, count)
            else:
                trials = [(await asyncio.to_thread(rt.suggester.attach, params), params)]
            state = await asyncio.to_thread(rt.suggester.dump)
            runs = await self.store.add_trials(rt.spec.name, trials, state,
                                               source="search" if params is None else "user",
                                               replicates=rt.spec.replicates)
            rt.dirty_since = None
            rt.trials += len(trials)
            return runs

    async def report(self, study: str, trial: int, reports: list[tuple[int, float, dict[str, float]]],
                     run: int | None = None) -> None:
        """Intermediate reports of a run, for early stopping: to hypd's own rule (trend,
        ASHA), and the search (whose model learns from the curves, and whose own rule may
        stop it)."""
        rt = self.all.get(study)
        if rt is None or rt.spec.early_stop is None or not reports:
            return
        if rt.ledger is not None and run is not None:
            metric = rt.spec.early_stop.metric
            rt.ledger.add(run, [(step, at, values[metric]) for step, at, values in reports if metric in values])
        await self.call(rt, _report_all, rt.suggester, trial, reports, changes=False)
        rt.dirty_since = rt.dirty_since or time.time()

    async def tell(self, study: str) -> None:
        """Tell the search the outcome of every ended trial it has not been told, and store
        its state with the told marks in one transaction. Trials that end together are told
        together: a tell waiting for the study's lock already covers them."""
        rt = self.all.get(study)
        if rt is None or rt.tell_queued:
            return
        rt.tell_queued = True
        try:
            await rt.lock.acquire()
        finally:
            rt.tell_queued = False
        try:
            untold = await self.store.untold_trials(study)
            if not untold:
                return
            told: list[tuple[int, str]] = []
            for row in untold:
                try:
                    told.append((row["trial"], await asyncio.to_thread(self._tell_one, rt, row)))
                except SearchError as exc:
                    log.error("study %s: cannot tell the search how trial %d ended: %s", study, row["trial"], exc)
                    told.append((row["trial"], "error"))
            state = await asyncio.to_thread(rt.suggester.dump)
            await self.store.record_told(study, state, told)
            rt.dirty_since = None
            rt.ahead.results += len(told)
        finally:
            rt.lock.release()

    def wants_ahead(self, rt: StudyRuntime) -> bool:
        """Whether the study's suggestions asked ahead need a refresh (no I/O: the
        dispatcher asks at each of its turns)."""
        if not rt.suggester.adaptive or rt.paused:
            return False
        stale, add = refresh_plan(rt.ahead.queued(), rt.ahead.results, depth_for(rt.spec.parallel, rt.spec.ask_ahead), rt.room())
        return bool(stale or add)

    async def ask_ahead(self, rt: StudyRuntime) -> tuple[list[int], list[dict[str, Any]]]:
        """Refresh the study's suggestions asked ahead (hypd/ahead.py): those asked with
        fewer results than the search has now are asked again (and withdrawn from the
        search), and the queue is topped up. The store takes the fresh trials, the stale
        ones' removal and the search's state in one transaction. Returns the trials
        replaced and the fresh trials' runs."""
        async with rt.lock:
            q = rt.ahead
            q.keep(r["trial"] for r in await self.store.runs(state=RunState.PENDING.value, study=rt.spec.name,
                                                               columns=("trial",)))
            claimed, add = refresh_plan(q.queued(), q.results, depth_for(rt.spec.parallel, rt.spec.ask_ahead), rt.room())
            if not claimed and not add:
                return [], []
            q.claim(claimed)
            results = q.results
            try:
                fresh = await asyncio.to_thread(rt.suggester.ask, len(claimed) + add)
                # From here to the stored transaction, no fit: the dispatcher leaves these be.
                stale = q.commit(len(fresh))
                for trial in stale:
                    await asyncio.to_thread(rt.suggester.withdraw, trial)
                state = await asyncio.to_thread(rt.suggester.dump)
                replaced, runs = await self.store.replace_trials(rt.spec.name, stale, fresh, state,
                                                                 rt.spec.replicates)
            finally:
                q.settle()
            rt.dirty_since = None
            rt.trials += len(fresh) - len(replaced)
            rt.exhausted = rt.exhausted or len(fresh) < add
            q.replaced += len(replaced)
            q.add((t for t, _ in fresh), time.time(), results)
            return replaced, runs

    @staticmethod
    def _tell_one(rt: StudyRuntime, row: dict[str, Any]) -> str:
        # One result per trial, however many replicates it ran: their mean, with its SEM.
        outcome = combine(row["replicates"], rt.spec.objective.metric)
        state = outcome.state
        if state is RunState.COMPLETED:
            rt.suggester.complete(row["trial"], outcome.means, outcome.sems)
            return "completed"
        if state is RunState.FAILED:
            rt.suggester.fail(row["trial"])
            return "failed"
        if state is RunState.STOPPED:
            rt.suggester.stopped(row["trial"])  # it has the data the run reported
            return "stopped"
        rt.suggester.abandon(row["trial"])
        return "abandoned"

    async def early_stops(self, study: str, running: dict[int, int]) -> dict[int, str]:
        """Of the running runs (run id -> trial), those to stop now, each with its reason:
        by hypd's own rule over the reports (trend, ASHA), or as the search judges (Ax's
        percentile rule)."""
        rt = self.all.get(study)
        if rt is None or rt.spec.early_stop is None or not running:
            return {}
        rt.last_early_stop = time.time()
        rule = asha.Asha.of(rt.spec.early_stop) or trend.Trend.of(rt.spec.early_stop)
        if rule is not None:
            ledger = await self._ledger(rt, rule)
            return {run: f"early-stopped: {why}" for run, why in ledger.to_stop(sorted(running)).items()}
        trials = await self.call(rt, rt.suggester.early_stop, sorted(set(running.values())), changes=bool)
        return {run: "" for run, trial in running.items() if trial in trials}

    async def _ledger(self, rt: StudyRuntime, rule: asha.Asha | trend.Trend) -> asha.Ledger | trend.Ledger:
        """The study's ledger for hypd's own rule; made from the stored reports at first use
        (and after the rule changed). It takes reports as they come from the moment it
        exists: those stored while it is read are added twice, which a ledger takes (the
        earliest counts)."""
        if rt.ledger is None or rt.ledger.rule != rule:
            ledger = asha.Ledger(rule) if isinstance(rule, asha.Asha) else trend.Ledger(rule)
            rt.ledger = ledger
            metric = rt.spec.early_stop.metric if rt.spec.early_stop else ""
            for run, reports in (await self.store.study_reports(rt.spec.name, metric)).items():
                ledger.add(run, reports)
        return rt.ledger

    def close(self) -> None:
        self.pool.close()


def _report_all(suggester: Suggester, trial: int, reports: list[tuple[int, float, dict[str, float]]]) -> None:
    for step, _, values in reports:
        suggester.report(trial, step, values)
