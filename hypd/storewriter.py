"""The store's write connection (the Writer: each transaction one trip to its thread) and
what a write that cannot be done now raises: StoreUnavailable, with one line saying why,
after rolling back whatever the write had done."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar


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
DAMAGED_CODES = (_SQLITE_CORRUPT, _SQLITE_NOTADB)  # the file itself is damaged
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
    if primary in DAMAGED_CODES or "malformed" in text or "not a database" in text:
        return f"database file is damaged ({text}): {path}"
    if primary == _SQLITE_NOMEM or "out of memory" in text:
        return f"out of memory writing {path}"
    if primary == _SQLITE_PROTOCOL:
        return f"database locking protocol failed ({text}): {path}"
    return None


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
