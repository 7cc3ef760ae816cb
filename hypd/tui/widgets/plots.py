"""Plots the screens share: a grid of plots that pages when they do not all fit, and the
study screen's plots (the objective of each trial with the best so far as a step line, and
a scatter per parameter). What they draw is computed in hypd.tui.model; these only draw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.color import Color
from textual.containers import Grid
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from hypd.tui.model import PLOTTED_STATES, ParamSeries, TrialPoint, int_ticks, step_line, wide_range

# How each kind of trial is drawn: a marker and a theme colour, so a failed or early-stopped
# trial stands apart from a completed one in colour and in shape.
MARKERS = dict(zip(PLOTTED_STATES, (("●", "success"), ("◆", "secondary"), ("✗", "error")), strict=True))
BEST_COLOUR = "primary"


def theme_rgb(app: Any, variable: str) -> tuple[int, int, int]:
    """A theme variable's colour as plotext takes it."""
    value = (getattr(app, "theme_variables", {}) or {}).get(variable, "#888888")
    try:
        r, g, b = Color.parse(value).rgb
    except Exception:
        return (136, 136, 136)
    return (r, g, b)


def legend(states: Sequence[str], line: str = "") -> str:
    """The markers of these outcomes in their colours, as markup for a box's subtitle (a
    legend inside the plot would hide the points under it)."""
    parts = [f"[${MARKERS[s][1]}]{MARKERS[s][0]}[/] {s}" for s in states]
    if line:
        parts.append(f"[${BEST_COLOUR}]─[/] {line}")
    return "  ".join(parts)


class ReplottedPlot(PlotextPlot):
    """A plot drawn again from its data when it is mounted or resized (its ticks fit its
    width); subclasses say what to draw in `draw`."""

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def on_resize(self) -> None:
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self.draw(plt)
        self.refresh()

    def draw(self, plt: Any) -> None:
        raise NotImplementedError

    def scatter_by_state(self, plt: Any, by_state: dict[str, tuple[list[float], list[float]]]) -> None:
        """Each outcome's points with its marker and colour (MARKERS)."""
        for state, (marker, colour) in MARKERS.items():
            if state in by_state:
                xs, ys = by_state[state]
                plt.scatter(xs, ys, marker=marker, color=theme_rgb(self.app, colour))


