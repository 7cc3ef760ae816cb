"""`hypd tui` driven by Textual's pilot against a real daemon (the `daemon` fixture).

The app gets an hypd.ipc.AsyncClient on the test daemon's socket, as `hypd tui` does. Blocking
fixture calls (the CLI, waiting on the daemon) go through asyncio.to_thread so the app keeps
running while they wait.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from textual.binding import Binding
from textual.command import CommandPalette

from hypd.ipc import AsyncClient, socket_path
from hypd.tui import make_app
from hypd.tui.app import HypdApp
from hypd.tui.model import LogBuffer, RunFilter, grid_heatmap, objective_series
from hypd.tui.screens.confirm import ConfirmScreen, NumberScreen
from hypd.tui.screens.dashboard import DashboardScreen
from hypd.tui.screens.help import HelpScreen
from hypd.tui.screens.run import RunScreen
from hypd.tui.screens.study import StudyScreen
from hypd.tui.widgets.common import ConnectionBanner
from hypd.tui.widgets.plots import ObjectivePlot, ParamPlots
from hypd.tui.widgets.runs import RunTable, layout
from hypd.tui.widgets.studies import StudiesTable

if TYPE_CHECKING:
    from conftest import DaemonProc

REPO = Path(__file__).resolve().parents[1]

SIZE = (120, 36)


async def until(pilot: Any, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Let the app run until predicate() is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await pilot.pause(0.05)


def study(name: str, command: str, values: str = "[1]", parallel: int = 4) -> str:
    return textwrap.dedent(f"""\
        [study]
        name = "{name}"
        objective = {{ metric = "loss", goal = "minimize" }}
        algorithm = "grid"
        parallel = {parallel}
        gpus = 0

        [params]
        x = {{ type = "choice", values = {values} }}

        [run]
        command = "{command}"
        """)


def app_for(daemon: DaemonProc) -> HypdApp:
    return make_app(AsyncClient(socket_path(daemon.home)), where=str(daemon.home))


def table_of(app: HypdApp) -> RunTable:
    return app.screen_stack[0].query_one("#runs", RunTable)


def shown(table: RunTable, name: str) -> str:
    """The text of a run's line as drawn on screen."""
    table.select(name)
    return table.render_line(table.cursor - int(table.scroll_y) + 1).text


def state_of(app: HypdApp, name: str) -> str | None:
    """The state the dashboard's runs table shows."""
    return table_of(app).rows.get(name, {}).get("state")


async def submit(daemon: DaemonProc, name: str, text: str) -> None:
    path = daemon.write_study(name, text)
    await asyncio.to_thread(daemon.cli, "submit", str(path))


# ------------------------------------------------------------------ against the daemon

async def test_a_finishing_run_shows_up_without_a_key_press(daemon: DaemonProc) -> None:
    app = app_for(daemon)
    calls: list[str] = []
    call = app.client.call

    async def counting_call(op: str, **args: Any) -> Any:
        calls.append(op)
        return await call(op, **args)

    app.client.call = counting_call  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        # Loaded, and the event subscription is up (the GPU poller's host events arrive).
        await until(pilot, lambda: app.loaded and app.events_received, what="the load and the first event")
        assert table_of(app).view == []
        await submit(daemon, "fin", study("fin", "python3 -c 'import time; time.sleep(0.8); print(\\\"METRICS: loss=0.25\\\")'"))
        await until(pilot, lambda: state_of(app, "fin:1") == "running", what="fin:1 running")
        loads = [op for op in calls if op == "ls"]
        await until(pilot, lambda: state_of(app, "fin:1") == "completed", what="fin:1 completed")
        assert [op for op in calls if op == "ls"] == loads, "the change came as an event, not a reload"
        line = shown(table_of(app), "fin:1")
        assert "completed" in line and "0.25" in line
        # The studies panel follows too.
        await until(pilot, lambda: app.studies["fin"]["finished"], what="the study summary")


