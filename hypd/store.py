"""The SQLite store (WAL): studies, trials, runs, their transitions and metrics. Reads go
through aiosqlite (Queries), writes through the Writer (hypd/storewriter.py): each
transaction one trip to its thread. The Store is the studies' writes here and the trials'
and runs' (RunWrites, hypd/runwrites.py).

Every state change of a run is written with a row in `transitions` in the same
transaction, and a run's log offset moves in the same transaction as the metrics read
from that part of the log, so a restart neither loses nor doubles a report.

A write that cannot be done now — another process holds the database's write lock for
longer than the busy timeout, the disk is full, an I/O error — raises StoreUnavailable
with one line saying why, after rolling back whatever the write had done: nothing of it
is kept, no transaction is left open, and the same write simply succeeds once the fault
is gone (nothing to reopen). Mistakes in what is written (a constraint violated, a
transition the state machine forbids) keep their own exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from hypd.replicates import standard_error
from hypd.runwrites import ALL_COLUMNS, JSON_COLUMNS, RUN_COLUMNS, RunWrites, insert_trials, mark_metric_stats
from hypd.storecheck import (
    HIGHWATER_SQL,
    DamagedStore,
    HighWater,
    check_header,
    check_pages,
    lost_data_line,
    read_highwater,
    way_out,
    write_highwater,
)
from hypd.storewriter import (
    DAMAGED_CODES,
    DEFAULT_BUSY_TIMEOUT_MS,
    StoreError,
    StoreUnavailable,
    Writer,
    unavailable_reason,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,          -- the study file's path when submitted
    text TEXT NOT NULL,            -- the study file's text, as submitted
    base_dir TEXT NOT NULL,        -- what a relative workdir is relative to
    created REAL NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    pause_reason TEXT NOT NULL DEFAULT '',  -- why hypd paused it itself ('' when a user did)
    search_state TEXT,             -- the suggester's dump()
    next_run_no INTEGER NOT NULL DEFAULT 1,
    last_served REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS trials (
    study TEXT NOT NULL REFERENCES studies(name),
    trial INTEGER NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    source TEXT NOT NULL DEFAULT 'search',   -- 'search' or 'user' (hypd suggest)
    told TEXT,                     -- what the search was told: completed/failed/abandoned/stopped
    PRIMARY KEY (study, trial)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(name),
    run_no INTEGER NOT NULL,
    trial INTEGER NOT NULL,
    attempt INTEGER NOT NULL,      -- 1, 2, ... within its replicate
    replicate INTEGER NOT NULL DEFAULT 1,   -- 1..N: the trial's runs with `replicates = N`
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL,
    host TEXT,
    gpus TEXT,                     -- JSON list of GPU indexes; [] for a CPU slot
    pid INTEGER,
    proc_start TEXT,               -- identifies the process beyond its pid
    run_dir TEXT,
    ctl_dir TEXT,
    log_path TEXT,
    log_offset INTEGER NOT NULL DEFAULT 0,
    reports INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    exit_stage TEXT,               -- the stage that failed (setup, main, or a stage's name)
    stop_intent TEXT,
    stop_sent REAL,
    stop_reason TEXT NOT NULL DEFAULT '',  -- hypd's own words for why it is ending the run
    keepalive REAL,                -- the keepalive window the run asked for (HYPD: keepalive 20m)
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    deadline REAL,
    metrics TEXT NOT NULL DEFAULT '{}',   -- latest value of each metric
    objective REAL,
    last_line TEXT NOT NULL DEFAULT '',
    UNIQUE (study, run_no)
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs(state, id);
CREATE INDEX IF NOT EXISTS runs_by_study ON runs(study, state, id);
CREATE INDEX IF NOT EXISTS runs_by_trial ON runs(study, trial);
CREATE TABLE IF NOT EXISTS transitions (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_run ON transitions(run_id);
CREATE INDEX IF NOT EXISTS runs_by_study_id ON runs(study, id);   -- `ls --study S`, newest first
-- Per run and metric, what `info` shows without reading every report (kept with each
-- batch of reports; built from the reports once for a store made before it).
CREATE TABLE IF NOT EXISTS metric_stats (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    metric TEXT NOT NULL,
    position INTEGER NOT NULL,     -- where it first came: seq * 256 + its place in that report
    count INTEGER NOT NULL,
    first_value REAL,              -- NULL: nan
    last_value REAL,
    min_value REAL,                -- of the values that were numbers
    max_value REAL,
    last_step INTEGER NOT NULL,
    PRIMARY KEY (run_id, metric)
);
-- A study's [prepare] step: how many times `hypd retry STUDY --prepare` asked for it
-- again (part of what names its folder on a host), and the hosts where it failed.
CREATE TABLE IF NOT EXISTS prepares (
    study TEXT PRIMARY KEY,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS prepare_failures (
    study TEXT NOT NULL,
    host TEXT NOT NULL,
    dir TEXT NOT NULL,             -- the prepare's folder on that host: a changed step has another
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (study, host, dir)
);
-- What was fetched of a run's artifacts ([run] fetch), and where to: one JSON record.
CREATE TABLE IF NOT EXISTS artifacts (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL,           -- JSON object metric -> value
    PRIMARY KEY (run_id, seq)
);
"""


