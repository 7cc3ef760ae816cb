"""hypd.store when the database cannot be written: real SQLite files, a real second
process holding the write lock, a real full disk (a small tmpfs). No mocks.

What must hold: the failed write raises StoreUnavailable with one line saying why, keeps
nothing of itself, leaves no transaction open, and the same write succeeds once the fault
is gone — with the store as it is, nothing reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hypd.runstate import InvalidTransition, RunState
from hypd.store import Store, StoreError, StoreUnavailable, unavailable_reason

pytestmark = pytest.mark.faults

# Another process: takes the database's write lock (BEGIN IMMEDIATE), writes a row, and
# holds the lock until told to let go on stdin — or for argv[2] seconds — then commits.
HOLDER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT OR REPLACE INTO meta VALUES ('holder', 'was here')")
print("holding", flush=True)
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
else:
    sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


class Holder:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, db: Path, seconds: float | None = None) -> Holder:
        args = [sys.executable, "-c", HOLDER, str(db)] + ([str(seconds)] if seconds is not None else [])
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line == b"holding\n", line
        return cls(proc)

    async def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.returncode is None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.proc.stdin.write(b"go\n")
                await self.proc.stdin.drain()
        out = await asyncio.wait_for(self.proc.stdout.read(), 10)
        assert await asyncio.wait_for(self.proc.wait(), 10) == 0
        assert out == b"released\n"

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def running_run(store: Store) -> int:
    await store.add_study("a", "/s/a.toml", "# a", "/s", "state-0")
    (run,) = await store.add_trials("a", [(1, {"x": 1})], None)
    await store.transition(run["id"], RunState.RUNNING, "started")
    return int(run["id"])


def batch(n: int, first_step: int = 0, width: int = 1) -> list[tuple[int, float, dict[str, float]]]:
    return [(first_step + i, 1000.0 + i, {f"metric_{k:03d}_{'m' * 40}": i + k / 10 for k in range(width)})
            for i in range(n)]


async def add(store: Store, run_id: int, reports: list[tuple[int, float, dict[str, float]]],
              offset: int) -> None:
    await store.add_reports(run_id, reports, log_offset=offset, metrics=dict(reports[-1][2]) if reports else {},
                            objective=1.5, last_line=f"line at {offset}")


async def stored(store: Store, run_id: int) -> tuple[list[tuple[int, float, dict[str, float]]], int, int]:
    """The run's reports as written, its log offset and its report count."""
    row = await store.run_by_id(run_id)
    assert row is not None
    reports = [(r["step"], r["at"], r["values"]) for r in await store.reports(run_id)]
    return reports, row["log_offset"], row["reports"]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


# ------------------------------------------------------------------ another process holds the lock

@pytest.mark.slow
async def test_a_write_lock_held_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "hypd.db"
    store = await Store.open(db, busy_timeout_ms=200)
    holder: Holder | None = None
    try:
        run_id = await running_run(store)
        first = batch(2)
        await add(store, run_id, first, 100)
        holder = await Holder.start(db)

        second = batch(3, first_step=2)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await add(store, run_id, second, 250)
        waited = time.monotonic() - t0
        assert "database is locked by another process" in one_line(caught.value)
        assert str(db) in str(caught.value)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert 0.15 <= waited < 3  # the busy timeout it was opened with, not the default 5 s
        assert not store.writer.in_transaction

        # Every kind of write gives up the same way and keeps nothing.
        for write in (lambda: store.transition(run_id, RunState.COMPLETED, "done"),
                      lambda: store.update_run(run_id, last_line="x"),
                      lambda: store.write("UPDATE runs SET last_line='y' WHERE id=?", (run_id,)),
                      lambda: store.set_paused("a", True),
                      lambda: store.record_told("a", "state-1", [(1, "completed")]),
                      lambda: store.add_trials("a", [(2, {"x": 2})], None)):
            with pytest.raises(StoreUnavailable, match="locked by another process"):
                await write()
            assert not store.writer.in_transaction
        # Reading goes on meanwhile (WAL) and shows nothing of the failed writes.
        assert await stored(store, run_id) == (first, 100, 2)
        row = await store.run_by_id(run_id)
        assert row is not None and (row["state"], row["last_line"]) == ("running", "line at 100")
        assert await store.trial_count("a") == 1

        await holder.release()
        # The same write now simply succeeds: written once, offset moved once.
        await add(store, run_id, second, 250)
        assert await stored(store, run_id) == (first + second, 250, 5)
        # No transaction was left open: a transition (its own transaction) works.
        await store.transition(run_id, RunState.COMPLETED, "done")
        assert [t["to"] for t in await store.transitions(run_id)] == ["pending", "running", "completed"]
        await store.record_told("a", "state-1", [(1, "completed")])
        assert await store.trial_told("a", 1) == "completed"
    finally:
        if holder is not None:
            holder.kill()
        await store.close()
    # What another connection sees: exactly one copy of each report, the holder's row too.
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM reports").fetchone() == (5, 5)
        assert conn.execute("SELECT log_offset, reports FROM runs").fetchall() == [(250, 5)]
        assert conn.execute("SELECT value FROM meta WHERE key='holder'").fetchall() == [("was here",)]