async def test_a_study_that_pauses_itself_says_why(daemon: DaemonProc) -> None:
    app = app_for(daemon)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.loaded and app.events_received, what="the load and the first event")
        text = study("typo", "echo starting; echo no such thing >&2; exit 2", values="[1, 2, 3, 4]", parallel=1)
        await submit(daemon, "typo", text.replace('gpus = 0', 'gpus = 0\nmax_failures = 2'))
        await until(pilot, lambda: app.studies.get("typo", {}).get("paused"), what="typo paused")
        why = "2 runs in a row failed — last error: no such thing"
        assert app.studies["typo"]["pause_reason"] == why
        toasts = [(n.title, n.message) for n in app._notifications]
        assert ("study typo paused", f"{why}. Fix the cause, then resume it (p).") in toasts


async def test_a_failed_prepare_step_says_which_host_is_unusable(daemon: DaemonProc) -> None:
    app = app_for(daemon)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.loaded and app.events_received, what="the load and the first event")
        text = study("prep", "echo ran") + '[prepare]\ncommand = "echo no dataset >&2; exit 3"\n'
        await submit(daemon, "prep", text)
        await until(pilot, lambda: app.studies.get("prep", {}).get("prepare_failed"), what="the failure shown")
        why = app.studies["prep"]["prepare_failed"]["local"]
        assert why.startswith("prepare failed on local: stage prepare exited with status 3")
        toasts = [(n.title, n.message) for n in app._notifications]
        assert ("study prep: host local unusable", f"{why}. Fix it, then `hypd retry prep --prepare`.") in toasts
        await until(pilot, lambda: app.hosts.get("local", {}).get("prepare_failed") == {"prep": why},
                    what="the host's summary")


async def test_kill_a_running_run_from_the_dashboard(daemon: DaemonProc) -> None:
    await submit(daemon, "sleepy", study("sleepy", "python3 -c 'import time; time.sleep(60)'", "[1, 2]"))
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state_of(app, "sleepy:2") == "running", what="sleepy:2 running")
        table = table_of(app)
        assert table.select("sleepy:2")
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("y")
        run = await asyncio.to_thread(daemon.wait_state, "sleepy:2", "killed", timeout=15)
        assert run["reason"] == "killed on request"
        await until(pilot, lambda: state_of(app, "sleepy:2") == "killed", what="the TUI to show the kill")
        assert state_of(app, "sleepy:1") == "running"
        # Retry the killed run: a new attempt of its trial.
        table_of(app).select("sleepy:2")
        await pilot.press("r")
        await until(pilot, lambda: state_of(app, "sleepy:3") in ("pending", "running"), what="the retry")
        assert (await asyncio.to_thread(daemon.run, "sleepy:3"))["trial"] == 1
        # Pause and resume the study.
        await pilot.press("p")
        await until(pilot, lambda: app.studies["sleepy"]["paused"], what="the study paused")
        await pilot.press("p")
        await until(pilot, lambda: not app.studies["sleepy"]["paused"], what="the study resumed")
        # Saying no kills nothing.
        table_of(app).select("sleepy:1")
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.3)
        assert (await asyncio.to_thread(daemon.run, "sleepy:1"))["state"] == "running"