class PlotGrid(Grid):
    """Plots as many side by side and stacked as the space allows (each at least
    PLOT_WIDTH x PLOT_HEIGHT); `next_page` shows the others when they do not all fit.
    Subclasses mount PlotextPlot children; `Arranged` says which are shown."""

    DEFAULT_CSS = """
    PlotGrid { grid-size: 1; grid-gutter: 0 1; height: 1fr; }
    PlotGrid > PlotextPlot { height: 1fr; }
    PlotGrid > .no-plots { color: $text-muted; text-style: italic; padding: 1 2; }
    """

    PLOT_WIDTH = 34
    PLOT_HEIGHT = 9
    EMPTY = "nothing to plot yet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.page = 0
        self.pages = 1

    def compose(self) -> ComposeResult:
        yield Static(self.EMPTY, classes="no-plots")

    @property
    def plots(self) -> list[PlotextPlot]:
        return [w for w in self.children if isinstance(w, PlotextPlot)]

    def show_empty(self, empty: bool, text: str | None = None) -> None:
        note = self.query_one(".no-plots", Static)
        note.display = empty
        if text is not None:
            note.update(text)

    def on_resize(self) -> None:
        self._arrange()

    def next_page(self) -> None:
        self.page = (self.page + 1) % max(1, self.pages)
        self._arrange()

    def _arrange(self) -> None:
        plots = self.plots
        if not plots:
            return
        width, height = self.size.width or 80, self.size.height or 20
        cols = max(1, min(len(plots), (width + 1) // (self.PLOT_WIDTH + 1)))
        rows = max(1, min(-(-len(plots) // cols), height // self.PLOT_HEIGHT))
        per_page = cols * rows
        self.pages = -(-len(plots) // per_page)
        self.page %= self.pages
        shown = plots[self.page * per_page:(self.page + 1) * per_page]
        for plot in plots:
            plot.display = plot in shown
        self.styles.grid_size_columns = min(cols, len(shown))
        self.styles.grid_size_rows = -(-len(shown) // cols)
        self.post_message(self.Arranged(self))

    class Arranged(Message):
        """The plots shown changed (the screen retitles its box)."""

        def __init__(self, grid: PlotGrid) -> None:
            super().__init__()
            self.grid = grid

        @property
        def control(self) -> PlotGrid:
            return self.grid


def page_note(box: Widget, grid: PlotGrid, key: str) -> None:
    """The box's subtitle says how to see the plots that do not fit."""
    box.border_subtitle = f"{key}: more ({grid.page + 1}/{grid.pages})" if grid.pages > 1 else ""


class ObjectivePlot(ReplottedPlot):
    """The objective of each trial (a marker per outcome) and the best so far as a step
    line; the trial axis starts at 1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.points: list[TrialPoint] = []
        self.best: tuple[list[int], list[float]] = ([], [])
        self.metric = "objective"

    def show(self, points: Sequence[TrialPoint], best: tuple[list[int], list[float]], metric: str) -> None:
        self.points, self.best, self.metric = list(points), best, metric
        self.replot()

    def draw(self, plt: Any) -> None:
        plotted = [p for p in self.points if p.value is not None]
        plt.xlabel("trial")
        if not plotted:
            plt.title("no results yet")
            return
        if wide_range([p.value for p in plotted if p.value is not None]):
            plt.yscale("log")
        trials = [p.trial for p in plotted]
        best_x, best_y = self.best
        if best_x:  # first, so the trials' markers are drawn over it
            xs, ys = step_line(best_x, best_y, until=max(trials))
            plt.plot(xs, ys, marker="braille", color=theme_rgb(self.app, BEST_COLOUR))
        by_state: dict[str, tuple[list[float], list[float]]] = {}
        for p in plotted:
            xs_, ys_ = by_state.setdefault(p.state, ([], []))
            xs_.append(p.trial)
            ys_.append(p.value or 0.0)
        self.scatter_by_state(plt, by_state)
        first = min(1, *trials)
        plt.xlim(first, max(trials) if max(trials) > first else first + 1)
        ticks = int_ticks(trials, max(2, (self.size.width or 40) // 10), first=first)
        if ticks:
            plt.xticks(ticks, [str(t) for t in ticks])


class ParamPlot(ReplottedPlot):
    """One parameter's value (x) against the objective (y), a marker per outcome."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.param = name
        self.series = ParamSeries(name, {})

    def set_series(self, series: ParamSeries) -> None:
        self.series = series
        self.replot()

    def draw(self, plt: Any) -> None:
        series = self.series
        plt.title(series.name)
        ys = [y for _, values in series.by_state.values() for y in values]
        if not ys:
            return
        if wide_range(ys):
            plt.yscale("log")
        if series.log:
            plt.xscale("log")
        self.scatter_by_state(plt, series.by_state)
        if series.labels:
            plt.xlim(0.5, len(series.labels) + 0.5)
            plt.xticks(list(range(1, len(series.labels) + 1)), series.labels)


class ParamPlots(PlotGrid):
    """A scatter per parameter that varies (value against the objective), so one sees
    which parameters matter."""

    EMPTY = "no parameter varies yet"

    async def show(self, series: Sequence[ParamSeries]) -> None:
        plots = {p.param: p for p in self.plots if isinstance(p, ParamPlot)}
        new = [ParamPlot(s.name) for s in series if s.name not in plots]
        if new:
            await self.mount_all(new)
            plots.update({p.param: p for p in new})
        wanted = {s.name for s in series}
        for name, plot in list(plots.items()):
            if name not in wanted:
                await plot.remove()
        self.show_empty(not series)
        for s in series:
            plots[s.name].set_series(s)
        self._arrange()
