"""Snapshots of the dashboard's screens (pytest-textual-snapshot) at 80x24 and 160x48.

They must repeat, so the app here talks to `RecordedDaemon`: a stand-in with the `call` /
`events` interface of hypd.ipc.AsyncClient that answers from RECORDED, replies recorded once
from a real `hypd serve` (three studies: the quadratic grid, a random sweep that was paused
with two failures, a GPU study running on two of four fake A100s from
tests/fakes/nvidia_smi.py, the third busy with someone else's work), with their times
shifted to NOW, paths renamed and the daemon's pid fixed; a second, GPU-less host is the
same daemon's reply for a machine without GPUs. The app's clock is frozen at NOW.

Update with `pytest tests/test_tui_snapshots.py --snapshot-update` and look at the report.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from hypd.ipc import REPLIES, DaemonError, mismatch
from hypd.tui import make_app
from hypd.tui.app import HypdApp
from hypd.tui.model import Backoff
from hypd.tui.widgets.plots import ParamPlots
from hypd.tui.widgets.runs import RunTable
from hypd.tui.widgets.studies import StudiesTable

NOW = 1_750_000_000.0
SIZES = [(80, 24), (160, 48)]


class RecordedDaemon:
    """Recorded daemon replies behind the AsyncClient interface. `down` makes every request
    fail as with no daemon; `calls` records what the app asked for."""

    def __init__(self, *, down: bool = False, drops: bool = False, hosts: list[dict[str, Any]] | None = None,
                 studies: list[dict[str, Any]] | None = None) -> None:
        self.data = copy.deepcopy(RECORDED)
        self.data["hosts"] += copy.deepcopy(hosts or [])
        self.data["studies"] += copy.deepcopy(studies or [])
        self.hello = self.data["hello"]
        self.down = down
        self.drops = drops  # the daemon goes away once the app has loaded
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _gone(self) -> DaemonError:
        return DaemonError("no_daemon", "no hypd daemon is running (no socket at /home/ada/.hypd/run/hypd.sock); "
                                        "start one with `hypd serve` (or `hypd serve --detach`)")

    async def call(self, op: str, **args: Any) -> Any:
        self.calls.append((op, args))
        if self.down:
            raise self._gone()
        d = self.data
        if op == "ls":
            rows = [r for r in d["ls"] if (args.get("state") in (None, r["state"]))
                    and (args.get("study") in (None, r["study"]))]
            return copy.deepcopy(rows[: args["limit"]] if args.get("limit") else rows)
        if op in ("studies", "hosts"):
            return copy.deepcopy(d[op])
        if op in ("info", "metrics", "logs"):
            run = args["run"]
            if op == "logs":  # the recorded logs are ASCII: characters are bytes
                text = d["logs"].get(run, {}).get("text", "")
                offset = args.get("offset", 0)
                if args.get("tail") is not None:
                    offset = max(0, len(text) - args["tail"])
                chunk = text[offset: offset + args.get("limit", 1 << 20)]
                state = next(r["state"] for r in d["ls"] if r["name"] == run)
                return {"text": chunk, "offset": offset + len(chunk), "size": len(text), "state": state,
                        "live": state in ("pending", "running", "lost"), "path": f"/home/ada/.hypd/runs/{run}/log"}
            if run not in d[op]:
                raise DaemonError("not_found", f"no run {run}")
            if op == "metrics":
                since = max(0, args.get("since", 0))
                reports = d[op][run]["reports"][since:]
                return copy.deepcopy({"run": run, "reports": reports, "next": since + len(reports)})
            return copy.deepcopy(d[op][run])
        if op == "leaderboard":
            return copy.deepcopy(d["leaderboard"][args["study"]])
        if op == "kill":
            return {"killed": [args["target"]], "paused": False}
        if op == "retry":
            return {"retried": []}
        if op in ("pause", "resume"):
            return {"study": args["study"], "paused": op == "pause"}
        if op == "ping":
            return {"pid": self.hello["pid"], "version": "0.1.0", "home": self.hello["home"], "uptime": 1.0}
        raise DaemonError("bad_request", f"unknown op {op!r}")

    async def events(self, topics: list[str] | None = None, run: str | None = None) -> AsyncIterator[dict[str, Any]]:
        if self.down:
            raise self._gone()
        yield {"v": 1, "event": "subscribed", "data": {"topics": sorted(topics or ["run", "study", "host"]), "run": run}}
        if self.drops:
            # The app has loaded (it does before it reads on): now the daemon goes away, and
            # the stream ends as hypd.ipc.AsyncClient's does at EOF.
            self.down = True
            return
        await asyncio.Event().wait()  # connected, and nothing happens

    async def close(self) -> None:
        pass


def recorded_app(**kwargs: Any) -> HypdApp:
    app = make_app(RecordedDaemon(**kwargs), clock=lambda: NOW, where="/home/ada/.hypd/run/hypd.sock")
    app.backoff = Backoff(first=3600.0)  # one attempt while down: the banner does not count up
    return app


async def settle(pilot: Pilot, until: Callable[[], Any] = lambda: True) -> None:
    """Wait for the load (and the condition), then freeze what blinks."""
    for _ in range(200):
        if pilot.app.loaded and until():  # type: ignore[attr-defined]
            break
        await pilot.pause(0.02)
    await pilot.pause(0.1)
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


def then(*keys: str, until: Callable[[Pilot], Any] | None = None) -> Callable[[Pilot], Awaitable[None]]:
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.05)
        if until is not None:
            await settle(pilot, lambda: until(pilot))
        await settle(pilot)
    return run_before


def screen_name(name: str) -> Callable[[Pilot], bool]:
    return lambda pilot: type(pilot.app.screen).__name__ == name


async def select_run(pilot: Pilot, name: str) -> None:
    await settle(pilot)
    pilot.app.screen.query_one(RunTable).select(name)
    await pilot.pause()


# ------------------------------------------------------------------ screens

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare: Any, size: tuple[int, int]) -> None:
    """Hosts and GPUs (wide) or studies (narrow), studies, and the runs, newest first."""
    assert snap_compare(recorded_app(), terminal_size=size, run_before=then())


def test_dashboard_hosts_on_a_narrow_terminal(snap_compare: Any) -> None:
    """`h` swaps the studies panel for the hosts panel on a narrow terminal."""
    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=then("h"))


def test_dashboard_filtered_and_sorted(snap_compare: Any) -> None:
    """State filter on completed, sorted by objective, ascending."""
    assert snap_compare(recorded_app(), terminal_size=(120, 32), run_before=then("s", "s", "s", "s", "o", "o", "o", "o"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_run_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    """A running GPU run: its parameters, a curve per metric, its log."""

    async def run_before(pilot: Pilot) -> None:
        await select_run(pilot, "resnet:1")
        await pilot.press("enter")
        await settle(pilot, lambda: screen_name("RunScreen")(pilot)
                     and len(pilot.app.screen.reports) == 30 and len(pilot.app.screen.log_view.text_lines) == 60)

    assert snap_compare(recorded_app(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_study_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    """The grid study: leaderboard, objective by trial with the best so far, the heatmap."""

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        pilot.app.open_study("quadratic")  # type: ignore[attr-defined]
        await settle(pilot, lambda: screen_name("StudyScreen")(pilot) and pilot.app.screen.board)

    assert snap_compare(recorded_app(), terminal_size=size, run_before=run_before)


def test_study_screen_with_failed_trials(snap_compare: Any) -> None:
    """The random sweep: its two failed trials drawn apart (✗, red) in the objective plot and
    in each parameter's scatter; the best so far is a step line."""

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        pilot.app.open_study("sweep")  # type: ignore[attr-defined]
        await settle(pilot, lambda: screen_name("StudyScreen")(pilot) and pilot.app.screen.board)

    assert snap_compare(recorded_app(), terminal_size=(120, 36), run_before=run_before)