async def test_filter_by_state_and_study_search_and_sort(daemon: DaemonProc) -> None:
    # loss = x; x = 3 exits 1 after reporting.
    command = "python3 -c 'import sys; print(\\\"METRICS: loss={x}\\\"); sys.exit(1 if {x} == 3 else 0)'"
    await submit(daemon, "mixed", study("mixed", command, "[1, 2, 3, 4]"))
    await submit(daemon, "other", study("other", command, "[5]"))
    await asyncio.to_thread(daemon.wait_finished, "mixed")
    await asyncio.to_thread(daemon.wait_finished, "other")
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table_of(app).view) == 5, what="all runs")
        table = table_of(app)
        assert table.view == ["other:1", "mixed:4", "mixed:3", "mixed:2", "mixed:1"]  # newest first
        for _ in STATE_PRESSES_TO_FAILED:
            await pilot.press("s")
        assert table.run_filter.state == "failed"
        assert table.view == ["mixed:3"]
        await pilot.press("s")  # killed: none
        assert table.view == []
        await pilot.press("escape")
        assert len(table.view) == 5
        # Study filter: the highlighted run's study.
        table.select("other:1")
        await pilot.press("f")
        assert table.view == ["other:1"]
        await pilot.press("f")
        assert len(table.view) == 5
        # Search.
        await pilot.press("slash", *"x=2")
        await until(pilot, lambda: table.view == ["mixed:2"], what="the search to filter")
        await pilot.press("enter", "escape")
        assert len(table.view) == 5 and table.has_focus
        # Sort by objective (ascending first), then reversed.
        while table.sort_column != "objective":
            await pilot.press("o")
        assert table.view == ["mixed:1", "mixed:2", "mixed:3", "mixed:4", "other:1"]
        await pilot.press("O")
        assert table.view == ["other:1", "mixed:4", "mixed:3", "mixed:2", "mixed:1"]
        # A click on a header sorts by that column.
        await pilot.click(RunTable, offset=(2, 0))
        assert table.sort_column == "run"
        # The command palette has the rest, e.g. any state filter.
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), what="the command palette")
        await pilot.press(*"only failed runs")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: table.view == ["mixed:3"], what="the palette's filter")


STATE_PRESSES_TO_FAILED = range(("pending", "queued", "running", "completed", "failed").index("failed") + 1)


async def test_the_run_screen_follows_the_log(daemon: DaemonProc) -> None:
    command = ("python3 -c 'import time\\nfor i in range(30):\\n    print(\\\"line %d\\\" % i, flush=True)\\n"
               "    print(\\\"METRICS: step=%d loss=%g\\\" % (i, 1.0 / (i + 1)), flush=True)\\n"
               "    time.sleep(0.1)'")
    await submit(daemon, "chatty", study("chatty", command))
    app = app_for(daemon)
    metrics_since: list[int] = []
    call = app.client.call

    async def recording_call(op: str, **args: Any) -> Any:
        if op == "metrics":
            metrics_since.append(args.get("since", 0))
        return await call(op, **args)

    app.client.call = recording_call  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state_of(app, "chatty:1") == "running", what="chatty:1 running")
        table_of(app).select("chatty:1")
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen)
        log = screen.log_view

        def printed() -> list[str]:
            return [line for line in log.text_lines if line.startswith("line ")]

        await until(pilot, lambda: len(printed()) >= 3, what="the first lines")
        seen_early = len(printed())
        assert seen_early < 30, "the run should still be printing"
        await until(pilot, lambda: len(printed()) == 30, what="the log to follow to the end")
        assert printed() == [f"line {i}" for i in range(30)]  # in order, none twice, none lost
        await until(pilot, lambda: screen.log_ended, what="the log to end")
        # The metric curve is there too, each report once: after `info`, only the new ones
        # are asked for.
        await until(pilot, lambda: len(screen.reports) == 30, what="all reports")
        assert [r["step"] for r in screen.reports] == list(range(30))
        assert metrics_since and all(since > 0 for since in metrics_since), metrics_since


