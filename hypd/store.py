"""The SQLite store (WAL): studies, trials, runs, their transitions and metrics. Reads go
through aiosqlite (Queries), writes through the Writer: each transaction one trip to its
thread.

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
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from hypd.ipc import RUN_FIELDS
from hypd.replicates import standard_error
from hypd.runstate import RunState, check_transition
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

# The columns a run is shown with (ls, info, events, the TUI): hypd.ipc.Run, less its name.
RUN_COLUMNS = tuple(f for f in RUN_FIELDS if f != "name")
_JSON_COLUMNS = {"params", "gpus", "metrics"}


class StoreError(RuntimeError):
    pass


class StoreUnavailable(StoreError):
    """The database cannot be written now (locked by another process, disk full, I/O
    error). The failed write left nothing behind; the same write may be tried again."""


DEFAULT_BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")

# SQLite's primary result codes that say the database cannot be used now, rather than
# that the statement was wrong.
_SQLITE_NOMEM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 7, 8, 10, 11
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL, _SQLITE_NOTADB = \
    5, 6, 13, 14, 15, 26
_LOW_SPACE = 1 << 20  # bytes free under which an I/O error is told as a full disk


def unavailable_reason(exc: BaseException, path: Path, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> str | None:
    """One line saying why the database cannot be written now, or None when exc is not
    such a fault (a programming error, a constraint, anything not from SQLite)."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text or "table is locked" in text:
        return f"database is locked by another process (waited {busy_timeout_ms} ms): {path}"
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return f"disk full: {path}"
    if primary == _SQLITE_IOERR or "disk I/O error" in text:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(path.parent).free < _LOW_SPACE:
                return f"disk full: {path}"
        return f"disk I/O error: {path}"
    if primary == _SQLITE_READONLY or "readonly database" in text:
        return f"database is read-only: {path}"
    if primary == _SQLITE_CANTOPEN or "unable to open database" in text:
        return f"cannot open the database file: {path}"
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        return f"database file is damaged ({text}): {path}"
    if primary == _SQLITE_NOMEM or "out of memory" in text:
        return f"out of memory writing {path}"
    if primary == _SQLITE_PROTOCOL:
        return f"database locking protocol failed ({text}): {path}"
    return None


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
    for key in _JSON_COLUMNS & out.keys():
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
        columns = _ALL_COLUMNS
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


class Writer:
    """The store's write connection, on a thread of its own. A transaction is a plain
    function of the connection, run there whole in one trip from the event loop: sent
    statement by statement (each execute, fetch and cursor close a trip of its own),
    the ~25 statements of a run's life cost ~95 trips, most of the daemon's CPU per run.
    One thread runs them one after another, so transactions never interleave."""

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, path: Path,
                 busy_timeout_ms: int) -> None:
        self.conn = conn
        self._thread = thread  # one worker: the connection is only ever used there
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int, setup: Callable[[sqlite3.Connection], None]) -> Writer:
        """Connect on the writer's own thread and run setup there; a failure closes it."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hypd-store")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000,
                                   check_same_thread=False)
            try:
                setup(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException as exc:
            thread.shutdown(wait=False)
            if (why := unavailable_reason(exc, path, busy_timeout_ms)) is not None:
                raise StoreUnavailable(why) from exc
            raise
        return cls(conn, thread, path, busy_timeout_ms)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) on the writer's thread, outside any transaction (autocommit)."""
        return await self._run(self._autocommit, fn, args)

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) between BEGIN IMMEDIATE and COMMIT, on the writer's thread.
        Any failure in fn or at COMMIT rolls back; a database that cannot be written now
        raises StoreUnavailable."""
        return await self._run(self._transaction, fn, args)

    async def close(self) -> None:
        await self._run(lambda: self.conn.close())
        self._thread.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            if (why := unavailable_reason(exc, self.path, self.busy_timeout_ms)) is not None:
                raise StoreUnavailable(why) from exc
            raise

    def _rollback(self) -> None:
        """Undo an open transaction; a rollback that fails too (nothing open any more, the
        disk gone) is ignored: the next write checks again."""
        with contextlib.suppress(Exception):
            self.conn.execute("ROLLBACK")

    def _autocommit(self, fn: Callable[..., T], args: Sequence[Any]) -> T:
        if self.conn.in_transaction:  # left open by a failure whose rollback failed as well
            self._rollback()
        return fn(self.conn, *args)

    def _transaction(self, fn: Callable[..., T], args: Sequence[Any]) -> T:
        if self.conn.in_transaction:
            self._rollback()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(self.conn, *args)
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return result


class Store(Queries):
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
                _mark_metric_stats(db)
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
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

    async def write(self, sql: str, args: Sequence[Any] = ()) -> None:
        """One statement on its own (autocommit)."""
        await self.writer.call(lambda db: db.execute(sql, args))

    # ------------------------------------------------------------ studies

    async def add_study(self, name: str, source: str, text: str, base_dir: str, search_state: str | None,
                        trials: Sequence[tuple[int, Mapping[str, Any]]] = (), replicates: int = 1
                        ) -> list[dict[str, Any]]:
        """A new study with its first trials (each with a pending run per replicate), in
        one transaction: the whole study is stored or none of it. Returns the new runs."""

        def add(db: sqlite3.Connection) -> list[dict[str, Any]]:
            db.execute("INSERT INTO studies (name, source, text, base_dir, created, search_state) VALUES (?,?,?,?,?,?)",
                       (name, source, text, base_dir, time.time(), search_state))
            return _insert_trials(db, name, trials, "search", replicates)

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

    # ------------------------------------------------------------ trials and runs

    async def add_trials(self, study: str, trials: Iterable[tuple[int, Mapping[str, Any]]],
                         search_state: str | None, source: str = "search", replicates: int = 1
                         ) -> list[dict[str, Any]]:
        """New trials, each with its first run (pending) of each of its `replicates`, and
        the search's new state, in one transaction. Returns the new runs, a trial's
        replicates one after the other."""
        trials = list(trials)

        def add(db: sqlite3.Connection) -> list[dict[str, Any]]:
            runs = _insert_trials(db, study, trials, source, replicates)
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
            runs += _insert_trials(db, study, waiting, "search", replicates)
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


def _mark_metric_stats(db: sqlite3.Connection) -> None:
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


def _insert_trials(db: sqlite3.Connection, study: str, trials: Sequence[tuple[int, Mapping[str, Any]]],
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
        values.append(json.dumps(value) if key in _JSON_COLUMNS else value)
    db.execute(f"UPDATE runs SET {', '.join(cols)} WHERE id=?", (*values, run_id))


EXPORT_RUN_FIELDS = ("id", "name", "trial", "replicate", "attempt", "state", "host", "gpus", "started", "ended",
                     "objective", "params", "metrics")
EXPORT_REPORT_FIELDS = ("id", "seq", "run", "trial", "replicate", "step", "at", "values")


def _JSON(column: str) -> str:  # noqa: N802 - reads as the SQL it writes
    return f"CASE WHEN json_valid({column}) THEN json({column}) ELSE {column} END"


_ALL_COLUMNS = RUN_COLUMNS + ("pid", "proc_start", "ctl_dir", "log_offset", "stop_intent", "stop_sent",
                              "stop_reason", "keepalive")
_WRITABLE = set(_ALL_COLUMNS) - {"id", "study", "run_no", "trial", "attempt", "params", "created"}
