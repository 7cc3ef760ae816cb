"""The studies panel: each study's progress (a bar of the trials done, then those running,
out of its budget; the failed and pending are counted in their own columns), best result so
far, algorithm, and whether it is paused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from hypd.tui.model import fmt_number, progress_cells, study_done, study_state, study_total
from hypd.tui.widgets.common import rich_style

STUDY_STATE_STYLE = {"active": "$text-primary", "paused": "$text-warning bold", "finished": "$text-success",
                     "broken": "$text-error bold", "loading": "$text-muted"}

# (key, label); the narrow set fits 80 columns.
WIDE = (("study", "STUDY"), ("state", "STATE"), ("progress", "PROGRESS"), ("running", "RUN"),
        ("pending", "PEND"), ("failed", "FAIL"), ("best", "BEST"), ("algorithm", "ALGO"))
NARROW = (("study", "STUDY"), ("state", "STATE"), ("progress", "PROGRESS"), ("best", "BEST"))
WIDE_FROM = 90
BAR = 10


class StudiesTable(DataTable):
    """One row per study, updated in place from the app's `studies_changed` signal."""

    HELP_TITLE = "Studies table"

    DEFAULT_CSS = """
    StudiesTable { height: auto; max-height: 100%; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._columns: tuple[tuple[str, str], ...] = ()

    def on_mount(self) -> None:
        self.app.studies_changed.subscribe(self, self.show)  # type: ignore[attr-defined]
        self._set_columns()
        self.show_cursor = False

    def on_focus(self) -> None:
        self.show_cursor = True

    def on_blur(self) -> None:
        self.show_cursor = False

    def on_resize(self) -> None:
        self._set_columns()

    def _set_columns(self) -> None:
        wanted = WIDE if self.size.width >= WIDE_FROM else NARROW
        if wanted == self._columns:
            return
        current = self.current_study
        self._columns = wanted
        self.clear(columns=True)
        for key, label in wanted:
            self.add_column(label, key=key)
        self.show(None)
        if current:
            self.select(current)

    @property
    def current_study(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def select(self, name: str) -> None:
        try:
            self.move_cursor(row=self.get_row_index(name))
        except RowDoesNotExist:
            pass

    def show(self, changed: Iterable[Mapping[str, Any]] | None) -> None:
        """Update the rows of the changed studies (all of them if None)."""
        studies: dict[str, dict[str, Any]] = self.app.studies  # type: ignore[attr-defined]
        names = sorted(studies) if changed is None else [s["name"] for s in changed]
        for key in [k.value for k in list(self.rows) if k.value not in studies]:
            self.remove_row(key)
        for name in names:
            summary = studies.get(name)
            if summary is None:
                continue
            cells = self._cells(summary)
            if name in {k.value for k in self.rows}:
                for key, _ in self._columns:
                    self.update_cell(name, key, cells[key], update_width=True)
            else:
                self.add_row(*(cells[key] for key, _ in self._columns), key=name)

    def _cells(self, s: Mapping[str, Any]) -> dict[str, Text]:
        app = self.app
        state = study_state(s)
        counts = s.get("outcomes") or {}  # trials, not attempts: a retried trial counts once
        done, total = study_done(s), study_total(s)
        failed = counts.get("failed", 0) + counts.get("lost", 0)
        done_cells, running_cells = progress_cells(s, BAR)
        # Done trials fill it, running ones are shaded after them, the rest is an empty track.
        progress = Text.assemble(("█" * done_cells, rich_style(app, "$success")),
                                 ("▒" * running_cells, rich_style(app, "$primary")),
                                 ("░" * (BAR - done_cells - running_cells) + " ", rich_style(app, "$surface-lighten-2")))
        progress.append(f"{done}/{total}" if total else f"{done}")
        if s.get("best_run"):
            # "loss 0.01133 #8": the metric, its best value, the run (the spaces end the
            # piece before them, see widgets.common.tight).
            muted = rich_style(app, "$text-muted")
            best = Text.assemble((f"{s.get('metric', '')} ", muted), (f"{fmt_number(s.get('best'))} ", "bold"),
                                 (f"#{s['best_run'].rpartition(':')[2]}", muted))
        else:
            best = Text("-", style=rich_style(app, "$text-muted"))
        if "counts" not in s:
            best = Text(str(s.get("error", ""))[:60], style=rich_style(app, "$text-error"))

        def number(n: int, spec: str) -> Text:
            return Text(str(n), style=rich_style(app, spec) if n else rich_style(app, "$text-muted"), justify="right")

        return {
            "study": Text(s["name"], style="bold"),
            "state": Text(state, style=rich_style(app, STUDY_STATE_STYLE.get(state, ""))),
            "progress": progress,
            "running": number(counts.get("running", 0), "$text-primary"),
            "pending": number(counts.get("pending", 0), ""),
            "failed": number(failed, "$text-error"),
            "best": best,
            "algorithm": Text(str(s.get("algorithm", "-")), style=rich_style(app, "$text-muted")),
        }