async def test_a_long_log_opens_at_its_end(daemon: DaemonProc) -> None:
    # 8,000 lines of 101 bytes: 808 KB, more than the run screen reads at first.
    command = ("python3 -c 'import sys\\nfor i in range(8000):\\n    sys.stdout.write(\\\"line %06d %s\\\\n\\\" % (i, \\\"x\\\" * 88))'")
    await submit(daemon, "long", study("long", command))
    await asyncio.to_thread(daemon.wait_finished, "long")
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: state_of(app, "long:1") == "completed", what="long:1 completed")
        app.open_run("long:1")
        screen = await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen)
        await until(pilot, lambda: screen.log_ended, what="the log read")
        assert screen.log_skipped > 0 and "KiB in" in str(screen.query_one("#log-box").border_title)
        lines = screen.log_view.text_lines
        assert len(lines) < 5000  # the tail, not the view's own limit, made it short
        numbers = [int(line.split()[1]) for line in lines]
        assert numbers == list(range(numbers[0], 8000)) and numbers[0] > 0
        # The line that the start of the tail cuts is not shown half.
        assert all(line == f"line {n:06d} {'x' * 88}" for n, line in zip(numbers, lines))


async def test_reconnect_banner_while_the_daemon_is_down(daemon: DaemonProc) -> None:
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.loaded and app.connected)
        banner = app.screen.query_one(ConnectionBanner)
        assert not banner.display or not banner.has_class("-down")
        await asyncio.to_thread(daemon.stop)
        await until(pilot, lambda: banner.has_class("-down") and not app.connected, what="the banner")
        assert banner.display
        await asyncio.to_thread(daemon.start)
        await until(pilot, lambda: app.connected and not banner.has_class("-down"), timeout=20,
                    what="the app to reconnect by itself")
        # Events flow again on the new connection.
        await submit(daemon, "after", study("after", "true"))
        await until(pilot, lambda: state_of(app, "after:1") == "completed", what="a run after the restart")


async def test_the_study_screen_plots_each_trial_and_each_parameter(daemon: DaemonProc) -> None:
    """Trials numbered from 1, failed ones drawn apart, the best so far a step line, and a
    scatter for the parameter that varies."""
    # loss = x; x = 3 reports and then exits 1.
    command = "python3 -c 'import sys; print(\\\"METRICS: loss={x}\\\"); sys.exit(1 if {x} == 3 else 0)'"
    await submit(daemon, "plots", study("plots", command, "[4, 3, 1, 2]"))
    await asyncio.to_thread(daemon.wait_finished, "plots")
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: (app.studies.get("plots") or {}).get("finished"), what="the study")
        app.open_study("plots")
        screen = await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen)
        await until(pilot, lambda: screen.board, what="the leaderboard")
        plot = screen.query_one("#objective", ObjectivePlot)
        await until(pilot, lambda: len(plot.points) == 4, what="the trials plotted")
        assert [(p.trial, p.state, p.value) for p in plot.points] == [
            (1, "completed", 4.0), (2, "failed", 3.0), (3, "completed", 1.0), (4, "completed", 2.0)]
        assert plot.best == ([1, 3, 4], [4.0, 1.0, 1.0])
        params = screen.query_one("#params", ParamPlots)
        await until(pilot, lambda: [p.param for p in params.plots] == ["x"], what="a plot per parameter")
        (x,) = params.plots
        assert x.series.by_state == {"completed": ([4.0, 1.0, 2.0], [4.0, 1.0, 2.0]), "failed": ([3.0], [3.0])}
        assert "1 failed" in str(screen.query_one("#objective-box").border_title)