# Columns added after a store was first written (CREATE TABLE IF NOT EXISTS keeps an old
# table as it is): table -> column -> its declaration. Additive only, so an older hypd
# still reads the store.
_ADDED_COLUMNS = {"studies": {"pause_reason": "TEXT NOT NULL DEFAULT ''", "archived": "INTEGER NOT NULL DEFAULT 0"},
                  "runs": {"exit_stage": "TEXT", "stop_reason": "TEXT NOT NULL DEFAULT ''",
                           "replicate": "INTEGER NOT NULL DEFAULT 1", "keepalive": "REAL"}}


def _add_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


@dataclass(frozen=True)
class StudyRow:
    name: str
    source: str
    text: str
    base_dir: str
    created: float
    paused: bool
    search_state: str | None
    next_run_no: int
    last_served: float
    pause_reason: str = ""
    archived: bool = False  # hidden from `studies` and `ls` unless asked for


def _run_dict(row: Sequence[Any], columns: Sequence[str]) -> dict[str, Any]:
    out = dict(zip(columns, row))
    for key in JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    if "study" in out and "run_no" in out:
        out["name"] = f"{out['study']}:{out['run_no']}"
    return out


class Queries:
    """What the store answers (reads only; the CLI's and TUI's views of runs and studies)."""

    # Its own connection: in WAL mode reads never wait for a write, so `hypd ls` answers
    # while a write waits out another process's lock.
    reader: aiosqlite.Connection


    async def runs(self, *, state: str | None = None, study: str | None = None,
                   states: Sequence[str] | None = None, trial: int | None = None,
                   limit: int | None = None, columns: Sequence[str] = RUN_COLUMNS,
                   order: str = "id", exclude_studies: Sequence[str] = ()) -> list[dict[str, Any]]:
        where, args = [], []
        if exclude_studies:
            where.append(f"study NOT IN ({','.join('?' * len(exclude_studies))})")
            args.extend(exclude_studies)
        if state is not None:
            where.append("state=?")
            args.append(state)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if study is not None:
            where.append("study=?")
            args.append(study)
        if trial is not None:
            where.append("trial=?")
            args.append(trial)
        sql = f"SELECT {', '.join(columns)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}"
        return await self._fetch_runs(sql, args, columns, limit)

    async def _fetch_runs(self, sql: str, args: list[Any], columns: Sequence[str],
                          limit: int | None) -> list[dict[str, Any]]:
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = await self.reader.execute_fetchall(sql, args)
        if len(rows) > 1000:  # decoded on a thread: `ls --all` of 100,000 runs holds no one up
            return await asyncio.to_thread(lambda: [_run_dict(r, columns) for r in rows])
        return [_run_dict(r, columns) for r in rows]

    async def run(self, study: str, run_no: int) -> dict[str, Any] | None:
        rows = await self._runs_where("study=? AND run_no=?", (study, run_no))
        return rows[0] if rows else None

    async def run_by_id(self, run_id: int) -> dict[str, Any] | None:
        rows = await self._runs_where("id=?", (run_id,))
        return rows[0] if rows else None

    async def _runs_where(self, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        columns = ALL_COLUMNS
        rows = await self.reader.execute_fetchall(f"SELECT {', '.join(columns)} FROM runs WHERE {where}", args)
        return [_run_dict(r, columns) for r in rows]

    # An export's page is one JSON text built by SQLite (an array of rows, each an array
    # of EXPORT_RUN_FIELDS or EXPORT_REPORT_FIELDS) that the daemon passes on as it is: at
    # 100,000 runs, decoding and encoding each row in Python would be most of an export's
    # time. A JSON column that holds NaN or Infinity (SQLite's JSON reads neither) comes as
    # its text, for the client to decode.

    async def export_runs(self, study: str, after: int, limit: int) -> tuple[str, int, int]:
        """A page of the study's runs, in id order after id `after`: (the rows as JSON,
        how many, the last one's id)."""
        return await self._json_page(
            "SELECT json_group_array(json_array(id, study || ':' || run_no, trial, replicate, attempt, state, host,"
            f" json(gpus), started, ended, objective, {_JSON('params')}, {_JSON('metrics')})), count(*), max(id)"
            " FROM (SELECT * FROM runs WHERE study=? AND id>? ORDER BY id LIMIT ?)", (study, after, limit))

    async def export_reports(self, study: str, after: tuple[int, int], limit: int) -> tuple[str, int, int]:
        """A page of the study's reports, run by run and in order, after (run id, seq)
        `after`: (the rows as JSON, how many, the last one's run id << 32 | seq)."""
        run_id, seq = after
        return await self._json_page(
            "SELECT json_group_array(json_array(id, seq, run, trial, replicate, step, at,"
            f" {_JSON('data')})), count(*), max((id << 32) | seq) FROM ("
            "SELECT r.id, p.seq, r.study || ':' || r.run_no AS run, r.trial, r.replicate, p.step, p.at, p.data"
            " FROM runs r JOIN reports p ON p.run_id=r.id"
            " WHERE r.study=? AND (r.id>? OR (r.id=? AND p.seq>?)) ORDER BY r.id, p.seq LIMIT ?)",
            (study, run_id, run_id, seq, limit))

    async def _json_page(self, sql: str, args: Sequence[Any]) -> tuple[str, int, int]:
        ((text, count, last),) = await self.reader.execute_fetchall(sql, args)
        return text, count, last or 0

    async def metric_names(self, study: str, reports: bool = False) -> list[str]:
        """Every metric the study's runs reported (their final values), or that any of
        their reports holds, sorted."""
        sql = ("SELECT DISTINCT j.key FROM runs r JOIN reports p ON p.run_id=r.id, json_each(p.data) j "
               "WHERE r.study=?" if reports else
               "SELECT DISTINCT j.key FROM runs r, json_each(r.metrics) j WHERE r.study=?")
        return sorted(k for (k,) in await self.reader.execute_fetchall(sql, (study,)))

    async def transitions(self, run_id: int) -> list[dict[str, Any]]:
        rows = await self.reader.execute_fetchall(
            "SELECT at, from_state, to_state, reason FROM transitions WHERE run_id=? ORDER BY rowid",
            (run_id,))
        return [{"at": r[0], "from": r[1], "to": r[2], "reason": r[3]} for r in rows]

    async def reports(self, run_id: int, since: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """The run's reports from sequence number `since` on, in order (at most `limit`)."""
        rows = await self.reader.execute_fetchall(
            "SELECT step, at, data FROM reports WHERE run_id=? AND seq>=? ORDER BY seq LIMIT ?", (run_id, since, limit))
        return [{"step": r[0], "at": r[1], "values": json.loads(r[2])} for r in rows]

    async def study_reports(self, study: str, metric: str) -> dict[int, list[tuple[int, float, float]]]:
        """run id -> (step, time, value of `metric`) of each of its reports that has it, in
        order, for every run of a study (early stopping's view of the study)."""
        # Decoded here, not by SQLite's json_extract: values may be NaN or inf, which
        # Python's JSON writes and SQLite's reader refuses.
        rows = await self.reader.execute_fetchall(
            "SELECT r.run_id, r.step, r.at, r.data FROM reports r JOIN runs u ON u.id = r.run_id "
            "WHERE u.study = ? ORDER BY r.run_id, r.seq", (study,))
        out: dict[int, list[tuple[int, float, float]]] = {}
        for run_id, step, at, data in rows:
            value = json.loads(data).get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(run_id, []).append((step, at, float(value)))
        return out

    async def metric_summary(self, run_id: int) -> dict[str, dict[str, Any]]:
        """metric -> {count, first, last, min, max, last_step} over all the run's reports, in
        the order the metrics first came."""
        rows = await self.reader.execute_fetchall(
            "SELECT metric, count, first_value, last_value, min_value, max_value, last_step FROM metric_stats "
            "WHERE run_id=? ORDER BY position", (run_id,))
        return {m: {"count": n, "first": first, "last": last, "min": lo, "max": hi, "last_step": step}
                for m, n, first, last, lo, hi, step in rows}

    async def state_counts(self) -> dict[str, dict[str, int]]:
        """study -> state -> number of runs."""
        out: dict[str, dict[str, int]] = {}
        for study, state, n in await self.reader.execute_fetchall(
                "SELECT study, state, COUNT(*) FROM runs GROUP BY study, state"):
            out.setdefault(study, {})[state] = n
        return out

    async def trial_outcomes(self) -> dict[str, dict[str, int]]:
        """study -> outcome -> number of trials. A trial's outcome is completed (or stopped)
        if an attempt was; else running or pending while an attempt is; else how its last
        attempt ended. A trial counts once however many attempts it took."""
        sql = """SELECT study, outcome, COUNT(*) FROM (
                   SELECT study, CASE WHEN SUM(state='completed') THEN 'completed'
                                      WHEN SUM(state='stopped') THEN 'stopped'
                                      WHEN SUM(state IN ('running', 'queued')) THEN 'running'
                                      WHEN SUM(state='pending') THEN 'pending'
                                      ELSE (SELECT l.state FROM runs l WHERE l.study=r.study AND l.trial=r.trial
                                            ORDER BY l.attempt DESC LIMIT 1) END AS outcome
                   FROM runs r GROUP BY study, trial)
                 GROUP BY study, outcome"""
        out: dict[str, dict[str, int]] = {}
        for study, outcome, n in await self.reader.execute_fetchall(sql):
            out.setdefault(study, {})[outcome] = n
        return out

    async def trial_params(self, study: str) -> list[dict[str, Any]]:
        """The parameters of each of the study's trials, in trial order."""
        rows = await self.reader.execute_fetchall("SELECT params FROM trials WHERE study=? ORDER BY trial", (study,))
        return [json.loads(p) for (p,) in rows]

    async def trial_count(self, study: str) -> int:
        ((n,),) = await self.reader.execute_fetchall("SELECT COUNT(*) FROM trials WHERE study=?", (study,))
        return int(n)

    async def trial_counts(self) -> dict[str, int]:
        return dict(await self.reader.execute_fetchall("SELECT study, COUNT(*) FROM trials GROUP BY study"))

    async def best_runs(self, study: str, minimize: bool, limit: int | None = None, *,
                        by_mean: bool = False) -> list[dict[str, Any]]:
        """The best run of each trial with a result, best first. by_mean (a study with
        replicates): trials ranked by the mean of their runs' results, each row with
        `mean`, `sem` (None below two runs), `low`, `high` and `n` (runs with a result)."""
        agg = "MIN" if minimize else "MAX"
        order = "ASC" if minimize else "DESC"
        sql = (f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, b.mean, b.low, b.high, b.n, b.squares "
               f"FROM runs r JOIN ("
               f"  SELECT trial, {agg}(objective) AS best, AVG(objective) AS mean, MIN(objective) AS low,"
               f"         MAX(objective) AS high, COUNT(*) AS n, SUM(objective * objective) AS squares FROM runs"
               f"  WHERE study=? AND objective IS NOT NULL AND state IN ('completed','stopped')"
               f"  GROUP BY trial) b ON r.trial=b.trial AND r.objective=b.best "
               f"WHERE r.study=? AND r.state IN ('completed','stopped') "
               f"GROUP BY r.trial ORDER BY {'b.mean' if by_mean else 'r.objective'} {order}, r.id")
        args: list[Any] = [study, study]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        n_cols = len(RUN_COLUMNS)
        out = []
        for row in await self.reader.execute_fetchall(sql, args):
            run = _run_dict(row[:n_cols], RUN_COLUMNS)
            if by_mean:
                mean, low, high, n, squares = row[n_cols:]
                run.update(mean=mean, sem=standard_error(mean, squares, n), low=low, high=high, n=n)
            out.append(run)
        return out


_STUDY_COLUMNS = ("name, source, text, base_dir, created, paused, search_state, next_run_no, last_served, "
                  "pause_reason, archived")


def _study_row(row: Sequence[Any]) -> StudyRow:
    return StudyRow(*row[:5], bool(row[5]), *row[6:10], bool(row[10]))


class Store(RunWrites, Queries):
    """The daemon's store: reads through Queries' connection, every write through the
    Writer's (the daemon is the only writer)."""

    def __init__(self, writer: Writer, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self.path = writer.path
        self.busy_timeout_ms = writer.busy_timeout_ms
        self.highwater = HighWater(0, 0, 0)  # what the store held when last recorded
        self.lost: str | None = None  # what it had lost at open (hypd.storecheck), in one line

    @classmethod
    async def open(cls, path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Store:
        """Open (creating if need be) the store at path. busy_timeout_ms: how long a write
        waits for another process's write lock before StoreUnavailable."""
        path.parent.mkdir(parents=True, exist_ok=True)
        busy_timeout_ms = int(busy_timeout_ms)
        check_header(path)
        holds: list[HighWater] = []

        def setup(db: sqlite3.Connection) -> None:
            try:
                db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=ON")
                check_pages(path, [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()])
                db.executescript(SCHEMA)
                _add_columns(db)
                mark_metric_stats(db)
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in DAMAGED_CODES:
                    raise DamagedStore(f"{path} is damaged ({exc}); {way_out(path)}") from exc
                raise
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer hypd (schema {row[0]}); upgrade hypd")
            holds.append(HighWater(*db.execute(HIGHWATER_SQL).fetchone(), at=time.time()))

        writer = await Writer.open(path, busy_timeout_ms, setup)
        # Its own connection: in WAL mode reads never wait for a write, so `hypd ls`
        # answers while a write waits out another process's lock.
        try:
            reader = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
            try:
                await reader.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
                await reader.execute("PRAGMA query_only=ON")
            except BaseException:
                await reader.close()
                raise
        except BaseException as exc:
            await writer.close()
            if (why := unavailable_reason(exc, path, busy_timeout_ms)) is not None:
                raise StoreUnavailable(why) from exc
            raise
        store = cls(writer, reader)
        now = store.highwater = holds[0]
        was = await asyncio.to_thread(read_highwater, path)
        store.lost = None if was is None else lost_data_line(path, was, now)
        if was is None or store.lost:  # a loss is said once: from here on, what it holds is the mark
            await asyncio.to_thread(write_highwater, path, now)
        return store

    async def save_highwater(self) -> None:
        """Record what the store holds now (hypd.storecheck), when it has grown."""
        async with self.reader.execute(HIGHWATER_SQL) as cur:
            now = HighWater(*(await cur.fetchone() or (0, 0, 0)), at=time.time())  # type: ignore[misc]
        if not now.same(self.highwater):
            await asyncio.to_thread(write_highwater, self.path, now)
            self.highwater = now

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.save_highwater()
        await self.reader.close()
        await self.writer.close()

    # ------------------------------------------------------------ studies

    async def add_study(self, name: str, source: str, text: str, base_dir: str, search_state: str | None,
                        trials: Sequence[tuple[int, Mapping[str, Any]]] = (), replicates: int = 1
                        ) -> list[dict[str, Any]]:
        """A new study with its first trials (each with a pending run per replicate), in
        one transaction: the whole study is stored or none of it. Returns the new runs."""

        def add(db: sqlite3.Connection) -> list[dict[str, Any]]:
            db.execute("INSERT INTO studies (name, source, text, base_dir, created, search_state) VALUES (?,?,?,?,?,?)",
                       (name, source, text, base_dir, time.time(), search_state))
            return insert_trials(db, name, trials, "search", replicates)

        return await self.writer.transaction(add)

    async def update_study_source(self, name: str, source: str, text: str, base_dir: str) -> None:
        await self.write("UPDATE studies SET source=?, text=?, base_dir=? WHERE name=?",
                         (source, text, base_dir, name))

    async def study(self, name: str) -> StudyRow | None:
        row = await self.writer.call(
            lambda db: db.execute(f"SELECT {_STUDY_COLUMNS} FROM studies WHERE name=?", (name,)).fetchone())
        return _study_row(row) if row else None

    async def studies(self) -> list[StudyRow]:
        rows = await self.writer.call(
            lambda db: db.execute(f"SELECT {_STUDY_COLUMNS} FROM studies ORDER BY created").fetchall())
        return [_study_row(r) for r in rows]

    async def set_paused(self, name: str, paused: bool, reason: str = "") -> None:
        await self.write("UPDATE studies SET paused=?, pause_reason=? WHERE name=?", (int(paused), reason, name))

    async def set_artifacts(self, run_id: int, record: Mapping[str, Any]) -> None:
        await self.write("INSERT OR REPLACE INTO artifacts (run_id, data) VALUES (?, ?)", (run_id, json.dumps(record)))

    async def artifacts(self, run_id: int) -> dict[str, Any] | None:
        """What the last fetch of the run's artifacts did (hypd.artifacts.Fetcher.fetch)."""
        rows = list(await self.reader.execute_fetchall("SELECT data FROM artifacts WHERE run_id=?", (run_id,)))
        return json.loads(rows[0][0]) if rows else None

    async def fetches_under_way(self) -> list[int]:
        """Runs whose artifacts were being copied when the daemon stopped."""
        rows = await self.reader.execute_fetchall(
            "SELECT run_id FROM artifacts WHERE json_extract(data, '$.fetching') = 1")
        return [r[0] for r in rows]

    async def set_archived(self, name: str, archived: bool) -> None:
        await self.write("UPDATE studies SET archived=? WHERE name=?", (int(archived), name))

    async def remove_study(self, name: str) -> None:
        """The study, its trials, runs, reports and state changes, in one transaction; the
        high-water mark follows at once (the store holding less is no loss of data)."""
        def remove(db: sqlite3.Connection) -> None:
            # Every table keyed by a run, then by the study (whatever tables a later hypd adds).
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            columns = {t: {c[1] for c in db.execute(f"PRAGMA table_info({t})")} for t in tables}
            for table in tables:
                if "run_id" in columns[table]:
                    db.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT id FROM runs WHERE study=?)", (name,))
            for table in tables:
                if "study" in columns[table] and table != "runs":
                    db.execute(f"DELETE FROM {table} WHERE study=?", (name,))
            db.execute("DELETE FROM runs WHERE study=?", (name,))
            db.execute("DELETE FROM studies WHERE name=?", (name,))
        await self.writer.transaction(remove)
        await self.save_highwater()

    async def set_search_state(self, name: str, state: str) -> None:
        await self.write("UPDATE studies SET search_state=? WHERE name=?", (state, name))

    async def set_last_served(self, name: str, at: float) -> None:
        await self.write("UPDATE studies SET last_served=? WHERE name=?", (at, name))


    async def prepare_generations(self) -> dict[str, int]:
        return dict(await self.reader.execute_fetchall("SELECT study, generation FROM prepares"))

    async def prepare_failures(self) -> list[tuple[str, str, str, str]]:
        """(study, host, dir, reason) of every prepare step that failed."""
        return list(await self.reader.execute_fetchall("SELECT study, host, dir, reason FROM prepare_failures"))

    async def add_prepare_failure(self, study: str, host: str, dir: str, reason: str) -> None:
        await self.write("INSERT OR REPLACE INTO prepare_failures (study, host, dir, reason, at) VALUES (?,?,?,?,?)",
                         (study, host, dir, reason, time.time()))

    async def prepare_again(self, study: str) -> int:
        """`hypd retry STUDY --prepare`: its failures forgotten and a new generation (a new
        folder on each host: it runs again everywhere). Returns the generation."""

        def bump(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM prepare_failures WHERE study=?", (study,))
            db.execute("INSERT INTO prepares (study, generation) VALUES (?, 1) "
                       "ON CONFLICT(study) DO UPDATE SET generation = generation + 1", (study,))
            ((n,),) = db.execute("SELECT generation FROM prepares WHERE study=?", (study,)).fetchall()
            return int(n)

        return await self.writer.transaction(bump)  # type: ignore[no-any-return]


EXPORT_RUN_FIELDS = ("id", "name", "trial", "replicate", "attempt", "state", "host", "gpus", "started", "ended",
                     "objective", "params", "metrics")
EXPORT_REPORT_FIELDS = ("id", "seq", "run", "trial", "replicate", "step", "at", "values")


def _JSON(column: str) -> str:  # noqa: N802 - reads as the SQL it writes
    return f"CASE WHEN json_valid({column}) THEN json({column}) ELSE {column} END"


