"""The run screen's parts: what the run is, its metric curves, its log."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.content import Content
from textual.widgets import RichLog, Static

from hypd.display import fmt_exit, fmt_seconds, trial_no
from hypd.tui.model import STATE_STYLE, fmt_number, int_ticks, runtime, where, wide_range
from hypd.tui.widgets.common import tight
from hypd.tui.widgets.plots import PlotGrid, ReplottedPlot

LOG_LINES = 5000


def ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{fmt_seconds(seconds)} ago"


class RunInfo(Static):
    """The run's state, place, times, objective, parameters and latest metrics."""

    DEFAULT_CSS = """
    RunInfo { width: 1fr; height: auto; }
    """

    def show(self, run: Mapping[str, Any], info: Mapping[str, Any] | None, now: float) -> None:
        info = info or {}
        state = run.get("state", "?")
        key = "$text-muted"
        parts: list[Any] = [(state, STATE_STYLE.get(state, "") + " bold"), "\n"]
        if run.get("reason"):
            parts += [(run["reason"], "italic $text-muted"), "\n"]

        def row(label: str, value: str | Content, style: str = "") -> None:
            parts.append((f"{label[:9]:<10}", key))
            parts.append((value, style) if isinstance(value, str) else value)
            parts.append("\n")

        attempts = f"{run.get('attempt', '?')}"
        if info.get("retries") is not None:
            attempts += f"/{info['retries'] + 1}"
        row("trial", f"{trial_no(run['trial']) if 'trial' in run else '?'} · attempt {attempts}")
        row("where", where(run))
        took = fmt_seconds(runtime(run, now))
        if info.get("timeout"):
            took += f" (timeout {fmt_seconds(info['timeout'])})"
        row("runtime", took)
        if run.get("started"):
            row("started", ago(now - run["started"]))
        else:
            row("created", ago(now - run["created"]) if run.get("created") else "-")
        if run.get("ended"):
            # A lost run's time stopped when its host was lost; it may yet come back.
            row("lost" if state == "lost" else "ended", ago(now - run["ended"]))
        if run.get("exit_code") is not None:
            row("exit", fmt_exit(run["exit_code"], run.get("exit_stage")), "$text-error" if run["exit_code"] else "")
        metric = info.get("objective_metric") or "objective"
        goal = info.get("goal")
        row(metric, tight((fmt_number(run.get("objective"), 6), "bold"), (f" ({goal[:3]})" if goal else "", key)))
        params = run.get("params") or {}
        if params:
            parts.append(("parameters\n", "bold"))
            width = max(len(k) for k in params)
            for k, v in params.items():
                parts.append((f"  {k:<{width}}  ", key))
                parts.append(fmt_number(v, 6) + "\n")
        metrics = run.get("metrics") or {}
        parts.append(("metrics", "bold"))
        parts.append((f" · {run.get('reports', 0)} reports\n", key))
        if metrics:
            width = max(len(k) for k in metrics)
            for k, v in metrics.items():
                parts.append((f"  {k:<{width}}  ", key))
                parts.append(fmt_number(v, 6) + "\n")
        else:
            parts.append(("  none yet\n", key))
        if len(info.get("attempts") or []) > 1:
            row("attempts", " ".join(info["attempts"]))
        if run.get("run_dir"):
            row("run_dir", run["run_dir"])
        fetched = info.get("artifacts")
        if fetched and fetched.get("fetching"):
            row("artifacts", f"being copied to {fetched.get('dir', '')}", "italic")
        elif fetched and fetched.get("error"):
            row("artifacts", f"fetch failed: {fetched['error']}", "$text-error")
        elif fetched:
            files = ", ".join(fetched.get("files") or []) or "none matched"
            row("artifacts", f"{fetched.get('dir', '')} ({files})")
        if run.get("last_line"):
            row("last line", run["last_line"], "italic")
        self.update(tight(*parts).rstrip())


def metric_series(reports: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """metric -> (steps, values), finite values only, in the order metrics first appear."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for report in reports:
        step = report.get("step", 0)
        for name, value in (report.get("values") or {}).items():
            xs, ys = out.setdefault(name, ([], []))
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(step)
                ys.append(float(value))
    return out


class MetricPlot(ReplottedPlot):
    """One metric against step."""

    def __init__(self, metric: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric = metric
        self.xs: list[float] = []
        self.ys: list[float] = []

    def set_data(self, xs: list[float], ys: list[float]) -> None:
        self.xs, self.ys = xs, ys
        self.replot()

    def draw(self, plt: Any) -> None:
        last = fmt_number(self.ys[-1], 5) if self.ys else "-"
        plt.title(f"{self.metric}  (last {last})")
        plt.xlabel("step")
        if not self.xs:
            return
        if wide_range(self.ys):
            plt.yscale("log")
        plt.plot(self.xs, self.ys, marker="braille")
        if len(self.xs) == 1:
            plt.scatter(self.xs, self.ys)
        ticks = int_ticks(self.xs, max(2, (self.size.width or 40) // 10))
        if ticks:
            plt.xticks(ticks, [str(t) for t in ticks])


class MetricPlots(PlotGrid):
    """A plot per metric against step."""

    EMPTY = "no metrics reported yet"

    async def show(self, reports: Sequence[Mapping[str, Any]]) -> None:
        series = metric_series(reports)
        plots = {p.metric: p for p in self.plots if isinstance(p, MetricPlot)}
        new = [MetricPlot(m) for m in series if m not in plots]
        if new:
            await self.mount_all(new)
            plots.update({p.metric: p for p in new})
        self.show_empty(not series)
        for name, (xs, ys) in series.items():
            plots[name].set_data(xs, ys)
        self._arrange()


class LogView(RichLog):
    """The run's log; it follows new lines while `auto_scroll` is on."""

    HELP_TITLE = "Log"

    DEFAULT_CSS = """
    LogView { height: 1fr; background: $surface; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=LOG_LINES, wrap=False, highlight=False, markup=False, auto_scroll=True,
                         **kwargs)
        self.text_lines: list[str] = []  # what was written, for tests and `copy`

    def add_lines(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        lines = list(lines)[-LOG_LINES:]
        self.text_lines.extend(lines)
        del self.text_lines[:-LOG_LINES]
        for line in lines:
            text = Text(line.expandtabs(), no_wrap=True)
            if line.lstrip().startswith("METRICS:"):
                text.stylize("dim")
            self.write(text)