async def test_a_short_lock_is_waited_out(tmp_path: Path) -> None:
    db = tmp_path / "hypd.db"
    store = await Store.open(db)  # the default busy timeout: 5 s
    try:
        assert store.busy_timeout_ms == 5000
        run_id = await running_run(store)
        holder = await Holder.start(db, seconds=0.5)
        t0 = time.monotonic()
        await add(store, run_id, batch(3), 80)
        assert time.monotonic() - t0 >= 0.3  # it waited for the other process
        await holder.release()
        assert await stored(store, run_id) == (batch(3), 80, 3)
    finally:
        await store.close()


async def test_reads_do_not_wait_behind_a_write_that_waits_for_a_lock(tmp_path: Path) -> None:
    """`hypd ls` answers while a write waits out another process's lock: reads have their
    own connection, and in WAL mode a read never waits for a writer."""
    db = tmp_path / "hypd.db"
    store = await Store.open(db, busy_timeout_ms=3000)
    try:
        run_id = await running_run(store)
        holder = await Holder.start(db)
        try:
            write = asyncio.create_task(add(store, run_id, batch(2), 40))
            await asyncio.sleep(0.2)  # the write is waiting for the lock now
            t0 = time.monotonic()
            rows = await store.runs(columns=("id", "state"))
            read_took = time.monotonic() - t0
            assert rows == [{"id": run_id, "state": "running"}]
            assert not write.done()
        finally:
            await holder.release()
        await write
        assert read_took < 1.0, read_took  # not the 3 s the write waits
        assert await stored(store, run_id) == (batch(2), 40, 2)
    finally:
        await store.close()


async def test_busy_timeout_is_a_parameter(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "hypd.db", busy_timeout_ms=1234)
    try:
        assert await store.writer.call(lambda db: db.execute("PRAGMA busy_timeout").fetchone()[0]) == 1234
    finally:
        await store.close()


async def test_opening_a_locked_new_database_says_so(tmp_path: Path) -> None:
    db = tmp_path / "hypd.db"
    with sqlite3.connect(db, isolation_level=None) as conn:  # an empty database, in WAL mode
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    holder = await Holder.start(db)
    try:
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            await Store.open(db, busy_timeout_ms=100)
    finally:
        await holder.release()
    await (await Store.open(db, busy_timeout_ms=100)).close()


# ------------------------------------------------------------------ mistakes keep their own types

async def test_mistakes_are_not_store_unavailable(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "hypd.db", busy_timeout_ms=100)
    try:
        run_id = await running_run(store)
        with pytest.raises(sqlite3.IntegrityError):
            await store.add_trials("a", [(1, {"x": 1})], None)  # trial 1 exists
        with pytest.raises(InvalidTransition):
            await store.transition(run_id, RunState.RUNNING, "again")
        with pytest.raises(sqlite3.OperationalError) as caught:
            await store.write("UPDATE nowhere SET x=1")
        assert not isinstance(caught.value, StoreUnavailable)
        with pytest.raises(StoreError) as err:
            await store.update_run(run_id, id=5)
        assert not isinstance(err.value, StoreUnavailable)
        assert not store.writer.in_transaction
        await store.transition(run_id, RunState.COMPLETED, "done")
    finally:
        await store.close()