def test_help_screen(snap_compare: Any) -> None:
    """`?` lists every key of the dashboard, those the footer leaves out marked."""
    assert snap_compare(recorded_app(), terminal_size=(100, 40),
                        run_before=then("question_mark", until=screen_name("HelpScreen")))


def test_kill_study_confirmation(snap_compare: Any) -> None:
    """`k` on the studies table names the study and how many of its runs are running."""

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        studies = pilot.app.screen.query_one(StudiesTable)
        studies.focus()
        studies.select("resnet")  # two running, two pending
        await pilot.pause()
        await pilot.press("k")
        await settle(pilot, lambda: screen_name("ConfirmScreen")(pilot))

    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=run_before)


def test_extend_study_asks_how_many(snap_compare: Any) -> None:
    """`e` on the studies table: how many trials to add, 10 offered and selected."""

    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        studies = pilot.app.screen.query_one(StudiesTable)
        studies.focus()
        studies.select("resnet")
        await pilot.pause()
        await pilot.press("e")
        await settle(pilot, lambda: screen_name("NumberScreen")(pilot))

    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=run_before)


async def test_a_finished_study_with_none_done_shows_an_empty_bar() -> None:
    """6 trials, each failed twice (a retry each): nothing is done, so nothing fills the bar."""
    sweep = RECORDED["studies"][1]
    failed = {**sweep, "name": "broken", "paused": False, "max_trials": 6, "trials": 6,
              "counts": {**sweep["counts"], "completed": 0, "failed": 12},
              "outcomes": {**sweep["outcomes"], "completed": 0, "failed": 6}, "done": 0, "total": 6, "retried": 6,
              "best": None, "best_run": None, "finished": True}
    app = make_app(RecordedDaemon(studies=[failed]), clock=lambda: NOW)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        table = pilot.app.screen.query_one(StudiesTable)
        bar = table.get_cell("broken", "progress").plain
        assert bar == "░" * 10 + " 0/6"
        assert table.get_cell("quadratic", "progress").plain == "█" * 10 + " 9/9"
        assert table.get_cell("resnet", "progress").plain == "▒" * 5 + "░" * 5 + " 0/4"  # 2 of 4 running


async def test_study_screen_pages_parameter_plots_and_swaps_in_the_heatmap() -> None:
    """On 80x24 the grid study's two parameter plots take two pages (`m`); `g` shows the
    heatmap of its two-parameter grid instead, and back."""
    app = recorded_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.open_study("quadratic")
        await settle(pilot, lambda: screen_name("StudyScreen")(pilot) and pilot.app.screen.board)
        screen = app.screen
        params = screen.query_one("#params", ParamPlots)

        def shown() -> list[str]:
            return [p.param for p in params.plots if p.display]

        assert (params.pages, shown()) == (2, ["lr"])
        await pilot.press("m")
        assert shown() == ["momentum"]
        assert "m: more (2/2)" in str(screen.query_one("#params-box").border_subtitle)
        await pilot.press("g")
        await pilot.pause()
        assert screen.query_one("#heatmap-box").display and not screen.query_one("#params-box").display
        await pilot.press("g")
        await pilot.pause()
        assert screen.query_one("#params-box").display and not screen.query_one("#heatmap-box").display


def test_kill_confirmation(snap_compare: Any) -> None:
    """`k` on a running run asks first."""

    async def run_before(pilot: Pilot) -> None:
        await select_run(pilot, "resnet:2")
        await pilot.press("k")
        await settle(pilot, lambda: screen_name("ConfirmScreen")(pilot))

    assert snap_compare(recorded_app(), terminal_size=(80, 24), run_before=run_before)


# Two more hosts as the daemon's `hosts` op shows them: an SSH host it cannot reach (its GPU
# reading is the failed one, no GPUs), and one being drained (its runs go on, nothing new
# starts there).
DOWN_AND_DRAINING = [
    {"name": "gpu1", "state": "down", "why": "connection refused", "down_since": None, "cpu_slots": 8, "cpu_used": 0, "cpu_runs": [],
     "gpus": [], "gpu_source": "none", "gpu_error": "host gpu1 is down: connection refused", "runs": []},
    {"name": "gpu2", "state": "draining", "why": "", "down_since": None, "cpu_slots": 8, "cpu_used": 0, "cpu_runs": [],
     "gpus": [{"index": 0, "uuid": "GPU-fa4e0000-0000-4000-8000-000000000010", "name": "NVIDIA H100 80GB HBM3",
               "memory_total_mib": 81559, "memory_used_mib": 0, "utilization_pct": 0, "pids": [], "runs": [],
               "allowed": True, "foreign": False},
              {"index": 1, "uuid": "GPU-fa4e0000-0000-4000-8000-000000000011", "name": "NVIDIA H100 80GB HBM3",
               "memory_total_mib": 81559, "memory_used_mib": 61210, "utilization_pct": 88, "pids": [], "runs": [],
               "allowed": True, "foreign": True}],
     "gpu_source": "nvidia-smi", "gpu_error": None, "runs": []},
]


def test_dashboard_hosts_down_and_draining(snap_compare: Any) -> None:
    """A host that is down says why, in red; a draining one is yellow; up is green."""
    app = make_app(RecordedDaemon(hosts=DOWN_AND_DRAINING), clock=lambda: NOW, where="/home/ada/.hypd/run/hypd.sock")
    assert snap_compare(app, terminal_size=(160, 48), run_before=then())


def test_reconnecting_banner(snap_compare: Any) -> None:
    """The daemon went away: the banner says so and that it keeps trying; the last data stays."""
    app = recorded_app(drops=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=then(until=lambda pilot: app.attempts >= 1))