async def test_focus_returns_to_where_the_user_was(daemon: DaemonProc) -> None:
    """Esc from a run lands on its row in the runs table (so `k` offers to kill the run, not
    the study); killing a whole study names it and its running runs, and afterwards the
    focus is back on the studies table."""
    await submit(daemon, "naps", study("naps", "python3 -c 'import time; time.sleep(60)'", "[1, 2, 3]", parallel=2))
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: [state_of(app, f"naps:{n}") for n in (1, 2)] == ["running", "running"],
                    what="two runs running")
        await until(pilot, lambda: (app.studies.get("naps") or {}).get("counts", {}).get("running") == 2,
                    what="the study summary")
        dashboard = app.screen
        table = table_of(app)
        assert table.select("naps:1")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is dashboard, what="back on the dashboard")
        assert app.focused is table and table.current == "naps:1"
        await pilot.press("k")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "Kill run naps:1?" in str(confirm.prompt)
        await pilot.press("n")
        await until(pilot, lambda: app.screen is dashboard)
        assert app.focused is table
        # From a run to its study, and `f` (its runs): the dashboard, on the runs table.
        await pilot.press("enter", "s")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen), what="the study screen")
        await pilot.press("f")
        await until(pilot, lambda: app.screen is dashboard, what="back on the dashboard")
        assert app.focused is table and table.run_filter.study == "naps"
        await pilot.press("escape")
        # The studies table: `k` kills the study, after saying what that means.
        await pilot.press("shift+tab")  # the panel above the runs
        studies = dashboard.query_one("#studies", StudiesTable)
        assert app.focused is studies and studies.current_study == "naps"
        await pilot.press("k")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "Kill study naps and its 2 running run(s)?" in str(confirm.prompt)
        assert "1 pending" in str(confirm.detail)
        await pilot.press("y")
        await until(pilot, lambda: app.screen is dashboard)
        assert app.focused is studies
        for n in (1, 2):
            await asyncio.to_thread(daemon.wait_state, f"naps:{n}", "killed", timeout=15)
        await until(pilot, lambda: app.studies["naps"]["paused"], what="the study paused")
        assert app.focused is studies


def sampled(name: str, trials: int, body: str, run_extra: str = "") -> str:
    """A random search over an int (a study `extend` can grow; a grid of all its points cannot)."""
    return textwrap.dedent(f"""\
        [study]
        name = "{name}"
        objective = {{ metric = "loss" }}
        algorithm = "random"
        max_trials = {trials}
        parallel = 4
        gpus = 0
        retries = 0

        [params]
        x = {{ type = "int", low = 0, high = 1000 }}

        [run]
        command = "echo METRICS: loss={{x}}; {body}"
        """) + run_extra


def toasts(app: HypdApp) -> list[tuple[str, str]]:
    return [(n.title, n.message) for n in app._notifications]


async def test_extend_archive_and_remove_a_study_by_keys(daemon: DaemonProc) -> None:
    """e asks how many trials (10 first) and extends; a archives and x removes, each after a
    confirmation naming the study; the daemon's refusal while runs go is a notification."""
    await submit(daemon, "grow", sampled("grow", 2, "true"))
    await submit(daemon, "busy", sampled("busy", 1, "sleep 60"))
    await asyncio.to_thread(daemon.wait_finished, "grow")
    app = app_for(daemon)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.studies.get("grow", {}).get("finished") and state_of(app, "busy:1") == "running",
                    what="grow finished, busy:1 running")
        dashboard = app.screen
        app.open_study("grow")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen), what="the study screen")
        # Escape, and a number below 1, extend nothing.
        await pilot.press("e")
        ask = await until(pilot, lambda: isinstance(app.screen, NumberScreen) and app.screen, what="the question")
        assert "Add trials to study grow" in str(ask.prompt) and ask.query_one("#number").value == "10"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen))
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, NumberScreen))
        await pilot.press("0", "enter")
        await pilot.pause(0.2)
        assert isinstance(app.screen, NumberScreen) and ("", "a whole number, at least 1") in toasts(app)
        await pilot.press("backspace", "3", "enter")
        await until(pilot, lambda: ("", "study grow extended to 5 trials; 3 trial(s) queued") in toasts(app),
                    what="the extension said")
        assert isinstance(app.screen, StudyScreen)
        await asyncio.to_thread(daemon.wait_finished, "grow")
        await until(pilot, lambda: app.studies["grow"]["done"] == 5, what="5 trials done")
        # Archive: the confirmation names the study; afterwards the study screen closes.
        await pilot.press("a")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "Archive study grow?" in str(confirm.prompt)
        await pilot.press("y")
        await until(pilot, lambda: app.screen is dashboard and "grow" not in app.studies, what="grow archived")
        assert ("", "study grow archived") in toasts(app)
        assert (await asyncio.to_thread(daemon.call, "studies", archived=True))[0]["archived"]
        # Remove while a run goes: refused, said in one line, nothing lost.
        app.open_study("busy")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen), what="the study screen")
        await pilot.press("x")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        assert "Remove study busy and its 1 run(s)?" in str(confirm.prompt)
        await pilot.press("y")
        refusal = await until(pilot, lambda: next((m for t, m in toasts(app) if t == "rm failed"), None),
                              what="the refusal")
        assert "busy:1 (running)" in refusal and "hypd kill busy" in refusal
        assert isinstance(app.screen, StudyScreen) and "busy" in app.studies
        # From the dashboard's studies table, once its run is killed.
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is dashboard)
        await asyncio.to_thread(daemon.cli, "kill", "busy")
        await until(pilot, lambda: state_of(app, "busy:1") == "killed", what="busy:1 killed")
        await pilot.press("shift+tab")
        assert dashboard.query_one("#studies", StudiesTable).current_study == "busy"
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: "busy" not in app.studies and not table_of(app).rows, what="busy removed")
        assert ("", "study busy removed (1 runs)") in toasts(app)
        assert [s["name"] for s in await asyncio.to_thread(daemon.call, "studies", archived=True)] == ["grow"]


