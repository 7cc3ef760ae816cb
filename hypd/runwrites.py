"""The store's writes of trials, runs and reports (RunWrites, a part of hypd.store.Store):
each one transaction on the store's Writer, so a run's state and its transitions row, or
its reports and its log offset, are never written apart."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypd.ipc import RUN_FIELDS
from hypd.runstate import RunState, check_transition
from hypd.storewriter import StoreError, Writer

# The columns a run is shown with (ls, info, events, the TUI): hypd.ipc.Run, less its name.
RUN_COLUMNS = tuple(f for f in RUN_FIELDS if f != "name")
JSON_COLUMNS = {"params", "gpus", "metrics"}
ALL_COLUMNS = RUN_COLUMNS + ("pid", "proc_start", "ctl_dir", "log_offset", "stop_intent", "stop_sent",
                             "stop_reason", "keepalive")
_WRITABLE = set(ALL_COLUMNS) - {"id", "study", "run_no", "trial", "attempt", "params", "created"}


class RunWrites:
    """Trials, runs, their state changes and reports, written through `writer`."""

    writer: Writer

    async def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One statement on its own (autocommit)."""
        await self.writer.call(lambda db: db.execute(sql, args))

    async def add_trials(self, study: str, trials: Iterable[tuple[int, Mapping[str, Any]]],
                         search_state: str | None, source: str = "search", replicates: int = 1
                         ) -> list[dict[str, Any]]:
        """New trials, each with its first run (pending) of each of its `replicates`, and
        the search's new state, in one transaction. Returns the new runs, a trial's
        replicates one after the other."""
        trials = list(trials)

        def add(db: sqlite3.Connection) -> list[dict[str, Any]]:
            runs = insert_trials(db, study, trials, source, replicates)
            if search_state is not None:
                db.execute("UPDATE studies SET search_state=? WHERE name=?", (search_state, study))
            return runs

        return await self.writer.transaction(add)

    async def replace_trials(self, study: str, stale: Sequence[int], fresh: Sequence[tuple[int, Mapping[str, Any]]],
                             search_state: str, replicates: int = 1) -> tuple[list[int], list[dict[str, Any]]]:
        """Trials asked ahead and not started, replaced by fresher ones (hypd/ahead.py), with
        the search's new state, in one transaction. A stale trial whose runs are all still
        pending (never started, never told) goes, and its runs take the next fresh trial and
        its parameters (their run numbers stay); fresh trials left over get runs of their
        own; a stale trial with a run that ended meanwhile stays as it is. Returns the
        trials replaced and the fresh trials' runs (existing and new)."""
        fresh = list(fresh)

        def replace(db: sqlite3.Connection) -> tuple[list[int], list[dict[str, Any]]]:
            replaced: list[int] = []
            runs: list[dict[str, Any]] = []
            waiting = list(fresh)
            now, pending = time.time(), RunState.PENDING.value
            for trial in stale:
                if not waiting:
                    break
                rows = db.execute("SELECT id, run_no, replicate, state, attempt FROM runs WHERE study=? AND trial=? "
                                  "ORDER BY replicate", (study, trial)).fetchall()
                told = db.execute("SELECT told FROM trials WHERE study=? AND trial=?", (study, trial)).fetchone()
                if not rows or told is None or told[0] is not None or any(r[3] != pending or r[4] != 1 for r in rows):
                    continue
                new_trial, params = waiting.pop(0)
                text = json.dumps(params)
                db.execute("DELETE FROM trials WHERE study=? AND trial=?", (study, trial))
                db.execute("INSERT INTO trials (study, trial, params, created, source) VALUES (?,?,?,?,?)",
                           (study, new_trial, text, now, "search"))
                db.execute("UPDATE runs SET trial=?, params=? WHERE study=? AND trial=?", (new_trial, text, study, trial))
                replaced.append(trial)
                runs += [{"id": run_id, "study": study, "run_no": run_no, "trial": new_trial, "attempt": 1,
                          "replicate": replicate, "params": dict(params), "name": f"{study}:{run_no}"}
                         for run_id, run_no, replicate, _, _ in rows]
            runs += insert_trials(db, study, waiting, "search", replicates)
            db.execute("UPDATE studies SET search_state=? WHERE name=?", (search_state, study))
            return replaced, runs

        return await self.writer.transaction(replace)

    async def add_retry(self, study: str, trial: int, reason: str, replicate: int = 1) -> dict[str, Any]:
        """A new attempt (pending run) of a replicate of an existing trial."""

        def add(db: sqlite3.Connection) -> dict[str, Any]:
            row = db.execute("SELECT params FROM trials WHERE study=? AND trial=?", (study, trial)).fetchone()
            if row is None:
                raise StoreError(f"no trial {trial} in study {study}")
            (attempts,) = db.execute(
                "SELECT COALESCE(MAX(attempt), 0) FROM runs WHERE study=? AND trial=? AND replicate=?",
                (study, trial, replicate)).fetchone()
            return _insert_run(db, study, trial, attempts + 1, json.loads(row[0]), time.time(), reason, replicate)

        return await self.writer.transaction(add)

    async def transition(self, run_id: int, new: RunState, reason: str, **fields: Any) -> None:
        """Move a run to a new state (checked against the state machine), with a
        transitions row and any other columns to set, in one transaction."""

        def move(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run with id {run_id}")
            check_transition(row[0], new)
            now = time.time()
            changed = {"state": new.value, "reason": reason, **fields}
            if new is RunState.RUNNING and "started" not in changed and row[0] == RunState.PENDING.value:
                changed["started"] = now
            if new in (RunState.COMPLETED, RunState.FAILED, RunState.KILLED, RunState.STOPPED, RunState.LOST) \
                    and "ended" not in changed:
                # A lost run's time stops where its host was lost (not counted up while
                # nobody knows); if it comes back, it runs on and has no end again.
                changed["ended"] = now
            if new is RunState.RUNNING and row[0] == RunState.LOST.value and "ended" not in changed:
                changed["ended"] = None
            _update(db, run_id, changed)
            db.execute("INSERT INTO transitions (run_id, at, from_state, to_state, reason) VALUES (?,?,?,?,?)",
                       (run_id, now, row[0], new.value, reason))

        await self.writer.transaction(move)

    async def update_run(self, run_id: int, **fields: Any) -> None:
        await self.writer.call(_update, run_id, fields)

    async def add_reports(self, run_id: int, reports: Sequence[tuple[int, float, Mapping[str, float]]],
                          *, log_offset: int, metrics: Mapping[str, float], objective: float | None,
                          last_line: str) -> None:
        """Reports read from the log up to log_offset, with the run's new summary."""
        rows = [(step, at, json.dumps(values)) for step, at, values in reports]
        summary = json.dumps(metrics)

        def add(db: sqlite3.Connection) -> None:
            (seq,) = db.execute("SELECT reports FROM runs WHERE id=?", (run_id,)).fetchone()
            db.executemany("INSERT INTO reports (run_id, seq, step, at, data) VALUES (?,?,?,?,?)",
                           [(run_id, seq + i, *row) for i, row in enumerate(rows)])
            stats: dict[str, list[Any]] = {}
            for i, (step, _, values) in enumerate(reports):
                _fold_stats(stats, seq + i, step, values)
            _store_stats(db, run_id, stats)
            db.execute("UPDATE runs SET log_offset=?, reports=?, metrics=?, objective=?, last_line=? WHERE id=?",
                       (log_offset, seq + len(rows), summary, objective, last_line, run_id))

        await self.writer.transaction(add)

    async def build_metric_stats(self) -> int:
        """Once, for a store made before per-metric summaries were kept: build them from
        the stored reports (seconds for millions of them; on the writer's thread, with the
        socket already answering). Returns how many reports were read (0: nothing to do)."""
        return await self.writer.transaction(_build_metric_stats)

    async def set_told(self, study: str, trial: int, told: str) -> None:
        await self.write("UPDATE trials SET told=? WHERE study=? AND trial=?", (told, study, trial))

    async def trial_told(self, study: str, trial: int) -> str | None:
        row = await self.writer.call(
            lambda db: db.execute("SELECT told FROM trials WHERE study=? AND trial=?", (study, trial)).fetchone())
        return row[0] if row else None

    async def untold_trials(self, study: str) -> list[dict[str, Any]]:
        """The study's trials the search has not been told about (told IS NULL) whose
        every attempt has ended (none pending, running or lost), in trial order; each with
        its last attempt: {trial, params, run_id, name, attempt, state, reason, metrics,
        objective, attempts, failures, replicates} (failures: attempts that failed;
        replicates: the last attempt of each replicate, {replicate, run_id, name, attempt,
        state, reason, metrics, objective}, in replicate order; the trial's own fields are
        its last replicate's).

        With record_told, telling the search is done exactly once across crashes: tell it
        about each of these, then record its new state and the told marks together."""
        rows = await self.writer.call(lambda db: db.execute(_UNTOLD_TRIALS, (study,)).fetchall())
        trials: dict[int, dict[str, Any]] = {}
        for (trial, params, run_id, run_no, attempt, state, reason, metrics, objective,
             attempts, failures, replicate) in rows:
            last = {"run_id": run_id, "name": f"{study}:{run_no}", "attempt": attempt, "state": state,
                    "reason": reason, "metrics": json.loads(metrics), "objective": objective}
            entry = trials.setdefault(trial, {"trial": trial, "params": json.loads(params), "replicates": []})
            entry.update(last, attempts=attempts, failures=failures)
            entry["replicates"].append({"replicate": replicate, **last})
        return list(trials.values())

    async def record_told(self, study: str, search_state: str | None,
                          told: Sequence[tuple[int, str]]) -> None:
        """The search's state after it was told about some trials, and what each of those
        trials was told (completed/failed/abandoned/stopped), in one transaction: the
        stored state and the told marks never disagree. search_state None leaves the
        stored state as it is. An unknown study or trial raises StoreError (nothing kept)."""

        def record(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM studies WHERE name=?", (study,)).fetchone() is None:
                raise StoreError(f"no study {study}")
            if search_state is not None:
                db.execute("UPDATE studies SET search_state=? WHERE name=?", (search_state, study))
            for trial, what in told:
                if db.execute("UPDATE trials SET told=? WHERE study=? AND trial=?",
                              (what, study, trial)).rowcount != 1:
                    raise StoreError(f"no trial {trial} in study {study}")

        await self.writer.transaction(record)


_UNTOLD_TRIALS = """
    SELECT t.trial, t.params, r.id, r.run_no, r.attempt, r.state, r.reason, r.metrics,
           r.objective,
           (SELECT COUNT(*) FROM runs a WHERE a.study=t.study AND a.trial=t.trial),
           (SELECT COUNT(*) FROM runs a WHERE a.study=t.study AND a.trial=t.trial
                                          AND a.state IN ('failed', 'lost')),
           r.replicate
    FROM trials t JOIN runs r ON r.study=t.study AND r.trial=t.trial
    WHERE t.study=? AND t.told IS NULL
      AND r.attempt=(SELECT MAX(attempt) FROM runs a WHERE a.study=t.study AND a.trial=t.trial
                                                       AND a.replicate=r.replicate)
      AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.study=t.study AND a.trial=t.trial
                                            AND a.state IN ('pending', 'running', 'queued', 'lost'))
    ORDER BY t.trial, r.replicate"""


def _fold_stats(stats: dict[str, list[Any]], seq: int, step: int, values: Mapping[str, float]) -> None:
    """Add one report to per-metric [position, count, first, last, min, max, last_step]."""
    for i, (name, value) in enumerate(values.items()):
        number = float(value)
        known = number if number == number else None  # nan is no minimum or maximum
        s = stats.get(name)
        if s is None:
            stats[name] = [seq * 256 + i, 1, number, number, known, known, step]
            continue
        s[1] += 1
        s[3], s[6] = number, step
        if known is not None:
            s[4] = known if s[4] is None else min(s[4], known)
            s[5] = known if s[5] is None else max(s[5], known)


def _store_stats(db: sqlite3.Connection, run_id: int, stats: Mapping[str, list[Any]]) -> None:
    """(In a transaction.) Fold a batch's per-metric figures into the run's metric_stats."""
    db.executemany(
        "INSERT INTO metric_stats (run_id, metric, position, count, first_value, last_value, min_value, max_value, "
        "last_step) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (run_id, metric) DO UPDATE SET "
        "count = count + excluded.count, last_value = excluded.last_value, last_step = excluded.last_step, "
        "min_value = CASE WHEN min_value IS NULL OR excluded.min_value < min_value "
        "THEN excluded.min_value ELSE min_value END, "
        "max_value = CASE WHEN max_value IS NULL OR excluded.max_value > max_value "
        "THEN excluded.max_value ELSE max_value END",
        [(run_id, name, *s) for name, s in stats.items()])


def mark_metric_stats(db: sqlite3.Connection) -> None:
    """A store with no reports yet has all its (no) summaries: nothing to build later."""
    if db.execute("SELECT 1 FROM reports LIMIT 1").fetchone() is None:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('metric_stats', '1')")


def _build_metric_stats(db: sqlite3.Connection) -> int:
    """(In a transaction.) Once, for a store made before metric_stats: build it from every
    stored report; returns how many reports were read (0: it was built already)."""
    if db.execute("SELECT 1 FROM meta WHERE key='metric_stats'").fetchone():
        return 0
    db.execute("DELETE FROM metric_stats")
    run: int | None = None
    stats: dict[str, list[Any]] = {}
    count = 0
    for run_id, seq, step, data in db.execute("SELECT run_id, seq, step, data FROM reports ORDER BY run_id, seq"):
        if run_id != run:
            if run is not None:
                _store_stats(db, run, stats)
            run, stats = run_id, {}
        _fold_stats(stats, seq, step, json.loads(data))
        count += 1
    if run is not None:
        _store_stats(db, run, stats)
    db.execute("INSERT INTO meta VALUES ('metric_stats', '1')")
    return count


def insert_trials(db: sqlite3.Connection, study: str, trials: Sequence[tuple[int, Mapping[str, Any]]],
                   source: str, replicates: int = 1) -> list[dict[str, Any]]:
    """(In a transaction.) Trials and the first run of each of their replicates (a
    trial's replicates one after the other), a statement per table rather than per row: a
    grid of thousands of points is stored in well under a second."""
    if not trials:
        return []
    now, reason, pending = time.time(), "new trial", RunState.PENDING.value
    params = [json.dumps(p) for _, p in trials]
    runs = [(t, r, text, p) for (t, p), text in zip(trials, params) for r in range(1, replicates + 1)]
    row = db.execute("UPDATE studies SET next_run_no = next_run_no + ? WHERE name=? RETURNING next_run_no - ?",
                     (len(runs), study, len(runs))).fetchall()  # all: see _insert_run
    if not row:
        raise StoreError(f"no study {study}")
    first = row[0][0]
    db.executemany("INSERT INTO trials (study, trial, params, created, source) VALUES (?,?,?,?,?)",
                   [(study, t, p, now, source) for (t, _), p in zip(trials, params)])
    db.executemany("INSERT INTO runs (study, run_no, trial, attempt, replicate, state, reason, params, created) "
                   "VALUES (?,?,?,?,?,?,?,?,?)",
                   [(study, first + i, t, 1, r, pending, reason, text, now) for i, (t, r, text, _) in enumerate(runs)])
    ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE study=? AND run_no>=? AND run_no<? ORDER BY run_no",
                                    (study, first, first + len(runs)))]
    db.executemany("INSERT INTO transitions (run_id, at, from_state, to_state, reason) VALUES (?,?,?,?,?)",
                   [(run_id, now, None, pending, reason) for run_id in ids])
    return [{"id": run_id, "study": study, "run_no": first + i, "trial": t, "attempt": 1, "replicate": r,
             "params": dict(p), "name": f"{study}:{first + i}"} for i, (run_id, (t, r, _, p)) in enumerate(zip(ids, runs))]


