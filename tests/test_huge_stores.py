"""Huge stores (issue 11): per-metric summaries kept with the reports (and built once for a
store made before them), reports read a page at a time, and through a real daemon `hypd
ls` paging the newest runs from an index and `hypd info` answering a run with hundreds of
thousands of reports as fast as one with ten."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hypd.ipc import REPLIES, Client, mismatch, socket_path
from hypd.store import Store
from tests.conftest import DaemonProc


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "hypd.db")
    yield s
    await s.close()


async def a_run(store: Store, study: str = "a") -> int:
    await store.add_study(study, f"/s/{study}.toml", "# a", "/s", None)
    [run] = await store.add_trials(study, [(0, {"x": 1})], None)
    return int(run["id"])


async def report(store: Store, run_id: int, batch: list[tuple[int, dict[str, float]]]) -> None:
    await store.add_reports(run_id, [(step, 0.0, values) for step, values in batch], log_offset=0,
                            metrics=batch[-1][1], objective=None, last_line="")


def expected_summary(batches: list[list[tuple[int, dict[str, float]]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for step, values in (r for b in batches for r in b):
        for name, v in values.items():
            s = out.setdefault(name, {"count": 0, "first": None if math.isnan(v) else v, "min": None, "max": None})
            s["count"] += 1
            s["last"], s["last_step"] = (None if math.isnan(v) else v), step
            if not math.isnan(v):
                s["min"] = v if s["min"] is None else min(s["min"], v)
                s["max"] = v if s["max"] is None else max(s["max"], v)
    return out


BATCHES = [
    [(0, {"loss": 3.0, "acc": 0.1}), (1, {"loss": 2.0})],
    [(2, {"acc": float("nan"), "loss": 5.0}), (3, {"grad": -1.0, "loss": 1.0})],
    [(9, {"acc": 0.7, "loss": float("inf")})],
]


async def test_summary_of_every_metric_is_kept_with_each_batch(store: Store) -> None:
    run_id = await a_run(store)
    for batch in BATCHES:
        await report(store, run_id, batch)
    summary = await store.metric_summary(run_id)
    assert list(summary) == ["loss", "acc", "grad"]  # the order they first came
    assert summary == expected_summary(BATCHES)


async def test_a_store_made_before_summaries_gets_them_built_once(tmp_path: Path) -> None:
    path = tmp_path / "hypd.db"
    store = await Store.open(path)
    run_id = await a_run(store)
    for batch in BATCHES:
        await report(store, run_id, batch)
    before = await store.metric_summary(run_id)
    await store.close()
    with sqlite3.connect(path) as db:  # as an older hypd left it
        db.execute("DROP TABLE metric_stats")
        db.execute("DELETE FROM meta WHERE key='metric_stats'")
    store = await Store.open(path)
    try:
        assert await store.metric_summary(run_id) == {}  # built after the socket answers, not at open
        assert await store.build_metric_stats() == 5
        assert await store.build_metric_stats() == 0  # once
        assert await store.metric_summary(run_id) == before
        await report(store, run_id, [(10, {"loss": -2.0})])
        assert (await store.metric_summary(run_id))["loss"]["min"] == -2.0
    finally:
        await store.close()


async def test_reports_are_read_a_page_at_a_time(store: Store) -> None:
    run_id = await a_run(store)
    await report(store, run_id, [(i, {"loss": float(i)}) for i in range(50)])
    page = await store.reports(run_id, 45, 10)
    assert [r["step"] for r in page] == [45, 46, 47, 48, 49]
    assert [r["step"] for r in await store.reports(run_id, 10, 3)] == [10, 11, 12]
    assert len(await store.reports(run_id)) == 50


# ---------------------------------------------------------------- through a real daemon

STUDY = """\
[study]
name = "{name}"
objective = "loss"
algorithm = "random"
max_trials = {n}
[params]
x = {{ type = "float", low = 0, high = 1 }}
[run]
command = "true {{x}}"
"""


async def fill(home: Path, runs: int, reports: int) -> None:
    """Study `big` with `runs` runs (paused: none starts), a fifth of them pending, and
    `reports` reports for big:1; study `small`, one run with ten reports."""
    store = await Store.open(home / "hypd.db")
    try:
        for name, n in (("big", runs), ("small", 1)):
            await store.add_study(name, f"/s/{name}.toml", STUDY.format(name=name, n=n), "/tmp", None,
                                  [(i, {"x": i / n}) for i in range(n)])
            await store.set_paused(name, True)
        done = [f"big:{i}" for i in range(1, runs + 1) if i % 5]
        await store.writer.call(lambda db: db.executemany(
            "UPDATE runs SET state='completed', ended=1 WHERE study='big' AND run_no=?",
            [(int(n.split(":")[1]),) for n in done]))
        for run, count in (("big:1", reports), ("small:1", 10)):
            study, run_no = run.split(":")
            row = await store.run(study, int(run_no))
            assert row is not None
            for start in range(0, count, 10_000):
                await report(store, row["id"], [(i, {"loss": 1 / (i + 1), "acc": i / count})
                                                for i in range(start, min(count, start + 10_000))])
    finally:
        await store.close()


def side_by_side(daemon: DaemonProc, a: list[str], b: list[str], repeat: int = 7) -> tuple[float, float]:
    """Median seconds of two whole CLI commands, run in turns (so a burst of load on this
    shared machine falls on both)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for args, out in ((a, times[0]), (b, times[1])):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hypd", *args], env=daemon.env, capture_output=True, check=True)
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


