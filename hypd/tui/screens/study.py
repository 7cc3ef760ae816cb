"""One study: its leaderboard, the objective of each trial with the best so far (a step
line), a scatter per parameter (its value against the objective, so one sees which
parameters matter), and for a two-parameter grid a heatmap of the objective (`g`). Failed
and early-stopped trials are drawn apart from completed ones.

Everything plotted comes from the runs the app already holds (op `ls` and run events); the
leaderboard is op `leaderboard`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from hypd.tui.model import (
    PLOTTED_STATES,
    best_so_far,
    describe_trials,
    grid_heatmap,
    param_series,
    trial_points,
)
from hypd.tui.widgets.common import ConnectionBanner
from hypd.tui.widgets.plots import ObjectivePlot, ParamPlots, PlotGrid, legend, page_note
from hypd.tui.widgets.study_detail import HeatmapView, Leaderboard, StudySummary, run_rows

NARROW_BELOW = 120
REPLOT_EVERY = 1.0


class StudyScreen(Screen[None]):
    HELP_TITLE = "Study"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back to where you were"),
        Binding("enter", "open_run", "Open run", show=False, tooltip="open the highlighted leaderboard run"),
        Binding("p", "pause", "Pause", tooltip="pause or resume this study: nothing new starts"),
        Binding("k", "kill", "Kill study", tooltip="kill every run of this study and pause it (asks first)"),
        Binding("r", "retry", "Retry failed", tooltip="a new attempt of each failed trial (asks first)"),
        Binding("f", "show_runs", "Its runs", tooltip="the dashboard's runs table, showing this study's runs"),
        Binding("e", "extend", "Extend", show=False,
                tooltip="more trials for this study (asks how many); its search carries on"),
        Binding("a", "archive", "Archive", show=False,
                tooltip="hide this study from the dashboard and `hypd studies` (asks first; none of its runs going)"),
        Binding("x", "remove", "Remove", show=False,
                tooltip="remove this study and its runs from the daemon (asks first; none of its runs going)"),
        Binding("m", "more_params", "More parameter plots", show=False,
                tooltip="the parameter plots that do not fit, a page at a time"),
        Binding("g", "toggle_heatmap", "Heatmap", show=False,
                tooltip="a two-parameter grid: the objective over the grid instead of the parameter plots"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.study_name = name
        self.board: dict[str, Any] = {}
        self._board_wanted = asyncio.Event()
        self._replot_timer: Any = None
        self.heatmap_shown = False  # `g`: the heatmap instead of the parameter plots
        self.has_heatmap = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        yield StudySummary(id="study-summary")
        with Horizontal(id="study-main"):
            with Vertical(id="board-box", classes="box"):
                yield Leaderboard(id="board")
            with Vertical(id="study-plots"):
                with Vertical(id="objective-box", classes="box"):
                    yield ObjectivePlot(id="objective")
                with Vertical(id="params-box", classes="box"):
                    yield ParamPlots(id="params")
                with VerticalScroll(id="heatmap-box", classes="box"):
                    yield HeatmapView(id="heatmap")
        yield Footer()

    @property
    def summary(self) -> dict[str, Any] | None:
        return self.app.studies.get(self.study_name)  # type: ignore[attr-defined]

    def on_mount(self) -> None:
        app: Any = self.app
        self.title = f"study {self.study_name}"
        self.query_one("#board-box").border_title = "Leaderboard"
        app.runs_changed.subscribe(self, self._runs_changed)
        app.studies_changed.subscribe(self, self._studies_changed)
        app.reloaded.subscribe(self, lambda _: self._refresh_all())
        self._refresh_all()
        self.board_loop()
        self.query_one("#board").focus()

    def on_resize(self) -> None:
        self.set_class(self.size.width < NARROW_BELOW, "-narrow")
        self.query_one("#study-summary", StudySummary).show(self.summary, self.size.width >= NARROW_BELOW)

    def _refresh_all(self) -> None:
        self.query_one("#study-summary", StudySummary).show(self.summary, self.size.width >= NARROW_BELOW)
        self._replot()
        self._board_wanted.set()

    def _studies_changed(self, changed: list[dict[str, Any]]) -> None:
        if any(s.get("name") == self.study_name for s in changed):
            self.query_one("#study-summary", StudySummary).show(self.summary, self.size.width >= NARROW_BELOW)

    def _runs_changed(self, rows: list[dict[str, Any]]) -> None:
        if any(r.get("study") == self.study_name for r in rows):
            self._board_wanted.set()
            if self._replot_timer is None:  # at most one redraw a second, however busy the study
                self._replot_timer = self.set_timer(REPLOT_EVERY, self._replot_now)

    def _replot_now(self) -> None:
        self._replot_timer = None
        self._replot()

    def _replot(self) -> None:
        self._replot_plots()

    @work(group="study-plots", exclusive=True, exit_on_error=False)
    async def _replot_plots(self) -> None:
        app: Any = self.app
        summary = self.summary or {}
        minimize = summary.get("goal", "minimize") != "maximize"
        metric = summary.get("metric", "objective")
        runs = run_rows(app.runs, self.study_name)
        points = trial_points(runs, minimize)
        self.query_one("#objective", ObjectivePlot).show(points, best_so_far(points, minimize), metric)
        box = self.query_one("#objective-box")
        box.border_title = f"{metric} by trial · {describe_trials(points)}"
        shown = [state for state in PLOTTED_STATES if any(p.state == state for p in points)]
        box.border_subtitle = legend(shown, "best so far")
        await self.query_one("#params", ParamPlots).show(param_series(points))
        self.query_one("#params-box").border_title = f"{metric} by parameter"
        heat = grid_heatmap(summary, runs, minimize)
        self.has_heatmap = heat is not None
        self.query_one("#heatmap", HeatmapView).show(heat, minimize)
        if heat is not None:
            heat_box = self.query_one("#heatmap-box")
            heat_box.border_title = f"{metric} over the grid"
            heat_box.border_subtitle = "g: parameter plots"
        self._show_heatmap_or_params()

    def _show_heatmap_or_params(self) -> None:
        heatmap = self.has_heatmap and self.heatmap_shown
        self.query_one("#heatmap-box").display = heatmap
        self.query_one("#params-box").display = not heatmap

    @on(PlotGrid.Arranged, "#params")
    def _params_arranged(self, message: PlotGrid.Arranged) -> None:
        box = self.query_one("#params-box")
        page_note(box, message.grid, "m")
        if self.has_heatmap:
            box.border_subtitle = " · ".join(filter(None, [box.border_subtitle, "g: heatmap"]))

    def action_more_params(self) -> None:
        self.query_one("#params", ParamPlots).next_page()

    def action_toggle_heatmap(self) -> None:
        if not self.has_heatmap:
            self.notify("a heatmap needs a grid over two parameters", severity="warning")
            return
        self.heatmap_shown = not self.heatmap_shown
        self._show_heatmap_or_params()

    @work(group="study-board", exit_on_error=False)
    async def board_loop(self) -> None:
        app: Any = self.app
        while True:
            await self._board_wanted.wait()
            self._board_wanted.clear()
            try:
                self.board = await app.call("leaderboard", study=self.study_name, limit=None)
            except Exception:
                continue
            self.query_one("#board", Leaderboard).show(self.board, app.clock())
            self.query_one("#board-box").border_title = f"Leaderboard · {len(self.board.get('runs') or [])} trials"
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ actions

    @on(DataTable.RowSelected, "#board")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(event.row_key.value)  # type: ignore[attr-defined]

    def action_open_run(self) -> None:
        run = self.query_one("#board", Leaderboard).current_run
        if run:
            self.app.open_run(run)  # type: ignore[attr-defined]

    def action_pause(self) -> None:
        self.app.toggle_pause(self.study_name)  # type: ignore[attr-defined]

    def action_kill(self) -> None:
        self.app.kill(self.study_name)  # type: ignore[attr-defined]

    def action_retry(self) -> None:
        self.app.retry(self.study_name)  # type: ignore[attr-defined]

    def action_extend(self) -> None:
        self.app.extend(self.study_name)  # type: ignore[attr-defined]

    def action_archive(self) -> None:
        self.app.archive(self.study_name)  # type: ignore[attr-defined]

    def action_remove(self) -> None:
        self.app.remove(self.study_name)  # type: ignore[attr-defined]

    def action_show_runs(self) -> None:
        """Back to the dashboard (from however deep) with the runs table showing this
        study's runs only, and the focus on it: the keys then act on a run, not the study."""
        from hypd.tui.screens.dashboard import DashboardScreen

        dashboard = next((s for s in self.app.screen_stack if isinstance(s, DashboardScreen)), None)
        if dashboard is None:
            return
        while self.app.screen is not dashboard:
            self.app.pop_screen()
        dashboard.set_filter(study=self.study_name)
        dashboard.table.focus()

    def commands(self) -> Iterable[SystemCommand]:
        s = self.study_name
        yield SystemCommand(f"Pause or resume study {s}", "nothing new starts while paused", self.action_pause)
        yield SystemCommand(f"Kill study {s}", "kill its runs and pause it, after a confirmation", self.action_kill)
        yield SystemCommand(f"Retry failed runs of study {s}", "after a confirmation", self.action_retry)
        yield SystemCommand(f"Extend study {s}", "more trials; asks how many", self.action_extend)
        yield SystemCommand(f"Archive study {s}", "hide it, after a confirmation", self.action_archive)
        yield SystemCommand(f"Remove study {s}", "and its runs, after a confirmation", self.action_remove)
        yield SystemCommand(f"Show the runs of study {s}", "the dashboard's runs table, filtered", self.action_show_runs)
        if self.has_heatmap:
            yield SystemCommand("Heatmap / parameter plots", "the objective over the grid, or a scatter per parameter",
                                self.action_toggle_heatmap)
        yield SystemCommand("Back to the dashboard", "", self.app.pop_screen)
