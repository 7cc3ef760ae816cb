"""The runs table's content, apart from the widget that draws it: every run known, its
cells as text and its search text, and the names shown (filtered, then sorted). Work is on
lists of run names, so filtering and sorting ten thousand runs stay quick."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hypd.tui.model import RunFilter, fmt_number, fmt_params, haystack, sorted_names, where


def cells_of(run: Mapping[str, Any]) -> dict[str, str]:
    """A run's cells as the table shows them (TIME is the widget's: it moves with the clock)."""
    return {
        "run": run.get("name", "?"),
        "state": run.get("state", "?"),
        "where": where(run),
        "objective": fmt_number(run.get("objective")),
        "params": fmt_params(run.get("params")),
        "metrics": fmt_params(run.get("metrics")),
    }


class RunRows:
    def __init__(self) -> None:
        self.rows: dict[str, Mapping[str, Any]] = {}
        self.cells: dict[str, dict[str, str]] = {}
        self.hay: dict[str, str] = {}
        self.versions: dict[str, int] = {}  # run -> how often it changed (its drawn line is cached by it)
        self.view: list[str] = []
        self.position: dict[str, int] = {}
        self.run_filter = RunFilter()
        self.sort_column = "run"
        self.sort_reverse = True
        self.content_width: dict[str, int] = {}  # column -> its widest text so far

    def clear(self) -> None:
        self.rows, self.cells, self.hay = {}, {}, {}
        self.view, self.position = [], {}  # (runs no longer there must not be sorted again)
        self.content_width = {"time": 6}

    def put(self, runs: Iterable[Mapping[str, Any]]) -> tuple[str, bool]:
        """Add or update runs. Says what the view needs ("rebuild": which runs are shown
        changed; "resort": an order may have changed; "": a repaint), and whether a
        column's text got wider."""
        resort = membership = wider = False
        for run in runs:
            name = run["name"]
            old = self.rows.get(name)
            cells = cells_of(run)
            self.rows[name] = run
            self.cells[name] = cells
            self.versions[name] = self.versions.get(name, 0) + 1
            self.hay[name] = haystack(run)
            wider = self._measure(cells) or wider
            was_in = name in self.position
            now_in = self.run_filter.matches(run, self.hay[name])
            if was_in != now_in:
                membership = True
            elif now_in and (old is None or self._sort_changed(old, run)):
                resort = True
        return ("rebuild" if membership else "resort" if resort else ""), wider

    def _measure(self, cells: Mapping[str, str]) -> bool:
        wider = False
        for key, text in cells.items():
            if len(text) > self.content_width.get(key, 0):
                self.content_width[key] = len(text)
                wider = True
        return wider

    def _sort_changed(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        key = self.sort_column
        if key == "time":
            return (old.get("started"), old.get("ended")) != (new.get("started"), new.get("ended"))
        if key == "run":
            return False
        field = {"where": "host"}.get(key, key)
        return old.get(field) != new.get(field) or (key == "where" and old.get("gpus") != new.get("gpus"))

    def matching(self) -> list[str]:
        """The runs the filter lets through, in no order yet."""
        return [n for n, run in self.rows.items() if self.run_filter.matches(run, self.hay[n])]

    def arrange(self, names: list[str], now: float) -> None:
        """Show these runs, sorted by the sort column."""
        self.view = sorted_names(self.rows, names, self.sort_column, self.sort_reverse, now)
        self.position = {n: i for i, n in enumerate(self.view)}