async def test_pull_a_runs_artifacts_by_key(daemon: DaemonProc) -> None:
    """d on the run screen: where the artifacts went, or the daemon's one line."""
    await submit(daemon, "art", sampled("art", 1, "echo kept > $HYPD_RUN_DIR/out.txt",
                                        run_extra='fetch = ["out.txt", "nothing*"]\n'))
    await submit(daemon, "plain", sampled("plain", 1, "true"))
    await asyncio.to_thread(daemon.wait_finished, "art")
    await asyncio.to_thread(daemon.wait_finished, "plain")
    app = app_for(daemon)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.loaded and {"art:1", "plain:1"} <= set(app.runs), what="the runs")
        run_dir = app.runs["art:1"]["run_dir"]
        app.open_run("art:1")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        await pilot.press("d")
        await until(pilot, lambda: ("", f"out.txt copied to {run_dir}; nothing matched nothing*") in toasts(app),
                    what="where the artifacts went")
        await pilot.press("escape")
        app.open_run("plain:1")
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_name == "plain:1")
        await pilot.press("d")
        refusal = await until(pilot, lambda: next((m for t, m in toasts(app) if t == "pull failed"), None),
                              what="the refusal")
        assert refusal.startswith("study plain names no artifacts: add [run] fetch")
        assert isinstance(app.screen, RunScreen)


# ------------------------------------------------------------------ no daemon needed

def test_importing_the_tui_loads_neither_ax_nor_torch() -> None:
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from hypd.ipc import AsyncClient
        from hypd.tui import make_app
        import hypd.tui.screens.dashboard, hypd.tui.screens.run, hypd.tui.screens.study, hypd.tui.screens.confirm
        app = make_app(AsyncClient(Path("/nonexistent/hypd.sock")))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ax", "torch", "botorch", "gpytorch"))
        print(",".join(heavy))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