async def test_a_commit_that_fails_is_rolled_back(tmp_path: Path) -> None:
    # A failure at COMMIT itself (here a foreign key checked only at COMMIT; a busy or
    # I/O error there is the same) leaves SQLite inside the transaction: the store rolls
    # it back, so nothing of it is kept and the next write does not fail on BEGIN.
    store = await Store.open(tmp_path / "hypd.db", busy_timeout_ms=100)
    try:
        run_id = await running_run(store)
        def half_written(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA defer_foreign_keys=ON")
            db.execute("UPDATE runs SET last_line='half' WHERE id=?", (run_id,))
            db.execute("INSERT INTO reports (run_id, seq, step, at, data) VALUES (999, 0, 0, 0, '{}')")

        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await store.writer.transaction(half_written)
        assert not store.writer.in_transaction
        await add(store, run_id, batch(2), 40)
        assert await stored(store, run_id) == (batch(2), 40, 2)
        row = await store.run_by_id(run_id)
        assert row is not None and row["last_line"] == "line at 40"
        assert await store.reader.execute_fetchall("SELECT COUNT(*) FROM reports WHERE run_id=999") == [(0,)]
    finally:
        await store.close()


def test_unavailable_reason_of_real_errors(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with sqlite3.connect(db, isolation_level=None) as a, sqlite3.connect(db, isolation_level=None, timeout=0) as b:
        a.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        a.execute("INSERT INTO t VALUES (1)")
        errors: dict[str, sqlite3.Error] = {}
        for name, conn, sql in [("constraint", a, "INSERT INTO t VALUES (1)"),
                                ("no table", a, "SELECT * FROM nowhere"),
                                ("syntax", a, "SELEC 1")]:
            with pytest.raises(sqlite3.Error) as caught:
                conn.execute(sql)
            errors[name] = caught.value
        a.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            b.execute("BEGIN IMMEDIATE")
        errors["locked"] = caught.value
        a.execute("ROLLBACK")
    for name in ("constraint", "no table", "syntax"):
        assert unavailable_reason(errors[name], db) is None, name
    assert unavailable_reason(errors["locked"], db, 70) == f"database is locked by another process (waited 70 ms): {db}"
    assert unavailable_reason(ValueError("database is locked"), db) is None
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught, sqlite3.connect(tmp_path / "junk.db") as c:
        c.execute("SELECT * FROM sqlite_master")
    assert (unavailable_reason(caught.value, tmp_path / "junk.db") or "").startswith("database file is damaged")


# ------------------------------------------------------------------ a full disk

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (needs root, or CAP_SYS_ADMIN)."""
    where = tmp_path / "disk"
    where.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("a full disk needs mount(8) and umount(8) to mount a small tmpfs")
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs, and mounting one needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> int:
    """Write a file until the disk is full; how many bytes it took."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    total = 0
    try:
        for size in (1 << 16, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    total += os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return total


@pytest.fixture
async def store_on_small_disk(small_disk: Path) -> AsyncIterator[Store]:
    store = await Store.open(small_disk / "hypd.db", busy_timeout_ms=200)
    try:
        yield store
    finally:
        await store.close()


async def test_a_full_disk(store_on_small_disk: Store, small_disk: Path) -> None:
    store = store_on_small_disk
    run_id = await running_run(store)
    first = batch(5)
    await add(store, run_id, first, 100)
    filler = small_disk / "filler"
    assert fill(filler) > 0
    assert shutil.disk_usage(small_disk).free < 8192

    big = batch(300, first_step=5, width=8)  # a few hundred kB: the WAL must grow
    for _ in range(2):  # failing again is the same clean failure, not "within a transaction"
        with pytest.raises(StoreUnavailable) as caught:
            await add(store, run_id, big, 90_000)
        assert one_line(caught.value) == f"disk full: {store.path}"
        assert not store.writer.in_transaction
        # Nothing half-written: the reports, the offset and the summary are as before.
        assert await stored(store, run_id) == (first, 100, 5)
    with pytest.raises(StoreUnavailable, match="disk full"):
        await store.update_run(run_id, last_line="z" * 100_000)
    with pytest.raises(StoreUnavailable, match="disk full"):
        await store.write("UPDATE runs SET last_line=? WHERE id=?", ("w" * 100_000, run_id))
    with pytest.raises(StoreUnavailable, match="disk full"):
        await store.record_told("a", "s" * 100_000, [(1, "completed")])
    assert await store.trial_told("a", 1) is None
    row = await store.run_by_id(run_id)
    assert row is not None and row["last_line"] == "line at 100"

    filler.unlink()
    # The same write succeeds on the same store: once.
    await add(store, run_id, big, 90_000)
    assert await stored(store, run_id) == (first + big, 90_000, 305)
    await store.transition(run_id, RunState.COMPLETED, "done")
    await store.record_told("a", "state-1", [(1, "completed")])
    assert await store.trial_told("a", 1) == "completed"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM reports").fetchone() == (305, 0, 304)
