"""The study screen's parts: a summary line, the leaderboard, and a heatmap of a
two-parameter grid (its plots are in hypd.tui.widgets.plots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.color import Color
from textual.content import Content
from textual.widget import Widget
from textual.widgets import DataTable, Static

from hypd.display import fmt_ahead, fmt_seconds
from hypd.tui.model import (
    STATE_STYLE,
    Heatmap,
    fmt_number,
    fmt_params,
    runtime,
    study_done,
    study_state,
    study_total,
)
from hypd.tui.widgets.common import rich_style, tight


class StudySummary(Static):
    DEFAULT_CSS = """
    StudySummary { height: auto; padding: 0 1; }
    """

    def show(self, s: Mapping[str, Any] | None, wide: bool = True) -> None:
        if s is None:
            self.update(Content.assemble(("no such study (any more)", "$text-error")))
            return
        if s.get("state") == "loading":
            self.update(Content.assemble(("loading", "$text-muted"), " (the daemon has just started)"))
            return
        if "counts" not in s:
            self.update(Content.assemble(("broken: ", "$text-error bold"), str(s.get("error", ""))))
            return
        counts = s.get("counts") or {}
        state = study_state(s)
        style = {"paused": "$text-warning bold", "finished": "$text-success", "active": "$text-primary"}[state]
        done, total = study_done(s), study_total(s)
        muted = "$text-muted"
        dot = ("  ·  ", muted)
        goal = str(s.get("goal", "?"))
        parts: list[Any] = [(s["name"], "bold"), "  ", (state, style), dot, (s.get("algorithm", "?"), ""), dot,
                            f"{s.get('metric', '?')} ({goal[:3]})", dot, ("best ", muted),
                            (fmt_number(s.get("best"), 6), "bold")]
        if s.get("best_run"):
            parts.append((f" #{s['best_run'].rpartition(':')[2]}", muted))
        if s.get("pause_reason"):
            parts += ["\n", ("paused: ", "$text-warning bold"), (s["pause_reason"], "$text-warning")]
        if s.get("hosts_note"):
            parts += ["\n", ("waiting: ", "$text-warning bold"), (s["hosts_note"], "$text-warning")]
        for why in (s.get("prepare_failed") or {}).values():
            parts += ["\n", ("unusable: ", "$text-error bold"), (why, "$text-error")]
        parts.append("\n")
        parts.append((f"{done}/{total} done", "bold"))
        for key in ("running", "pending", "failed", "killed", "stopped", "lost"):
            n = counts.get(key, 0)
            if n or key in ("running", "pending", "failed"):
                parts.append(dot)
                parts.append((f"{n} {key}", STATE_STYLE[key] if n else muted))
        if wide:
            parts.append((f"  ·  parallel {s.get('parallel', '?')}  ·  {s.get('gpus', '?')} GPU(s) a run", muted))
            if s.get("hosts") and s["hosts"] != "any host":
                parts.append((f"  ·  hosts {s['hosts']}", muted))
        if s.get("ahead"):  # an adaptive study's next trials, ready before a GPU frees
            parts.append((f"  ·  asked ahead: {fmt_ahead(s['ahead'])}", muted))
        self.update(tight(*parts))


class Leaderboard(DataTable):
    """The study's best run of each trial, best first (op `leaderboard`); with several
    objectives, ★ marks the runs on the Pareto front."""

    HELP_TITLE = "Leaderboard"

    DEFAULT_CSS = """
    Leaderboard { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def on_mount(self) -> None:
        self._columns("objective")

    def _columns(self, objective: str) -> None:
        self.clear(columns=True)
        for key, label in (("rank", "#"), ("run", "RUN"), ("objective", objective), ("time", "TIME"),
                           ("params", "PARAMS")):
            self.add_column(label, key=key)

    def show(self, board: Mapping[str, Any], now: float) -> None:
        current = None
        if self.row_count:
            try:
                current = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            except Exception:
                current = None
        metric = board.get("metric", "objective")
        self._columns(f"{metric.upper()} ({str(board.get('goal', ''))[:3]})")
        for i, run in enumerate(board.get("runs") or []):
            rank = Text(str(i + 1), style=rich_style(self.app, "$text-muted"), justify="right")
            if run.get("pareto"):
                rank = Text(f"★{i + 1}", style=rich_style(self.app, "$text-warning"), justify="right")
            self.add_row(rank,
                         Text(run["name"], style="bold" if i == 0 else ""),
                         Text(fmt_number(run.get("objective"), 6), justify="right",
                              style=rich_style(self.app, "$text-success bold") if i == 0 else ""),
                         Text(fmt_seconds(runtime(run, now)), justify="right"),
                         Text(fmt_params(run.get("params"))), key=run["name"])
        if current is not None and current in {k.value for k in self.rows}:
            self.move_cursor(row=self.get_row_index(current))

    @property
    def current_run(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None


def _blend(low: Color, high: Color, t: float) -> Color:
    return low.blend(high, max(0.0, min(1.0, t)))


class HeatmapView(Widget):
    """The objective over a grid of two parameters: a cell per pair of values, coloured
    from the best (green) to the worst (red) result."""

    DEFAULT_CSS = """
    HeatmapView { height: auto; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heat: Heatmap | None = None
        self.minimize = True

    def show(self, heat: Heatmap | None, minimize: bool) -> None:
        self.heat, self.minimize = heat, minimize
        self.refresh(layout=True)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        return 2 + len(self.heat.ys) + 1 if self.heat else 1

    def render(self) -> Content:
        heat = self.heat
        if heat is None:
            return Content("")
        variables = self.app.theme_variables
        good = Color.parse(variables.get("success", "#4EBF71"))
        bad = Color.parse(variables.get("error", "#B93C5B"))
        mid = Color.parse(variables.get("warning", "#FEA62B"))
        values = {k: fmt_number(v, 4) for k, v in heat.cells.items()}
        xlabels = [fmt_number(x) for x in heat.xs]
        ylabels = [fmt_number(y) for y in heat.ys]
        cell = max([len(v) for v in values.values()] + [len(x) for x in xlabels] + [3]) + 2
        left = max([len(y) for y in ylabels] + [len(heat.y_name)]) + 1
        muted = "$text-muted"
        lines: list[Content] = []
        lines.append(tight((f"{heat.y_name:<{left}}", "bold"), (f"{heat.x_name} →", "bold")))
        lines.append(tight(" " * left, *((f"{x:^{cell}}", muted) for x in xlabels)))
        span = heat.hi - heat.lo
        for yi, ylabel in enumerate(ylabels):
            parts: list[Any] = [tight((f"{ylabel:>{left - 1}} ", muted))]
            for xi in range(len(heat.xs)):
                value = heat.cells.get((yi, xi))
                if value is None:
                    parts.append((f"{'·':^{cell}}", muted))
                    continue
                t = 0.5 if span <= 0 else (value - heat.lo) / span
                if not self.minimize:
                    t = 1 - t
                colour = _blend(good, mid, t * 2) if t < 0.5 else _blend(mid, bad, (t - 0.5) * 2)
                text_colour = "black" if colour.brightness > 0.5 else "white"
                parts.append((f"{values[(yi, xi)]:^{cell}}", f"{text_colour} on {colour.hex}"))
            lines.append(Content.assemble(*parts))
        best = "lowest" if self.minimize else "highest"
        lines.append(tight((f"{'':<{left}}green: {best}   · no result yet", muted)))
        return Content("\n").join(lines)


def run_rows(runs: Mapping[str, Mapping[str, Any]], study: str) -> Sequence[Mapping[str, Any]]:
    return [r for r in runs.values() if r.get("study") == study]