async def test_help_lists_every_key_of_the_screen_in_front() -> None:
    """`?` on each screen: its own bindings, the focused widget's and the app's, read from
    the bindings themselves; keys the footer leaves out (f, o, h, ...) are there too."""
    app = make_app(AsyncClient(Path("/nonexistent/hypd.sock")))
    async with app.run_test(size=SIZE) as pilot:
        dashboard = app.screen
        for screen_type, title in ((DashboardScreen, "Dashboard"), (StudyScreen, "Study"), (RunScreen, "Run")):
            if screen_type is StudyScreen:
                app.push_screen(StudyScreen("nosuch"))
            elif screen_type is RunScreen:
                app.push_screen(RunScreen("nosuch:1"))
            screen = await until(pilot, lambda t=screen_type: isinstance(app.screen, t) and app.screen)
            await pilot.pause()
            focused = app.focused
            await pilot.press("question_mark")
            shown = await until(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
            rows = {(r.section, r.keys): r for r in shown.rows}
            assert shown.help_title == title
            own = list(Binding.make_bindings(screen_type.BINDINGS))
            for binding in own:
                key = app.get_key_display(binding)
                assert any(key in keys.split(" / ") for _, keys in rows), (title, key)
            # (a key the focused widget takes is listed under the widget)
            hidden = {keys for (_, keys), r in rows.items() if not r.in_footer}
            assert {app.get_key_display(b) for b in own if not b.show} <= {k for ks in hidden for k in ks.split(" / ")}
            assert rows[("Everywhere", "?")].in_footer
            assert any(section == "Everywhere" and "q" in keys.split(" / ") for section, keys in rows)
            text = " ".join(str(w.render()) for w in shown.query(".help-text"))
            assert "show only the highlighted study's runs" in text or title != "Dashboard"
            await pilot.press("escape")
            await until(pilot, lambda s=screen: app.screen is s, what="the help closed")
            assert app.focused is focused  # where the user was
            if screen is not dashboard:
                await pilot.press("escape")
                await until(pilot, lambda: app.screen is dashboard)
        # `?` again closes it too.
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen is dashboard)


def test_tight_keeps_every_cell_and_starts_no_piece_with_spaces() -> None:
    from rich.segment import Segment
    from rich.style import Style

    from hypd.tui.widgets.common import tight, tight_segments

    content = tight(("local", "bold"), "  ", ("up", "green"), ("  cpu ", "dim"), "0/4")
    assert content.plain == "local  up  cpu 0/4"
    starts = {span.start for span in content.spans}
    assert all(content.plain[i] != " " for i in starts)
    assert tight(("   no GPUs: ", "dim"), "x").plain == "   no GPUs: x"
    red, base = Style(color="red"), Style()
    segments = tight_segments([Segment(" ", base), Segment("completed", red), Segment(" ", base),
                               Segment("   5s", base)])
    assert "".join(s.text for s in segments) == " completed    5s"
    assert all(s.text[0] != " " for s in segments[1:] if s.text.strip())


def test_log_buffer_keeps_partial_lines_and_progress_bars() -> None:
    buf = LogBuffer()
    assert buf.feed("a\nb") == ["a"]
    assert buf.feed("c\n10%\r50%\r100%\n") == ["bc", "100%"]
    assert buf.feed("tail") == []
    assert buf.flush() == ["tail"]


def test_study_series_and_heatmap() -> None:
    runs = [{"trial": t, "state": s, "objective": o, "params": {"a": a, "b": b, "fixed": 1}}
            for t, s, o, a, b in [(0, "completed", 3.0, 1, "x"), (1, "completed", 1.0, 1, "y"),
                                  (2, "failed", None, 2, "x"), (3, "completed", 2.0, 2, "y")]]
    # Trials as shown, from 1 (stored from 0).
    assert objective_series(runs, minimize=True) == ([1, 2, 4], [3.0, 1.0, 2.0], [3.0, 1.0, 1.0])
    heat = grid_heatmap({"algorithm": "grid"}, runs, minimize=True)
    assert heat is not None and (heat.y_name, heat.x_name) == ("a", "b")
    assert heat.cells == {(0, 0): 3.0, (0, 1): 1.0, (1, 1): 2.0}
    assert grid_heatmap({"algorithm": "random"}, runs, minimize=True) is None


@pytest.mark.parametrize("width", [60, 78, 118, 158])
def test_runs_table_columns_fit_the_width(width: int) -> None:
    columns = layout(width, {"run": 18, "state": 9, "where": 9, "params": 40, "metrics": 30})
    assert sum(w for _, w in columns) + len(columns) <= width
    assert [c.key for c, _ in columns][:2] == ["run", "state"]