def _insert_run(db: sqlite3.Connection, study: str, trial: int, attempt: int, params: Mapping[str, Any],
                now: float, reason: str, replicate: int = 1) -> dict[str, Any]:
    row = db.execute("UPDATE studies SET next_run_no = next_run_no + 1 WHERE name=? RETURNING next_run_no - 1",
                     (study,)).fetchall()  # all: a RETURNING statement left unfinished blocks COMMIT
    if not row:
        raise StoreError(f"no study {study}")
    run_no = row[0][0]
    ((run_id,),) = db.execute(
        "INSERT INTO runs (study, run_no, trial, attempt, replicate, state, reason, params, created) "
        "VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
        (study, run_no, trial, attempt, replicate, RunState.PENDING.value, reason, json.dumps(params), now)
    ).fetchall()
    db.execute("INSERT INTO transitions (run_id, at, from_state, to_state, reason) VALUES (?,?,?,?,?)",
               (run_id, now, None, RunState.PENDING.value, reason))
    return {"id": run_id, "study": study, "run_no": run_no, "trial": trial, "attempt": attempt,
            "replicate": replicate, "params": dict(params), "name": f"{study}:{run_no}"}


def _update(db: sqlite3.Connection, run_id: int, fields: Mapping[str, Any]) -> None:
    cols = []
    values = []
    for key, value in fields.items():
        if key not in _WRITABLE:
            raise StoreError(f"not a writable run column: {key}")
        cols.append(f"{key}=?")
        values.append(json.dumps(value) if key in JSON_COLUMNS else value)
    db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id=?", (*values, run_id))
