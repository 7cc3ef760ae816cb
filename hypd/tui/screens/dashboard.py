"""The main screen: hosts and GPUs, studies, and the live runs table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input

from hypd.tui.model import STATES, RunFilter, run_study
from hypd.tui.widgets.common import ConnectionBanner
from hypd.tui.widgets.hosts import HostsPanel
from hypd.tui.widgets.runs import COLUMNS, RunTable
from hypd.tui.widgets.studies import StudiesTable

NARROW_BELOW = 120
STATE_CYCLE: tuple[str | None, ...] = (None, *STATES)


class DashboardScreen(Screen[None]):
    HELP_TITLE = "Dashboard"
    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="open the highlighted run, or study (in the studies table)"),
        Binding("l", "logs", "Logs", tooltip="the highlighted run's log, full screen"),
        Binding("k", "kill", "Kill", tooltip="kill the highlighted run (the study, in the studies table); asks first"),
        Binding("r", "retry", "Retry", tooltip="a new attempt of the highlighted run's trial (a study's failed runs)"),
        Binding("p", "pause", "Pause", tooltip="pause or resume the highlighted study: nothing new starts"),
        Binding("e", "study_op('extend')", "Extend", show=False,
                tooltip="more trials for the highlighted study (asks how many)"),
        Binding("a", "study_op('archive')", "Archive", show=False,
                tooltip="hide the highlighted study (asks first; none of its runs going)"),
        Binding("x", "study_op('remove')", "Remove", show=False,
                tooltip="remove the highlighted study and its runs (asks first; none of its runs going)"),
        Binding("s", "cycle_state", "State", tooltip="show only runs in one state: pending, running, ... (again: next)"),
        Binding("f", "filter_study", "Study", show=False,
                tooltip="show only the highlighted study's runs (again: every study)"),
        Binding("slash", "search", "Search", tooltip="show only runs whose name, parameters, host or last line match"),
        Binding("o", "cycle_sort", "Sort", show=False, tooltip="sort the runs by the next column"),
        Binding("O", "reverse_sort", "Reverse sort", show=False, tooltip="reverse the runs' order"),
        Binding("h", "toggle_hosts", "Hosts/studies", show=False,
                tooltip="on a narrow terminal: show the hosts instead of the studies, or back"),
        Binding("escape", "clear_filters", "Clear filters", show=False, tooltip="show every run again"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        with Horizontal(id="overview"):
            with VerticalScroll(id="hosts-box", classes="box"):
                yield HostsPanel(id="hosts")
            with Vertical(id="studies-box", classes="box"):
                yield StudiesTable(id="studies")
        with Vertical(id="runs-box", classes="box"):
            yield RunTable(id="runs")
            yield Input(placeholder="search runs: name, parameter, metric, host, log line", id="search")
        yield Footer()

    @property
    def table(self) -> RunTable:
        return self.query_one("#runs", RunTable)

    @property
    def studies_table(self) -> StudiesTable:
        return self.query_one("#studies", StudiesTable)

    def on_mount(self) -> None:
        app: Any = self.app
        self.query_one("#hosts-box").border_title = "Hosts"
        self.query_one("#studies-box").border_title = "Studies"
        app.runs_changed.subscribe(self, self._runs_changed)
        app.reloaded.subscribe(self, lambda _: self._reload())
        app.hosts_changed.subscribe(self, lambda _: self._titles())
        app.studies_changed.subscribe(self, lambda _: self.call_after_refresh(self._fit_overview))
        self._reload()
        self.table.focus()
        self.set_interval(1.0, self._tick)

    def _reload(self) -> None:
        self.table.replace_all(self.app.runs.values())  # type: ignore[attr-defined]
        self._titles()

    def _runs_changed(self, rows: list[dict[str, Any]]) -> None:
        self.table.upsert(rows)
        self._titles()

    def _tick(self) -> None:
        """Running runs' TIME column counts up: repaint the table if one is on screen."""
        table = self.table
        top = int(table.scroll_y)
        shown = table.view[top: top + table.size.height]
        if any(table.rows[n].get("state") == "running" for n in shown):
            table.refresh()

    def _titles(self) -> None:
        table = self.table
        app: Any = self.app
        box = self.query_one("#runs-box")
        total = len(table.rows)
        shown = len(table.view)
        running = sum(1 for r in table.rows.values() if r.get("state") == "running")
        count = f"{shown:,} of {total:,}" if table.run_filter.active else f"{total:,}"
        box.border_title = f"Runs {count} · {running} running"
        sort = next(c.label for c in COLUMNS if c.key == table.sort_column).lower()
        box.border_subtitle = (f"{table.run_filter.describe()} · o sort: {sort} {'▼' if table.sort_reverse else '▲'}")
        hosts_box = self.query_one("#hosts-box")
        gpus = sum(len(h.get("gpus") or []) for h in app.hosts.values())
        down = sum(1 for h in app.hosts.values() if h.get("state") == "down")
        hosts_box.border_title = f"Hosts {len(app.hosts)}{f' ({down} down)' if down else ''} · GPUs {gpus}"
        self._fit_overview()

    def _fit_overview(self) -> None:
        """Both overview boxes as tall as the taller content needs, within a share of the screen."""
        if not self.is_mounted:
            return
        narrow = self.has_class("-narrow")
        hosts = self.query_one("#hosts", HostsPanel).get_content_height(None, None, 0)
        studies = self.studies_table.row_count + 1
        if narrow:
            content = hosts if self.has_class("-hosts") else studies
        else:
            content = max(hosts, studies)
        cap = max(5, int(self.size.height * (0.4 if narrow else 0.45)))
        self.query_one("#overview").styles.height = min(cap, content + 2)

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW_BELOW
        self.set_class(narrow, "-narrow")
        self.query_one(Footer).compact = narrow
        self.query_one("#studies-box").border_subtitle = "h hosts" if narrow else ""
        self.query_one("#hosts-box").border_subtitle = "h studies" if narrow else ""
        self._fit_overview()

    # ------------------------------------------------------------ selection

    def _selected_run(self) -> str | None:
        return self.table.current

    def _focused_study(self) -> str | None:
        """The study the keys act on: the studies table's row when it has focus."""
        if self.studies_table.has_focus:
            return self.studies_table.current_study
        return None

    def _target(self) -> str | None:
        study = self._focused_study()
        if study is not None:
            return study
        return self._selected_run()

    @on(RunTable.Selected)
    def _run_selected(self, event: RunTable.Selected) -> None:
        self.app.open_run(event.name)  # type: ignore[attr-defined]

    @on(DataTable.RowSelected, "#studies")
    def _study_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_study(event.row_key.value)  # type: ignore[attr-defined]

    def action_open(self) -> None:
        study = self._focused_study()
        if study is not None:
            self.app.open_study(study)  # type: ignore[attr-defined]
        elif self._selected_run():
            self.app.open_run(self._selected_run())  # type: ignore[attr-defined]

    def action_logs(self) -> None:
        name = self._selected_run()
        if name:
            self.app.open_run(name, log=True)  # type: ignore[attr-defined]

    def action_kill(self) -> None:
        target = self._target()
        if target:
            self.app.kill(target)  # type: ignore[attr-defined]

    def action_retry(self) -> None:
        target = self._target()
        if target:
            self.app.retry(target)  # type: ignore[attr-defined]

    def _highlighted_study(self) -> str | None:
        """The studies table's row when it has focus, else the highlighted run's study."""
        return self._focused_study() or run_study(self._selected_run() or "") or None

    def action_pause(self) -> None:
        study = self._highlighted_study()
        if study:
            self.app.toggle_pause(study)  # type: ignore[attr-defined]

    def action_study_op(self, op: str) -> None:
        """e, a, x: extend, archive or remove the highlighted study (HypdApp.extend, ...)."""
        app: Any = self.app
        study = self._highlighted_study()
        if study:
            {"extend": app.extend, "archive": app.archive, "remove": app.remove}[op](study)

    # ------------------------------------------------------------ filter, sort, search

    def set_filter(self, **changes: Any) -> None:
        current = self.table.run_filter
        values = {"state": current.state, "study": current.study, "text": current.text, **changes}
        self.table.set_filter(RunFilter(**values))
        self._titles()

    def action_cycle_state(self) -> None:
        index = STATE_CYCLE.index(self.table.run_filter.state)
        self.set_filter(state=STATE_CYCLE[(index + 1) % len(STATE_CYCLE)])

    def action_filter_study(self) -> None:
        """Show only the highlighted study's runs; again to show every study."""
        if self.table.run_filter.study is not None:
            self.set_filter(study=None)
            return
        study = self._highlighted_study()
        if study:
            self.set_filter(study=study)

    def action_cycle_sort(self) -> None:
        keys = [c.key for c in COLUMNS]
        column = keys[(keys.index(self.table.sort_column) + 1) % len(keys)]
        self.table.sort_by(column)
        self._titles()

    def action_reverse_sort(self) -> None:
        self.table.sort_by(self.table.sort_column, not self.table.sort_reverse)
        self._titles()

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.add_class("-shown")
        search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.set_filter(text=event.value.strip())

    @on(Input.Submitted, "#search")
    def _search_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.remove_class("-shown")
        self.table.focus()

    def action_clear_filters(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_focus or search.value:
            search.value = ""
            search.remove_class("-shown")
            self.table.focus()
        self.set_filter(state=None, study=None, text="")

    def action_toggle_hosts(self) -> None:
        self.toggle_class("-hosts")
        self._fit_overview()

    # ------------------------------------------------------------ command palette

    def commands(self) -> Iterable[SystemCommand]:
        run = self._selected_run()
        if run:
            yield SystemCommand(f"Open run {run}", "parameters, metric curves and its log", self.action_open)
            yield SystemCommand(f"Kill run {run}", "after a confirmation", lambda: self.app.kill(run))  # type: ignore[attr-defined]
            yield SystemCommand(f"Retry run {run}", "a new attempt of its trial", lambda: self.app.retry(run))  # type: ignore[attr-defined]
        for study in sorted(self.app.studies):  # type: ignore[attr-defined]
            yield SystemCommand(f"Show only runs of study {study}", "filter the runs table",
                                lambda s=study: self.set_filter(study=s))
            yield SystemCommand(f"Pause or resume study {study}", "nothing new starts while paused",
                                lambda s=study: self.app.toggle_pause(s))  # type: ignore[attr-defined]
            yield SystemCommand(f"Kill study {study}", "kill its runs and pause it, after a confirmation",
                                lambda s=study: self.app.kill(s))  # type: ignore[attr-defined]
            yield SystemCommand(f"Retry failed runs of study {study}", "after a confirmation",
                                lambda s=study: self.app.retry(s))  # type: ignore[attr-defined]
        for state in STATES:
            yield SystemCommand(f"Show only {state} runs", "filter the runs table by state",
                                lambda s=state: self.set_filter(state=s))
        yield SystemCommand("Show all runs", "clear the state, study and search filters", self.action_clear_filters)
        for column in COLUMNS:
            for reverse, word in ((False, "ascending"), (True, "descending")):
                yield SystemCommand(f"Sort runs by {column.label.lower()} ({word})", "order the runs table",
                                    lambda c=column.key, r=reverse: (self.table.sort_by(c, r), self._titles()))
        yield SystemCommand("Toggle hosts / studies panel", "on narrow terminals one shows at a time",
                            self.action_toggle_hosts)
