"""Start-up: the socket answers before the studies are loaded (the first Ax study imports
Ax, seconds) and before an older store's summaries are built; studies still loading are
shown so, and writes wait for them, up to a point: then they are refused with one line
naming what is loading."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from hypd.client import DaemonError
from hypd.config import Config, LocalHostConfig
from hypd.daemon import Daemon
from hypd.ipc import AsyncClient
from hypd.store import Store
from tests.conftest import DaemonProc, wait_for
from tests.test_e2e_ax import branin

pytestmark = pytest.mark.slow


def test_the_socket_answers_while_ax_studies_load(daemon: DaemonProc) -> None:
    for name in ("ax1", "ax2"):
        daemon.cli("submit", branin(daemon, name=name, trials=2, parallel=2, sleep=0))
    for name in ("ax1", "ax2"):
        daemon.wait_finished(name, timeout=150)
    daemon.stop()
    began = time.monotonic()
    daemon.cli("serve", "--detach")  # returns once the socket answers
    try:
        answered = time.monotonic() - began
        first = {s["name"]: s for s in daemon.call("studies")}
        assert first["ax1"] == {"name": "ax1", "state": "loading"}, first
        assert "loading" in daemon.cli("studies").stdout
        assert daemon.call("ping")["pid"]
        # A write waits for the loads rather than being refused, and then acts.
        assert daemon.call("pause", study="ax2") == {"study": "ax2", "paused": True}
        loaded = time.monotonic() - began
        studies = {s["name"]: s for s in daemon.call("studies")}
        assert "counts" in studies["ax1"] and studies["ax2"]["paused"] is True
        log = (daemon.home / "daemon.log").read_text()
        took = float(re.findall(r"started: 2 studies loaded in ([0-9.]+) s", log)[-1])
        # The socket did not wait for the loads: it answered in well under the time they took.
        assert answered < took / 2 and answered < loaded / 2, (answered, took, loaded)
    finally:
        daemon.cli("stop", check=False)
        wait_for(lambda: not (daemon.home / "run" / "hypd.sock").exists(), 30, what="the daemon to stop")


OLD_STUDY = """\
[study]
name = "old"
objective = "loss"
algorithm = "random"
max_trials = 1
[params]
x = { type = "float", low = 0, high = 1 }
[run]
command = "true {x}"
"""


async def an_older_store_with_many_reports(home: Path, reports: int) -> None:
    """A store as a hypd from before per-metric summaries left it: one paused study, its
    one run with `reports` reports, and no summaries (built once at the next start)."""
    home.mkdir(mode=0o700)
    store = await Store.open(home / "hypd.db")
    try:
        await store.add_study("old", "/s/old.toml", OLD_STUDY, "/tmp", None, [(0, {"x": 0.5})])
        await store.set_paused("old", True)
        row = await store.run("old", 1)
        assert row is not None
    finally:
        await store.close()
    with sqlite3.connect(home / "hypd.db") as db:
        db.executemany("INSERT INTO reports (run_id, seq, step, at, data) VALUES (?, ?, ?, 0, ?)",
                       ((row["id"], i, i, json.dumps({"loss": 1 / (i + 1)})) for i in range(reports)))
        db.execute("DROP TABLE metric_stats")
        db.execute("DELETE FROM meta WHERE key='metric_stats'")


async def test_an_op_that_waits_past_the_start_wait_is_refused_naming_what_is_loading(tmp_path: Path) -> None:
    """While an older store's summaries are built, `info` waits (here 0.05 s, 20 s in
    production) and is refused with one line that says so; `ping` answers meanwhile; once
    started, `info` is served."""
    home = tmp_path / "home"
    await an_older_store_with_many_reports(home, 400_000)
    daemon = Daemon(home, Config(local=LocalHostConfig(enabled=False)), start_wait=0.05)
    ready = asyncio.Event()
    serving = asyncio.create_task(daemon.run(handle_signals=False, ready=ready.set))
    try:
        await ready.wait()
        client = AsyncClient(daemon.socket_path)
        with pytest.raises(DaemonError) as refused:
            await client.call("info", run="old:1")
        assert refused.value.code == "busy"
        assert refused.value.message == ("the daemon is still building the per-metric summaries of the stored "
                                         "reports (once, for a store made before them); try again shortly")
        assert not daemon.started.is_set()
        assert (await client.call("ping"))["pid"] == os.getpid()
        await asyncio.wait_for(daemon.started.wait(), 120)
        info = await client.call("info", run="old:1")
        assert info["summary"]["loss"]["count"] == 400_000  # built
        await client.close()
    finally:
        daemon.shutdown.set()
        await serving