def test_filter_matches_state_study_and_text() -> None:
    run = {"name": "s:1", "state": "failed", "study": "s"}
    assert RunFilter(state="failed", study="s", text="lr=0").matches(run, "s:1 failed lr=0.1")
    assert not RunFilter(state="running").matches(run, "")
    assert not RunFilter(text="zzz").matches(run, "s:1")


async def test_a_study_no_host_matches_says_so_and_labels_show_on_hosts(daemon: DaemonProc) -> None:
    from hypd.tui.screens.study import StudyScreen
    from hypd.tui.widgets.hosts import host_lines

    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.loaded and app.events_received, what="the load and the first event")
        text = study("picky", "echo METRICS: loss=1").replace("gpus = 0", 'gpus = 0\nhosts = { labels = ["a100"] }')
        await submit(daemon, "picky", text)
        await until(pilot, lambda: app.studies.get("picky", {}).get("hosts_note"), what="the study's host note")
        app.open_study("picky")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.query("#study-summary"),
                    what="the study screen")
        await pilot.pause(0.2)
        summary = str(app.screen.query_one("#study-summary").render())
        assert 'waiting: no host matches hosts = { labels = ["a100"] }' in summary
        assert 'hosts { labels = ["a100"] }' in summary
    # A labelled host shows its labels in the hosts panel.
    lines = host_lines({"name": "gpu1", "state": "up", "labels": ["a100", "fast"], "cpu_slots": 1, "gpus": []}, 80)
    assert "#a100 #fast" in lines[0].plain


async def test_the_study_screen_shows_the_trials_asked_ahead(daemon: DaemonProc) -> None:
    """An adaptive study keeps its next trial asked ahead (hypd/ahead.py); its screen says
    how many are ready and how long before its launch the last one was."""
    text = study("quasi", "python3 -c 'import time; time.sleep(0.3); print(\\\"METRICS: loss={x}\\\")'", parallel=1)
    text = text.replace('algorithm = "grid"', 'algorithm = "sobol"\nmax_trials = 4').replace(
        'x = { type = "choice", values = [1] }', 'x = { type = "float", low = 0.0, high = 1.0 }')
    await submit(daemon, "quasi", text)
    await asyncio.to_thread(daemon.wait_finished, "quasi")
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: (app.studies.get("quasi") or {}).get("finished"), what="the study")
        assert app.studies["quasi"]["ahead"]["lead"] > 0
        app.open_study("quasi")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.query("#study-summary"),
                    what="the study screen")
        await pilot.pause(0.2)
        summary = str(app.screen.query_one("#study-summary").render())
        assert re.search(r"asked ahead: 0 ready, lead \d+\.\ds", summary), summary


async def test_an_archived_or_removed_study_leaves_the_dashboard(daemon: DaemonProc) -> None:
    await submit(daemon, "kept", study("kept", "echo METRICS: loss=1"))
    await submit(daemon, "shelved", study("shelved", "echo METRICS: loss=2"))
    await asyncio.to_thread(daemon.wait_finished, "shelved")
    await asyncio.to_thread(daemon.wait_finished, "kept")
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.loaded and app.events_received, what="the load and the first event")
        await until(pilot, lambda: {"kept", "shelved"} <= set(app.studies) and "shelved:1" in table_of(app).rows,
                    what="both studies shown")
        await asyncio.to_thread(daemon.cli, "archive", "shelved")
        await until(pilot, lambda: "shelved" not in app.studies and "shelved:1" not in table_of(app).rows,
                    what="the archived study gone")
        await asyncio.to_thread(daemon.cli, "rm", "kept")
        await until(pilot, lambda: "kept" not in app.studies and "kept:1" not in table_of(app).rows,
                    what="the removed study gone")
    # And a dashboard started afterwards does not show them either.
    app = app_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.loaded, what="the load")
        assert not {"kept", "shelved"} & set(app.studies) and not table_of(app).rows