RECORDED: dict[str, Any] = json.loads(r"""
{
 "hello": {"v":1,"hello":"hypd","version":"0.1.0","pid":4242,"home":"/home/ada/.hypd"},
 "ls": [
  {"id":1,"study":"quadratic","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4016573,"ended":1749999987.6973355,"deadline":1750000106.401373,"metrics":{"loss":0.220616,"grad_norm":1.012032},"objective":0.220616,"last_line":"done: final loss 0.22062, weights in /home/ada/.hypd/studies/quadratic/0001_lr=0.01_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0001_lr=0.01_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0001/log","reports":20,"name":"quadratic:1"},
  {"id":2,"study":"quadratic","run_no":2,"trial":1,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4154577,"ended":1749999987.7005303,"deadline":1750000106.415176,"metrics":{"loss":0.138503,"grad_norm":0.478071},"objective":0.138503,"last_line":"done: final loss 0.13850, weights in /home/ada/.hypd/studies/quadratic/0002_lr=0.01_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0002_lr=0.01_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0002/log","reports":20,"name":"quadratic:2"},
  {"id":3,"study":"quadratic","run_no":3,"trial":2,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4262393,"ended":1749999987.589478,"deadline":1750000106.4259984,"metrics":{"loss":0.425408,"grad_norm":3.281798},"objective":0.425408,"last_line":"done: final loss 0.42541, weights in /home/ada/.hypd/studies/quadratic/0003_lr=0.01_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0003_lr=0.01_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0003/log","reports":20,"name":"quadratic:3"},
  {"id":4,"study":"quadratic","run_no":4,"trial":3,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4466343,"ended":1749999987.7054484,"deadline":1750000106.4463842,"metrics":{"loss":0.102082,"grad_norm":0.371513},"objective":0.102082,"last_line":"done: final loss 0.10208, weights in /home/ada/.hypd/studies/quadratic/0004_lr=0.03_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0004_lr=0.03_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0004/log","reports":20,"name":"quadratic:4"},
  {"id":5,"study":"quadratic","run_no":5,"trial":4,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.595648,"ended":1749999988.7524142,"deadline":1750000107.5943027,"metrics":{"loss":0.055876,"grad_norm":0.212059},"objective":0.055876,"last_line":"done: final loss 0.05588, weights in /home/ada/.hypd/studies/quadratic/0005_lr=0.03_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0005_lr=0.03_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0005/log","reports":20,"name":"quadratic:5"},
  {"id":6,"study":"quadratic","run_no":6,"trial":5,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.701621,"ended":1749999988.8742738,"deadline":1750000107.7012665,"metrics":{"loss":0.191045,"grad_norm":3.078642},"objective":0.191045,"last_line":"done: final loss 0.19104, weights in /home/ada/.hypd/studies/quadratic/0006_lr=0.03_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0006_lr=0.03_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0006/log","reports":20,"name":"quadratic:6"},
  {"id":7,"study":"quadratic","run_no":7,"trial":6,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.7063298,"ended":1749999988.8766906,"deadline":1750000107.7059247,"metrics":{"loss":1.579978,"grad_norm":7.868746},"objective":1.579978,"last_line":"done: final loss 1.57998, weights in /home/ada/.hypd/studies/quadratic/0007_lr=0.1_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0007_lr=0.1_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0007/log","reports":20,"name":"quadratic:7"},
  {"id":8,"study":"quadratic","run_no":8,"trial":7,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.710936,"ended":1749999988.8798022,"deadline":1750000107.7107122,"metrics":{"loss":0.011332,"grad_norm":0.078232},"objective":0.011332,"last_line":"done: final loss 0.01133, weights in /home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0008/log","reports":20,"name":"quadratic:8"},
  {"id":9,"study":"quadratic","run_no":9,"trial":8,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999988.7559917,"ended":1749999989.8980346,"deadline":1750000108.755578,"metrics":{"loss":0.258434,"grad_norm":4.483433},"objective":0.258434,"last_line":"done: final loss 0.25843, weights in /home/ada/.hypd/studies/quadratic/0009_lr=0.1_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0009_lr=0.1_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0009/log","reports":20,"name":"quadratic:9"},
  {"id":10,"study":"sweep","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.054633,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999990.5666964,"ended":1749999991.0110056,"deadline":null,"metrics":{"loss":0.378332},"objective":0.378332,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0001_lr=0.0546332_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0001/log","reports":1,"name":"sweep:1"},
  {"id":11,"study":"sweep","run_no":2,"trial":1,"attempt":1,"replicate":1,"state":"failed","reason":"exited with status 1","params":{"lr":0.282224,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999990.5702293,"ended":1749999991.0136938,"deadline":null,"metrics":{"loss":2.75024},"objective":2.75024,"last_line":"[hypd] stage main failed (status 1)","exit_code":1,"exit_stage":"main","run_dir":"/home/ada/.hypd/studies/sweep/0002_lr=0.282224_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0002/log","reports":1,"name":"sweep:2"},
  {"id":12,"study":"sweep","run_no":3,"trial":2,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.004196,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.015119,"ended":1749999991.4270215,"deadline":null,"metrics":{"loss":0.190044},"objective":0.190044,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0003_lr=0.00419561_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0003/log","reports":1,"name":"sweep:3"},
  {"id":13,"study":"sweep","run_no":4,"trial":3,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.08283,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.0198593,"ended":1749999991.4290166,"deadline":null,"metrics":{"loss":0.660298},"objective":0.660298,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0004_lr=0.0828298_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0004/log","reports":1,"name":"sweep:4"},
  {"id":14,"study":"sweep","run_no":5,"trial":4,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.012012,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.4295354,"ended":1749999991.8399243,"deadline":null,"metrics":{"loss":0.111879},"objective":0.111879,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0005_lr=0.0120121_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0005/log","reports":1,"name":"sweep:5"},
  {"id":15,"study":"sweep","run_no":6,"trial":5,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.038173,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.4359226,"ended":1749999991.8431458,"deadline":null,"metrics":{"loss":0.309726},"objective":0.309726,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0006_lr=0.0381726_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0006/log","reports":1,"name":"sweep:6"},
  {"id":16,"study":"sweep","run_no":7,"trial":6,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.032535,"batch":64},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.8438332,"ended":1749999992.2589462,"deadline":null,"metrics":{"loss":0.189355},"objective":0.189355,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0007_lr=0.0325355_batch=64","log_path":"/home/ada/.hypd/runs/sweep/0007/log","reports":1,"name":"sweep:7"},
  {"id":17,"study":"sweep","run_no":8,"trial":7,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.001047,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.8514552,"ended":1749999992.2613065,"deadline":null,"metrics":{"loss":0.317533},"objective":0.317533,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0008_lr=0.00104667_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0008/log","reports":1,"name":"sweep:8"},
  {"id":18,"study":"sweep","run_no":9,"trial":8,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.019387,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999992.2617667,"ended":1749999992.6721177,"deadline":null,"metrics":{"loss":0.038131},"objective":0.038131,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0009_lr=0.0193869_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0009/log","reports":1,"name":"sweep:9"},
  {"id":19,"study":"sweep","run_no":10,"trial":9,"attempt":1,"replicate":1,"state":"failed","reason":"exited with status 1","params":{"lr":0.22645,"batch":64},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999992.270591,"ended":1749999992.6749518,"deadline":null,"metrics":{"loss":2.1285},"objective":2.1285,"last_line":"[hypd] stage main failed (status 1)","exit_code":1,"exit_stage":"main","run_dir":"/home/ada/.hypd/studies/sweep/0010_lr=0.22645_batch=64","log_path":"/home/ada/.hypd/runs/sweep/0010/log","reports":1,"name":"sweep:10"},
  {"id":20,"study":"resnet","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"running","reason":"started on local:0","params":{"lr":0.1,"wd":0.0001,"epochs":90},"host":"local","gpus":[0],"created":1749999994.4695344,"started":1749999994.4790797,"ended":null,"deadline":null,"metrics":{"train_loss":0.74275,"val_acc":0.86233},"objective":0.86233,"last_line":"epoch 30/90  train_loss 0.7427  lr 0.1","exit_code":null,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/resnet/0001_lr=0.1_wd=0.0001","log_path":"/home/ada/.hypd/runs/resnet/0001/log","reports":30,"name":"resnet:1"},
  {"id":21,"study":"resnet","run_no":2,"trial":1,"attempt":1,"replicate":1,"state":"running","reason":"started on local:1","params":{"lr":0.1,"wd":0.0005,"epochs":90},"host":"local","gpus":[1],"created":1749999994.4695344,"started":1749999994.482157,"ended":null,"deadline":null,"metrics":{"train_loss":0.74275,"val_acc":0.85433},"objective":0.85433,"last_line":"epoch 30/90  train_loss 0.7427  lr 0.1","exit_code":null,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/resnet/0002_lr=0.1_wd=0.0005","log_path":"/home/ada/.hypd/runs/resnet/0002/log","reports":30,"name":"resnet:2"},
  {"id":22,"study":"resnet","run_no":3,"trial":2,"attempt":1,"replicate":1,"state":"pending","reason":"new trial","params":{"lr":0.03,"wd":0.0001,"epochs":90},"host":null,"gpus":null,"created":1749999994.4695344,"started":null,"ended":null,"deadline":null,"metrics":{},"objective":null,"last_line":"","exit_code":null,"exit_stage":null,"run_dir":null,"log_path":null,"reports":0,"name":"resnet:3"},
  {"id":23,"study":"resnet","run_no":4,"trial":3,"attempt":1,"replicate":1,"state":"pending","reason":"new trial","params":{"lr":0.03,"wd":0.0005,"epochs":90},"host":null,"gpus":null,"created":1749999994.4695344,"started":null,"ended":null,"deadline":null,"metrics":{},"objective":null,"last_line":"","exit_code":null,"exit_stage":null,"run_dir":null,"log_path":null,"reports":0,"name":"resnet:4"}
 ],
 "studies": [
  {"name":"quadratic","algorithm":"grid","paused":false,"pause_reason":"","max_trials":null,"trials":9,"parallel":4,"gpus":0,"priority":1,"counts":{"pending":0,"running":0,"completed":9,"failed":0,"killed":0,"stopped":0,"lost":0},"outcomes":{"pending":0,"running":0,"completed":9,"failed":0,"killed":0,"stopped":0,"lost":0},"done":9,"total":9,"retried":0,"metric":"loss","goal":"minimize","best":0.011332,"best_run":"quadratic:8","finished":true,"source":"/home/ada/hypd/studies/quadratic.toml"},
  {"name":"sweep","algorithm":"random","paused":true,"pause_reason":"","max_trials":10,"trials":10,"parallel":2,"gpus":0,"priority":1,"counts":{"pending":0,"running":0,"completed":8,"failed":2,"killed":0,"stopped":0,"lost":0},"outcomes":{"pending":0,"running":0,"completed":8,"failed":2,"killed":0,"stopped":0,"lost":0},"done":8,"total":10,"retried":0,"metric":"loss","goal":"minimize","best":0.038131,"best_run":"sweep:9","finished":true,"source":"/home/ada/hypd/studies/sweep.toml"},
  {"name":"resnet","algorithm":"grid","paused":false,"pause_reason":"","max_trials":null,"trials":4,"parallel":2,"gpus":1,"priority":1,"counts":{"pending":2,"running":2,"completed":0,"failed":0,"killed":0,"stopped":0,"lost":0},"outcomes":{"pending":2,"running":2,"completed":0,"failed":0,"killed":0,"stopped":0,"lost":0},"done":0,"total":4,"retried":0,"metric":"val_acc","goal":"maximize","best":null,"best_run":null,"finished":false,"source":"/home/ada/hypd/studies/resnet.toml"}
 ],
 "hosts": [
  {"name":"local","state":"up","why":"","down_since":null,"cpu_slots":4,"cpu_used":0,"cpu_runs":[],"gpus":[{"index":0,"uuid":"GPU-fa4e0000-0000-4000-8000-000000000000","name":"NVIDIA A100-SXM4-40GB","memory_total_mib":40960,"memory_used_mib":31244,"utilization_pct":97,"pids":[],"runs":["resnet:1"],"allowed":true,"foreign":false},{"index":1,"uuid":"GPU-fa4e0000-0000-4000-8000-000000000001","name":"NVIDIA A100-SXM4-40GB","memory_total_mib":40960,"memory_used_mib":28810,"utilization_pct":84,"pids":[],"runs":["resnet:2"],"allowed":true,"foreign":false},{"index":2,"uuid":"GPU-fa4e0000-0000-4000-8000-000000000002","name":"NVIDIA A100-SXM4-40GB","memory_total_mib":40960,"memory_used_mib":22400,"utilization_pct":100,"pids":[],"runs":[],"allowed":true,"foreign":true},{"index":3,"uuid":"GPU-fa4e0000-0000-4000-8000-000000000003","name":"NVIDIA A100-SXM4-40GB","memory_total_mib":40960,"memory_used_mib":0,"utilization_pct":0,"pids":[],"runs":[],"allowed":true,"foreign":false}],"gpu_source":"nvidia-smi","gpu_error":null,"runs":["resnet:1","resnet:2"]},
  {"name":"cpu-box","state":"up","why":"","down_since":null,"cpu_slots":8,"cpu_used":0,"cpu_runs":[],"gpus":[],"gpu_source":"none","gpu_error":"NVML unavailable: NVMLError_LibraryNotFound: NVML Shared Library Not Found; nvidia-smi not found","runs":[]}
 ],
 "info": {
  "resnet:1": {"run":{"id":20,"name":"resnet:1","study":"resnet","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"running","reason":"started on local:0","params":{"lr":0.1,"wd":0.0001,"epochs":90},"host":"local","gpus":[0],"created":1749999994.4695344,"started":1749999994.4790797,"ended":null,"deadline":null,"metrics":{"train_loss":0.74275,"val_acc":0.86233},"objective":0.86233,"last_line":"epoch 30/90  train_loss 0.7427  lr 0.1","exit_code":null,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/resnet/0001_lr=0.1_wd=0.0001","log_path":"/home/ada/.hypd/runs/resnet/0001/log","reports":30},"summary":{"train_loss":{"count":30,"first":2.25982,"last":0.74275,"min":0.74275,"max":2.25982,"last_step":30},"val_acc":{"count":30,"first":0.19196,"last":0.86233,"min":0.19196,"max":0.86233,"last_step":30}},"reports":[{"step":1,"at":1749999994.5915008,"values":{"train_loss":2.25982,"val_acc":0.19196}},{"step":2,"at":1749999994.693226,"values":{"train_loss":2.17317,"val_acc":0.25081}},{"step":3,"at":1749999994.7961023,"values":{"train_loss":2.08992,"val_acc":0.30496}},{"step":4,"at":1749999994.8982563,"values":{"train_loss":2.00993,"val_acc":0.35477}},{"step":5,"at":1749999994.999583,"values":{"train_loss":1.93308,"val_acc":0.40061}},{"step":6,"at":1749999995.204667,"values":{"train_loss":1.85924,"val_acc":0.44278}},{"step":7,"at":1749999995.3067217,"values":{"train_loss":1.7883,"val_acc":0.48157}},{"step":8,"at":1749999995.4087284,"values":{"train_loss":1.72014,"val_acc":0.51727}},{"step":9,"at":1749999995.5113008,"values":{"train_loss":1.65466,"val_acc":0.55011}},{"step":10,"at":1749999995.6136463,"values":{"train_loss":1.59174,"val_acc":0.58032}},{"step":11,"at":1749999995.8212469,"values":{"train_loss":1.53128,"val_acc":0.60812}},{"step":12,"at":1749999995.9235454,"values":{"train_loss":1.4732,"val_acc":0.6337}},{"step":13,"at":1749999996.0252922,"values":{"train_loss":1.4174,"val_acc":0.65723}},{"step":14,"at":1749999996.127077,"values":{"train_loss":1.36378,"val_acc":0.67888}},{"step":15,"at":1749999996.23812,"values":{"train_loss":1.31227,"val_acc":0.6988}},{"step":16,"at":1749999996.340403,"values":{"train_loss":1.26277,"val_acc":0.71712}},{"step":17,"at":1749999996.5431573,"values":{"train_loss":1.21522,"val_acc":0.73398}},{"step":18,"at":1749999996.6450686,"values":{"train_loss":1.16953,"val_acc":0.7495}},{"step":19,"at":1749999996.7481394,"values":{"train_loss":1.12563,"val_acc":0.76377}},{"step":20,"at":1749999996.851418,"values":{"train_loss":1.08346,"val_acc":0.7769}},{"step":21,"at":1749999996.953634,"values":{"train_loss":1.04293,"val_acc":0.78898}},{"step":22,"at":1749999997.055788,"values":{"train_loss":1.004,"val_acc":0.8001}},{"step":23,"at":1749999997.259117,"values":{"train_loss":0.96659,"val_acc":0.81032}},{"step":24,"at":1749999997.3608725,"values":{"train_loss":0.93065,"val_acc":0.81973}},{"step":25,"at":1749999997.463254,"values":{"train_loss":0.89612,"val_acc":0.82839}},{"step":26,"at":1749999997.5654957,"values":{"train_loss":0.86295,"val_acc":0.83635}},{"step":27,"at":1749999997.6687076,"values":{"train_loss":0.83107,"val_acc":0.84368}},{"step":28,"at":1749999997.770754,"values":{"train_loss":0.80044,"val_acc":0.85042}},{"step":29,"at":1749999997.9753172,"values":{"train_loss":0.77102,"val_acc":0.85663}},{"step":30,"at":1749999998.077979,"values":{"train_loss":0.74275,"val_acc":0.86233}}],"transitions":[{"at":1749999994.4695344,"from":null,"to":"pending","reason":"new trial"},{"at":1749999994.4790797,"from":"pending","to":"running","reason":"started on local:0"}],"attempts":["resnet:1"],"retries":0,"objective_metric":"val_acc","goal":"maximize","commands":[["main","python3 -c 'import math, time\nfor e in range(1, 91):\n    loss = 2.3 * math.exp(-e / (25 * 0.1 / 0.1)) + 0.05\n    acc = 0.93 - 0.8 * math.exp(-e / 12) - 0.0001 * 20\n    print(\"epoch %d/90  train_loss %.4f  lr %g\" % (e, loss, 0.1))\n    print(\"METRICS: step=%d train_loss=%.5f val_acc=%.5f\" % (e, loss, acc))\n    time.sleep(0.12 if e < 30 else 60)'"]],"timeout":null,"log_tail":[],"reports_from":0,"reports_total":30},
  "quadratic:8": {"run":{"id":8,"name":"quadratic:8","study":"quadratic","run_no":8,"trial":7,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.710936,"ended":1749999988.8798022,"deadline":1750000107.7107122,"metrics":{"loss":0.011332,"grad_norm":0.078232},"objective":0.011332,"last_line":"done: final loss 0.01133, weights in /home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0008/log","reports":20},"summary":{"loss":{"count":20,"first":1.794525,"last":0.011332,"min":0.011332,"max":1.794525,"last_step":20},"grad_norm":{"count":20,"first":9.902896,"last":0.078232,"min":0.078232,"max":9.902896,"last_step":20}},"reports":[{"step":1,"at":1749999987.8149452,"values":{"loss":1.794525,"grad_norm":9.902896}},{"step":2,"at":1749999987.9232354,"values":{"loss":0.610138,"grad_norm":7.911222}},{"step":3,"at":1749999987.9232354,"values":{"loss":0.59439,"grad_norm":3.082408}},{"step":4,"at":1749999988.0265517,"values":{"loss":0.229656,"grad_norm":4.173222}},{"step":5,"at":1749999988.0265517,"values":{"loss":0.148922,"grad_norm":2.203315}},{"step":6,"at":1749999988.1304379,"values":{"loss":0.110964,"grad_norm":1.479042}},{"step":7,"at":1749999988.1304379,"values":{"loss":0.063673,"grad_norm":1.488241}},{"step":8,"at":1749999988.2346687,"values":{"loss":0.05583,"grad_norm":0.602785}},{"step":9,"at":1749999988.2346687,"values":{"loss":0.043433,"grad_norm":0.688274}},{"step":10,"at":1749999988.3379645,"values":{"loss":0.035687,"grad_norm":0.474398}},{"step":11,"at":1749999988.3379645,"values":{"loss":0.031684,"grad_norm":0.254335}},{"step":12,"at":1749999988.4434962,"values":{"loss":0.027217,"grad_norm":0.291497}},{"step":13,"at":1749999988.4434962,"values":{"loss":0.024113,"grad_norm":0.169704}},{"step":14,"at":1749999988.5469444,"values":{"loss":0.021489,"grad_norm":0.150166}},{"step":15,"at":1749999988.5469444,"values":{"loss":0.019139,"grad_norm":0.136036}},{"step":16,"at":1749999988.6499236,"values":{"loss":0.017185,"grad_norm":0.103039}},{"step":17,"at":1749999988.6499236,"values":{"loss":0.015438,"grad_norm":0.101247}},{"step":18,"at":1749999988.7710745,"values":{"loss":0.013901,"grad_norm":0.089609}},{"step":19,"at":1749999988.7710745,"values":{"loss":0.012545,"grad_norm":0.082322}},{"step":20,"at":1749999988.7710745,"values":{"loss":0.011332,"grad_norm":0.078232}}],"transitions":[{"at":1749999986.3729706,"from":null,"to":"pending","reason":"new trial"},{"at":1749999987.710936,"from":"pending","to":"running","reason":"started on local (cpu)"},{"at":1749999988.8798022,"from":"running","to":"completed","reason":"all stages exited 0"}],"attempts":["quadratic:8"],"retries":1,"objective_metric":"loss","goal":"minimize","commands":[["main","python3 train_quadratic.py --lr 0.1 --momentum 0.5 --epochs 20 --out /home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5"]],"timeout":120.0,"log_tail":[],"reports_from":0,"reports_total":20},
  "sweep:2": {"run":{"id":11,"name":"sweep:2","study":"sweep","run_no":2,"trial":1,"attempt":1,"replicate":1,"state":"failed","reason":"exited with status 1","params":{"lr":0.282224,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999990.5702293,"ended":1749999991.0136938,"deadline":null,"metrics":{"loss":2.75024},"objective":2.75024,"last_line":"[hypd] stage main failed (status 1)","exit_code":1,"exit_stage":"main","run_dir":"/home/ada/.hypd/studies/sweep/0002_lr=0.282224_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0002/log","reports":1},"summary":{"loss":{"count":1,"first":2.75024,"last":2.75024,"min":2.75024,"max":2.75024,"last_step":0}},"reports":[{"step":0,"at":1749999991.0123477,"values":{"loss":2.75024}}],"transitions":[{"at":1749999990.561207,"from":null,"to":"pending","reason":"new trial"},{"at":1749999990.5702293,"from":"pending","to":"running","reason":"started on local (cpu)"},{"at":1749999991.0136938,"from":"running","to":"failed","reason":"exited with status 1"}],"attempts":["sweep:2"],"retries":0,"objective_metric":"loss","goal":"minimize","commands":[["main","python3 -c 'import sys, time\ntime.sleep(0.3)\nprint(\"METRICS: loss=%g\" % (abs(0.282224 - 0.02) * 10 + 128 / 1000))\nsys.exit(1 if 0.282224 > 0.15 else 0)'"]],"timeout":null,"log_tail":[],"reports_from":0,"reports_total":1}
 },
 "metrics": {
  "resnet:1": {"run":"resnet:1","reports":[{"step":1,"at":1749999994.5915008,"values":{"train_loss":2.25982,"val_acc":0.19196}},{"step":2,"at":1749999994.693226,"values":{"train_loss":2.17317,"val_acc":0.25081}},{"step":3,"at":1749999994.7961023,"values":{"train_loss":2.08992,"val_acc":0.30496}},{"step":4,"at":1749999994.8982563,"values":{"train_loss":2.00993,"val_acc":0.35477}},{"step":5,"at":1749999994.999583,"values":{"train_loss":1.93308,"val_acc":0.40061}},{"step":6,"at":1749999995.204667,"values":{"train_loss":1.85924,"val_acc":0.44278}},{"step":7,"at":1749999995.3067217,"values":{"train_loss":1.7883,"val_acc":0.48157}},{"step":8,"at":1749999995.4087284,"values":{"train_loss":1.72014,"val_acc":0.51727}},{"step":9,"at":1749999995.5113008,"values":{"train_loss":1.65466,"val_acc":0.55011}},{"step":10,"at":1749999995.6136463,"values":{"train_loss":1.59174,"val_acc":0.58032}},{"step":11,"at":1749999995.8212469,"values":{"train_loss":1.53128,"val_acc":0.60812}},{"step":12,"at":1749999995.9235454,"values":{"train_loss":1.4732,"val_acc":0.6337}},{"step":13,"at":1749999996.0252922,"values":{"train_loss":1.4174,"val_acc":0.65723}},{"step":14,"at":1749999996.127077,"values":{"train_loss":1.36378,"val_acc":0.67888}},{"step":15,"at":1749999996.23812,"values":{"train_loss":1.31227,"val_acc":0.6988}},{"step":16,"at":1749999996.340403,"values":{"train_loss":1.26277,"val_acc":0.71712}},{"step":17,"at":1749999996.5431573,"values":{"train_loss":1.21522,"val_acc":0.73398}},{"step":18,"at":1749999996.6450686,"values":{"train_loss":1.16953,"val_acc":0.7495}},{"step":19,"at":1749999996.7481394,"values":{"train_loss":1.12563,"val_acc":0.76377}},{"step":20,"at":1749999996.851418,"values":{"train_loss":1.08346,"val_acc":0.7769}},{"step":21,"at":1749999996.953634,"values":{"train_loss":1.04293,"val_acc":0.78898}},{"step":22,"at":1749999997.055788,"values":{"train_loss":1.004,"val_acc":0.8001}},{"step":23,"at":1749999997.259117,"values":{"train_loss":0.96659,"val_acc":0.81032}},{"step":24,"at":1749999997.3608725,"values":{"train_loss":0.93065,"val_acc":0.81973}},{"step":25,"at":1749999997.463254,"values":{"train_loss":0.89612,"val_acc":0.82839}},{"step":26,"at":1749999997.5654957,"values":{"train_loss":0.86295,"val_acc":0.83635}},{"step":27,"at":1749999997.6687076,"values":{"train_loss":0.83107,"val_acc":0.84368}},{"step":28,"at":1749999997.770754,"values":{"train_loss":0.80044,"val_acc":0.85042}},{"step":29,"at":1749999997.9753172,"values":{"train_loss":0.77102,"val_acc":0.85663}},{"step":30,"at":1749999998.077979,"values":{"train_loss":0.74275,"val_acc":0.86233}}]},
  "quadratic:8": {"run":"quadratic:8","reports":[{"step":1,"at":1749999987.8149452,"values":{"loss":1.794525,"grad_norm":9.902896}},{"step":2,"at":1749999987.9232354,"values":{"loss":0.610138,"grad_norm":7.911222}},{"step":3,"at":1749999987.9232354,"values":{"loss":0.59439,"grad_norm":3.082408}},{"step":4,"at":1749999988.0265517,"values":{"loss":0.229656,"grad_norm":4.173222}},{"step":5,"at":1749999988.0265517,"values":{"loss":0.148922,"grad_norm":2.203315}},{"step":6,"at":1749999988.1304379,"values":{"loss":0.110964,"grad_norm":1.479042}},{"step":7,"at":1749999988.1304379,"values":{"loss":0.063673,"grad_norm":1.488241}},{"step":8,"at":1749999988.2346687,"values":{"loss":0.05583,"grad_norm":0.602785}},{"step":9,"at":1749999988.2346687,"values":{"loss":0.043433,"grad_norm":0.688274}},{"step":10,"at":1749999988.3379645,"values":{"loss":0.035687,"grad_norm":0.474398}},{"step":11,"at":1749999988.3379645,"values":{"loss":0.031684,"grad_norm":0.254335}},{"step":12,"at":1749999988.4434962,"values":{"loss":0.027217,"grad_norm":0.291497}},{"step":13,"at":1749999988.4434962,"values":{"loss":0.024113,"grad_norm":0.169704}},{"step":14,"at":1749999988.5469444,"values":{"loss":0.021489,"grad_norm":0.150166}},{"step":15,"at":1749999988.5469444,"values":{"loss":0.019139,"grad_norm":0.136036}},{"step":16,"at":1749999988.6499236,"values":{"loss":0.017185,"grad_norm":0.103039}},{"step":17,"at":1749999988.6499236,"values":{"loss":0.015438,"grad_norm":0.101247}},{"step":18,"at":1749999988.7710745,"values":{"loss":0.013901,"grad_norm":0.089609}},{"step":19,"at":1749999988.7710745,"values":{"loss":0.012545,"grad_norm":0.082322}},{"step":20,"at":1749999988.7710745,"values":{"loss":0.011332,"grad_norm":0.078232}}]},
  "sweep:2": {"run":"sweep:2","reports":[{"step":0,"at":1749999991.0123477,"values":{"loss":2.75024}}]}
 },
 "logs": {
  "resnet:1": {"text":"epoch 1/90  train_loss 2.2598  lr 0.1\nMETRICS: step=1 train_loss=2.25982 val_acc=0.19196\nepoch 2/90  train_loss 2.1732  lr 0.1\nMETRICS: step=2 train_loss=2.17317 val_acc=0.25081\nepoch 3/90  train_loss 2.0899  lr 0.1\nMETRICS: step=3 train_loss=2.08992 val_acc=0.30496\nepoch 4/90  train_loss 2.0099  lr 0.1\nMETRICS: step=4 train_loss=2.00993 val_acc=0.35477\nepoch 5/90  train_loss 1.9331  lr 0.1\nMETRICS: step=5 train_loss=1.93308 val_acc=0.40061\nepoch 6/90  train_loss 1.8592  lr 0.1\nMETRICS: step=6 train_loss=1.85924 val_acc=0.44278\nepoch 7/90  train_loss 1.7883  lr 0.1\nMETRICS: step=7 train_loss=1.78830 val_acc=0.48157\nepoch 8/90  train_loss 1.7201  lr 0.1\nMETRICS: step=8 train_loss=1.72014 val_acc=0.51727\nepoch 9/90  train_loss 1.6547  lr 0.1\nMETRICS: step=9 train_loss=1.65466 val_acc=0.55011\nepoch 10/90  train_loss 1.5917  lr 0.1\nMETRICS: step=10 train_loss=1.59174 val_acc=0.58032\nepoch 11/90  train_loss 1.5313  lr 0.1\nMETRICS: step=11 train_loss=1.53128 val_acc=0.60812\nepoch 12/90  train_loss 1.4732  lr 0.1\nMETRICS: step=12 train_loss=1.47320 val_acc=0.63370\nepoch 13/90  train_loss 1.4174  lr 0.1\nMETRICS: step=13 train_loss=1.41740 val_acc=0.65723\nepoch 14/90  train_loss 1.3638  lr 0.1\nMETRICS: step=14 train_loss=1.36378 val_acc=0.67888\nepoch 15/90  train_loss 1.3123  lr 0.1\nMETRICS: step=15 train_loss=1.31227 val_acc=0.69880\nepoch 16/90  train_loss 1.2628  lr 0.1\nMETRICS: step=16 train_loss=1.26277 val_acc=0.71712\nepoch 17/90  train_loss 1.2152  lr 0.1\nMETRICS: step=17 train_loss=1.21522 val_acc=0.73398\nepoch 18/90  train_loss 1.1695  lr 0.1\nMETRICS: step=18 train_loss=1.16953 val_acc=0.74950\nepoch 19/90  train_loss 1.1256  lr 0.1\nMETRICS: step=19 train_loss=1.12563 val_acc=0.76377\nepoch 20/90  train_loss 1.0835  lr 0.1\nMETRICS: step=20 train_loss=1.08346 val_acc=0.77690\nepoch 21/90  train_loss 1.0429  lr 0.1\nMETRICS: step=21 train_loss=1.04293 val_acc=0.78898\nepoch 22/90  train_loss 1.0040  lr 0.1\nMETRICS: step=22 train_loss=1.00400 val_acc=0.80010\nepoch 23/90  train_loss 0.9666  lr 0.1\nMETRICS: step=23 train_loss=0.96659 val_acc=0.81032\nepoch 24/90  train_loss 0.9307  lr 0.1\nMETRICS: step=24 train_loss=0.93065 val_acc=0.81973\nepoch 25/90  train_loss 0.8961  lr 0.1\nMETRICS: step=25 train_loss=0.89612 val_acc=0.82839\nepoch 26/90  train_loss 0.8629  lr 0.1\nMETRICS: step=26 train_loss=0.86295 val_acc=0.83635\nepoch 27/90  train_loss 0.8311  lr 0.1\nMETRICS: step=27 train_loss=0.83107 val_acc=0.84368\nepoch 28/90  train_loss 0.8004  lr 0.1\nMETRICS: step=28 train_loss=0.80044 val_acc=0.85042\nepoch 29/90  train_loss 0.7710  lr 0.1\nMETRICS: step=29 train_loss=0.77102 val_acc=0.85663\nepoch 30/90  train_loss 0.7427  lr 0.1\nMETRICS: step=30 train_loss=0.74275 val_acc=0.86233\n","offset":2712,"state":"running","live":true,"path":"/home/ada/.hypd/runs/resnet/0001/log"},
  "quadratic:8": {"text":"epoch 1: loss 1.79452\nMETRICS: step=1 loss=1.7945247210731903 grad_norm=9.902896241694167\nepoch 2: loss 0.61014\nMETRICS: step=2 loss=0.6101378920484408 grad_norm=7.911222254815349\nepoch 3: loss 0.59439\nMETRICS: step=3 loss=0.5943899545798428 grad_norm=3.0824075156976747\nepoch 4: loss 0.22966\nMETRICS: step=4 loss=0.22965577460906905 grad_norm=4.173222444021211\nepoch 5: loss 0.14892\nMETRICS: step=5 loss=0.14892171737944476 grad_norm=2.203314981043712\nepoch 6: loss 0.11096\nMETRICS: step=6 loss=0.11096418319794327 grad_norm=1.4790421871125776\nepoch 7: loss 0.06367\nMETRICS: step=7 loss=0.06367317138472817 grad_norm=1.4882414889809459\nepoch 8: loss 0.05583\nMETRICS: step=8 loss=0.05583043549973173 grad_norm=0.6027845850725111\nepoch 9: loss 0.04343\nMETRICS: step=9 loss=0.0434325087078802 grad_norm=0.6882740047950535\nepoch 10: loss 0.03569\nMETRICS: step=10 loss=0.03568659606153611 grad_norm=0.474398039984514\nepoch 11: loss 0.03168\nMETRICS: step=11 loss=0.03168384007339182 grad_norm=0.2543351409502173\nepoch 12: loss 0.02722\nMETRICS: step=12 loss=0.02721660753318741 grad_norm=0.2914969923237865\nepoch 13: loss 0.02411\nMETRICS: step=13 loss=0.024113084500373465 grad_norm=0.16970375585682113\nepoch 14: loss 0.02149\nMETRICS: step=14 loss=0.02148853323818922 grad_norm=0.15016577945406334\nepoch 15: loss 0.01914\nMETRICS: step=15 loss=0.019138786784124416 grad_norm=0.136036468314687\nepoch 16: loss 0.01719\nMETRICS: step=16 loss=0.01718528839508218 grad_norm=0.10303871406444735\nepoch 17: loss 0.01544\nMETRICS: step=17 loss=0.015438492276937232 grad_norm=0.1012473600778465\nepoch 18: loss 0.01390\nMETRICS: step=18 loss=0.013901057336370726 grad_norm=0.08960886798569659\nepoch 19: loss 0.01254\nMETRICS: step=19 loss=0.012544914294485647 grad_norm=0.0823224269563371\nepoch 20: loss 0.01133\nMETRICS: step=20 loss=0.011331540002918474 grad_norm=0.07823216448158093\ndone: final loss 0.01133, weights in /home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5/weights.txt\n","offset":1966,"state":"completed","live":false,"path":"/home/ada/.hypd/runs/quadratic/0008/log"},
  "sweep:2": {"text":"METRICS: loss=2.75024\n[hypd] stage main failed (status 1)\n","offset":58,"state":"failed","live":false,"path":"/home/ada/.hypd/runs/sweep/0002/log"}
 },
 "leaderboard": {
  "quadratic": {"study":"quadratic","metric":"loss","goal":"minimize","objectives":[{"metric":"loss","goal":"minimize","use":"last"}],"runs":[{"id":8,"study":"quadratic","run_no":8,"trial":7,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.710936,"ended":1749999988.8798022,"deadline":1750000107.7107122,"metrics":{"loss":0.011332,"grad_norm":0.078232},"objective":0.011332,"last_line":"done: final loss 0.01133, weights in /home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0008_lr=0.1_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0008/log","reports":20,"name":"quadratic:8"},{"id":5,"study":"quadratic","run_no":5,"trial":4,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.595648,"ended":1749999988.7524142,"deadline":1750000107.5943027,"metrics":{"loss":0.055876,"grad_norm":0.212059},"objective":0.055876,"last_line":"done: final loss 0.05588, weights in /home/ada/.hypd/studies/quadratic/0005_lr=0.03_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0005_lr=0.03_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0005/log","reports":20,"name":"quadratic:5"},{"id":4,"study":"quadratic","run_no":4,"trial":3,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4466343,"ended":1749999987.7054484,"deadline":1750000106.4463842,"metrics":{"loss":0.102082,"grad_norm":0.371513},"objective":0.102082,"last_line":"done: final loss 0.10208, weights in /home/ada/.hypd/studies/quadratic/0004_lr=0.03_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0004_lr=0.03_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0004/log","reports":20,"name":"quadratic:4"},{"id":2,"study":"quadratic","run_no":2,"trial":1,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.5,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4154577,"ended":1749999987.7005303,"deadline":1750000106.415176,"metrics":{"loss":0.138503,"grad_norm":0.478071},"objective":0.138503,"last_line":"done: final loss 0.13850, weights in /home/ada/.hypd/studies/quadratic/0002_lr=0.01_momentum=0.5/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0002_lr=0.01_momentum=0.5","log_path":"/home/ada/.hypd/runs/quadratic/0002/log","reports":20,"name":"quadratic:2"},{"id":6,"study":"quadratic","run_no":6,"trial":5,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.03,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.701621,"ended":1749999988.8742738,"deadline":1750000107.7012665,"metrics":{"loss":0.191045,"grad_norm":3.078642},"objective":0.191045,"last_line":"done: final loss 0.19104, weights in /home/ada/.hypd/studies/quadratic/0006_lr=0.03_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0006_lr=0.03_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0006/log","reports":20,"name":"quadratic:6"},{"id":1,"study":"quadratic","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4016573,"ended":1749999987.6973355,"deadline":1750000106.401373,"metrics":{"loss":0.220616,"grad_norm":1.012032},"objective":0.220616,"last_line":"done: final loss 0.22062, weights in /home/ada/.hypd/studies/quadratic/0001_lr=0.01_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0001_lr=0.01_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0001/log","reports":20,"name":"quadratic:1"},{"id":9,"study":"quadratic","run_no":9,"trial":8,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999988.7559917,"ended":1749999989.8980346,"deadline":1750000108.755578,"metrics":{"loss":0.258434,"grad_norm":4.483433},"objective":0.258434,"last_line":"done: final loss 0.25843, weights in /home/ada/.hypd/studies/quadratic/0009_lr=0.1_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0009_lr=0.1_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0009/log","reports":20,"name":"quadratic:9"},{"id":3,"study":"quadratic","run_no":3,"trial":2,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.01,"momentum":0.9,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999986.4262393,"ended":1749999987.589478,"deadline":1750000106.4259984,"metrics":{"loss":0.425408,"grad_norm":3.281798},"objective":0.425408,"last_line":"done: final loss 0.42541, weights in /home/ada/.hypd/studies/quadratic/0003_lr=0.01_momentum=0.9/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0003_lr=0.01_momentum=0.9","log_path":"/home/ada/.hypd/runs/quadratic/0003/log","reports":20,"name":"quadratic:3"},{"id":7,"study":"quadratic","run_no":7,"trial":6,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.1,"momentum":0.0,"epochs":20},"host":"local","gpus":[],"created":1749999986.3729706,"started":1749999987.7063298,"ended":1749999988.8766906,"deadline":1750000107.7059247,"metrics":{"loss":1.579978,"grad_norm":7.868746},"objective":1.579978,"last_line":"done: final loss 1.57998, weights in /home/ada/.hypd/studies/quadratic/0007_lr=0.1_momentum=0.0/weights.txt","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/quadratic/0007_lr=0.1_momentum=0.0","log_path":"/home/ada/.hypd/runs/quadratic/0007/log","reports":20,"name":"quadratic:7"}]},
  "sweep": {"study":"sweep","metric":"loss","goal":"minimize","objectives":[{"metric":"loss","goal":"minimize","use":"last"}],"runs":[{"id":18,"study":"sweep","run_no":9,"trial":8,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.019387,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999992.2617667,"ended":1749999992.6721177,"deadline":null,"metrics":{"loss":0.038131},"objective":0.038131,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0009_lr=0.0193869_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0009/log","reports":1,"name":"sweep:9"},{"id":14,"study":"sweep","run_no":5,"trial":4,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.012012,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.4295354,"ended":1749999991.8399243,"deadline":null,"metrics":{"loss":0.111879},"objective":0.111879,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0005_lr=0.0120121_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0005/log","reports":1,"name":"sweep:5"},{"id":16,"study":"sweep","run_no":7,"trial":6,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.032535,"batch":64},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.8438332,"ended":1749999992.2589462,"deadline":null,"metrics":{"loss":0.189355},"objective":0.189355,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0007_lr=0.0325355_batch=64","log_path":"/home/ada/.hypd/runs/sweep/0007/log","reports":1,"name":"sweep:7"},{"id":12,"study":"sweep","run_no":3,"trial":2,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.004196,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.015119,"ended":1749999991.4270215,"deadline":null,"metrics":{"loss":0.190044},"objective":0.190044,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0003_lr=0.00419561_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0003/log","reports":1,"name":"sweep:3"},{"id":15,"study":"sweep","run_no":6,"trial":5,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.038173,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.4359226,"ended":1749999991.8431458,"deadline":null,"metrics":{"loss":0.309726},"objective":0.309726,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0006_lr=0.0381726_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0006/log","reports":1,"name":"sweep:6"},{"id":17,"study":"sweep","run_no":8,"trial":7,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.001047,"batch":128},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.8514552,"ended":1749999992.2613065,"deadline":null,"metrics":{"loss":0.317533},"objective":0.317533,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0008_lr=0.00104667_batch=128","log_path":"/home/ada/.hypd/runs/sweep/0008/log","reports":1,"name":"sweep:8"},{"id":10,"study":"sweep","run_no":1,"trial":0,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.054633,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999990.5666964,"ended":1749999991.0110056,"deadline":null,"metrics":{"loss":0.378332},"objective":0.378332,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0001_lr=0.0546332_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0001/log","reports":1,"name":"sweep:1"},{"id":13,"study":"sweep","run_no":4,"trial":3,"attempt":1,"replicate":1,"state":"completed","reason":"all stages exited 0","params":{"lr":0.08283,"batch":32},"host":"local","gpus":[],"created":1749999990.561207,"started":1749999991.0198593,"ended":1749999991.4290166,"deadline":null,"metrics":{"loss":0.660298},"objective":0.660298,"last_line":"","exit_code":0,"exit_stage":null,"run_dir":"/home/ada/.hypd/studies/sweep/0004_lr=0.0828298_batch=32","log_path":"/home/ada/.hypd/runs/sweep/0004/log","reports":1,"name":"sweep:4"}]},
  "resnet": {"study":"resnet","metric":"val_acc","goal":"maximize","objectives":[{"metric":"val_acc","goal":"maximize","use":"last"}],"runs":[]}
 }
}
""")


def test_the_recorded_replies_keep_to_the_declared_shapes() -> None:
    """The stand-in daemon answers as the real one must (hypd.ipc.REPLIES), so the
    snapshots show what a user would see."""
    assert mismatch(REPLIES["ls"], RECORDED["ls"]) is None
    assert mismatch(REPLIES["studies"], RECORDED["studies"]) is None
    assert mismatch(REPLIES["hosts"], RECORDED["hosts"] + DOWN_AND_DRAINING) is None
    for op in ("info", "leaderboard"):  # (metrics and logs replies are built from these by the stand-in)
        for key, reply in RECORDED[op].items():
            assert mismatch(REPLIES[op], reply, f"{op} {key}") is None