@pytest.mark.slow
def test_ls_pages_the_newest_runs_and_sends_only_what_it_shows(daemon_env: dict[str, str]) -> None:
    home = Path(daemon_env["HYPD_HOME"])
    asyncio.run(fill(home, 20_000, 10))
    daemon = DaemonProc(home, daemon_env).start()
    try:
        shown = daemon.cli("ls", "--state", "pending")
        lines = shown.stdout.splitlines()
        assert lines[0].split() == ["RUN", "STATE", "WHERE", "TIME", "OBJECTIVE", "PARAMS", "LAST", "LINE"]
        assert [line.split()[0] for line in lines[1:4]] == ["small:1", "big:20000", "big:19995"]
        assert len(lines) == 101 and "--all or --limit N" in shown.stderr
        assert len(daemon.cli_json("ls", "--state", "pending", "--all")) == 4001
        assert [r["id"] for r in daemon.cli_json("ls", "--limit", "2")] == ["small:1", "big:20000"]
        assert daemon.cli("ls", "--limit", "-1", check=False).returncode == 2
        assert daemon.cli_json("ls", "--limit", "0") == []
        rows = daemon.call("ls", state="pending", study=None, limit=3, newest_first=True,
                           fields=["name", "state"])
        assert mismatch(REPLIES["ls"], rows) is None
        assert {k for r in rows for k in r} == {"name", "study", "run_no", "state"}
        # The page comes from an index: 20,000 runs answer as fast as one.
        pending, one = side_by_side(daemon, ["ls", "--state", "pending"], ["ls", "--study", "small"])
        assert pending < 2 * one, (pending, one)  # (all 4,001 of them, every field: 4x and more)
        # Every run in one reply: read and encoded off the event loop, which answers meanwhile.
        waits: list[float] = []
        stop = threading.Event()

        def ping() -> None:
            with Client(socket_path(home)) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    c.call("ping")
                    waits.append(time.perf_counter() - t)
                    time.sleep(0.002)

        pinger = threading.Thread(target=ping)
        pinger.start()
        try:
            start = time.perf_counter()
            rows = daemon.call("ls", state=None, study=None, limit=None, newest_first=True, fields=None)
            took = time.perf_counter() - start
        finally:
            stop.set()
            pinger.join()
        assert len(rows) == 20_001
        assert max(waits) < 0.35 * took, (max(waits), took)  # (on the loop: most of it)
    finally:
        daemon.stop()


@pytest.mark.slow
def test_info_on_a_run_with_many_reports_is_a_summary_and_a_page(daemon_env: dict[str, str]) -> None:
    home = Path(daemon_env["HYPD_HOME"])
    asyncio.run(fill(home, 10, 200_000))
    daemon = DaemonProc(home, daemon_env).start()
    try:
        info = daemon.call("info", run="big:1")
        assert mismatch(REPLIES["info"], info) is None
        assert info["reports_total"] == 200_000 and info["reports_from"] == 199_000
        assert [r["step"] for r in info["reports"]] == list(range(199_000, 200_000))
        assert info["summary"]["loss"] == {"count": 200_000, "first": 1.0, "last": 1 / 200_000,
                                           "min": 1 / 200_000, "max": 1.0, "last_step": 199_999}
        assert len(json.dumps(info)) < 200_000
        assert len(daemon.call("info", run="big:1", reports=50_000)["reports"]) == 10_000  # the page's cap
        text = daemon.cli("info", "-v", "--reports", "3", "big:1").stdout
        assert "(200000 reports)" in text and "the last 3 of 200000" in text
        assert "loss" in text.split("metrics    (over every report)")[1]
        big, small = side_by_side(daemon, ["info", "big:1"], ["info", "small:1"])
        assert big < 2 * small, (big, small)
        tsv = daemon.cli("metrics", "big:1").stdout.splitlines()
        assert tsv[0] == "step\tloss\tacc" and len(tsv) == 200_001 and tsv[-1].startswith("199999\t")
    finally:
        daemon.stop()
