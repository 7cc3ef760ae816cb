"""The runs table: a virtual table (Textual's line API) over the app's run cache.

Only the lines on screen are rendered, rows are updated in place as run events come, and
filtering and sorting work on a list of run names, so ten thousand runs stay smooth. (A
DataTable measures every cell of every added row and removes rows in O(n), which makes
re-filtering 10,000 runs take seconds.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from hypd.display import fmt_seconds
from hypd.tui.model import STATES, RunFilter, runtime
from hypd.tui.runrows import RunRows
from hypd.tui.widgets.common import tight_segments


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    least: int  # narrowest it may be
    most: int  # widest a fixed column grows to; flexible columns share what is left
    flex: int = 0
    right: bool = False
    drop: int = 0  # dropped (highest first) when the table is too narrow for every column


COLUMNS: tuple[Column, ...] = (
    Column("run", "RUN", 6, 26),
    Column("state", "STATE", 9, 9),
    Column("where", "WHERE", 5, 16, drop=1),
    Column("time", "TIME", 5, 7, right=True),
    Column("objective", "OBJECTIVE", 9, 11, right=True),
    Column("params", "PARAMS", 12, 0, flex=3),
    Column("metrics", "METRICS", 10, 0, flex=2, drop=2),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
GAP = 1


def fit(text: str, width: int, right: bool = False) -> str:
    """text cut (with an ellipsis) or padded to exactly width cells."""
    if width <= 0:
        return ""
    length = cell_len(text)
    if length > width:
        return set_cell_size(text, width - 1) + "…"
    pad = " " * (width - length)
    return pad + text if right else text + pad


def layout(width: int, content: Mapping[str, int], sort: str = "") -> list[tuple[Column, int]]:
    """The columns shown at this width, and each one's width (the sorted column's label has
    an arrow)."""
    columns = list(COLUMNS)

    def label(c: Column) -> int:
        return len(c.label) + (2 if c.key == sort else 0)

    while True:
        fixed = [c for c in columns if not c.flex]
        flex = [c for c in columns if c.flex]
        widths = {c.key: max(c.least, min(c.most, max(label(c), content.get(c.key, 0)))) for c in fixed}
        gaps = GAP * (len(columns) - 1) + 1  # and one cell of margin on the left
        spare = width - sum(widths.values()) - gaps
        if spare >= sum(c.least for c in flex) or not any(c.drop for c in columns):
            break
        columns.remove(max((c for c in columns if c.drop), key=lambda c: c.drop))
    if flex:
        # Each flexible column gets what its content needs, up to a fair share; what is left
        # goes to those that wanted more, and the last one takes any rest.
        left = max(0, spare)
        shares = sum(c.flex for c in flex)
        want = {c.key: max(c.least, content.get(c.key, 0), label(c)) for c in flex}
        for c in flex:
            widths[c.key] = max(c.least, min(want[c.key], left * c.flex // shares))
        rest = left - sum(widths[c.key] for c in flex)
        for c in flex:
            if rest <= 0:
                break
            extra = min(rest, want[c.key] - widths[c.key])
            if extra > 0:
                widths[c.key] += extra
                rest -= extra
        if rest > 0:
            widths[flex[-1].key] += rest
        elif rest < 0:
            widths[flex[0].key] = max(1, widths[flex[0].key] + rest)
    return [(c, widths[c.key]) for c in columns]


class RunTable(ScrollView, can_focus=True):
    """Runs, one per line: filter with `filter`, sort with `sort_by`, feed with `upsert`."""

    HELP_TITLE = "Runs table"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "Open"),
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "run-table--header", "run-table--cursor", "run-table--cursor-blurred", "run-table--dim",
        *(f"run-table--{s}" for s in STATES),
    }

    DEFAULT_CSS = """
    RunTable {
        overflow-x: hidden;
        overflow-y: auto;
        height: 1fr;
        & > .run-table--header { text-style: bold; color: $text-accent; }
        & > .run-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
        & > .run-table--cursor-blurred { background: $block-cursor-blurred-background; }
        & > .run-table--dim { color: $text-muted; }
        & > .run-table--pending { color: $text-muted; }
        & > .run-table--running { color: $text-primary; text-style: bold; }
        & > .run-table--queued { color: $text-accent; }
        & > .run-table--completed { color: $text-success; }
        & > .run-table--failed { color: $text-error; text-style: bold; }
        & > .run-table--killed { color: $text-warning; }
        & > .run-table--stopped { color: $text-secondary; }
        & > .run-table--lost { color: $text-warning; text-style: bold; }
    }
    """

    class Highlighted(Message):
        def __init__(self, table: RunTable, name: str | None) -> None:
            super().__init__()
            self.table = table
            self.name = name

    class Selected(Message):
        def __init__(self, table: RunTable, name: str) -> None:
            super().__init__()
            self.table = table
            self.name = name

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    def __init__(self, *, clock: Any = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._clock = clock
        self.content = RunRows()
        self.current: str | None = None
        self._columns_cache: tuple[int, list[tuple[Column, int]]] | None = None
        self._strips: LRUCache[tuple[Any, ...], Strip] = LRUCache(1000)
        self._styles: dict[str, Style] = {}
        self._layout_version = 0

    # What it shows, for the screens that read it.
    @property
    def rows(self) -> dict[str, Mapping[str, Any]]:
        return self.content.rows

    @property
    def view(self) -> list[str]:
        return self.content.view

    @property
    def run_filter(self) -> RunFilter:
        return self.content.run_filter

    @property
    def sort_column(self) -> str:
        return self.content.sort_column

    @property
    def sort_reverse(self) -> bool:
        return self.content.sort_reverse

    # ------------------------------------------------------------ data

    def now(self) -> float:
        return self._clock() if self._clock else self.app.clock()  # type: ignore[attr-defined]

    def replace_all(self, runs: Iterable[Mapping[str, Any]]) -> None:
        """Show exactly these runs (after a reload)."""
        self.content.clear()
        self._columns_cache = None
        self.upsert(runs)
        self._rebuild()

    def upsert(self, runs: Iterable[Mapping[str, Any]]) -> None:
        """Add or update runs in place; re-sorts only if an order may have changed."""
        change, wider = self.content.put(runs)
        if wider:
            self._columns_cache = None
        if change == "rebuild":
            self._rebuild()
        elif change == "resort":
            self._resort()
        else:
            self.refresh()

    def _rebuild(self) -> None:
        self._set_view(self.content.matching())

    def _resort(self) -> None:
        self._set_view(self.view)

    def _set_view(self, names: list[str]) -> None:
        self.content.arrange(names, self.now())
        self.virtual_size = Size(self.size.width, len(self.view) + 1)
        if self.current is not None and self.current in self.content.position:
            index = self.content.position[self.current]
        else:
            index = min(self.cursor, max(0, len(self.view) - 1))
        self._move(index, scroll=self.current is not None)
        self.refresh()

    def set_filter(self, run_filter: RunFilter) -> None:
        if run_filter != self.run_filter:
            self.content.run_filter = run_filter
            self._rebuild()

    def sort_by(self, column: str, reverse: bool | None = None) -> None:
        if column not in COLUMN_KEYS:
            raise ValueError(f"no column {column!r}")
        if reverse is None:
            reverse = (not self.sort_reverse) if column == self.sort_column else column in ("time", "run")
        self.content.sort_column, self.content.sort_reverse = column, reverse
        self._columns_cache = None
        self._resort()

    # ------------------------------------------------------------ cursor

    def _move(self, index: int, scroll: bool = True) -> None:
        if not self.view:
            index = 0
        else:
            index = max(0, min(index, len(self.view) - 1))
        self.cursor = index
        name = self.view[index] if self.view else None
        if name != self.current:
            self.current = name
            self.post_message(self.Highlighted(self, name))
        if scroll and self.view:
            self._scroll_to_cursor()
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)

    def select(self, name: str) -> bool:
        """Put the cursor on a run; False if it is not shown."""
        index = self.content.position.get(name)
        if index is None:
            return False
        self._move(index)
        return True

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move(self.cursor + direction * max(1, self.scrollable_content_region.height - 2))

    def action_jump(self, index: int) -> None:
        self._move(index if index >= 0 else len(self.view) - 1)

    def action_select(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self, self.current))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = 1
            for column, width in self._layout():
                if x <= offset.x < x + width + GAP:
                    self.sort_by(column.key)
                    return
                x += width + GAP
            return
        index = int(self.scroll_y) + offset.y - 1
        if 0 <= index < len(self.view):
            self._move(index, scroll=False)
            if event.chain >= 2:
                self.action_select()

    def on_resize(self) -> None:
        self._columns_cache = None
        self.virtual_size = Size(self.size.width, len(self.view) + 1)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._styles = {}

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------ rendering

    def _layout(self) -> list[tuple[Column, int]]:
        width = self.scrollable_content_region.width
        if self._columns_cache is None or self._columns_cache[0] != width:
            self._columns_cache = (width, layout(width, self.content.content_width, self.sort_column))
            self._layout_version += 1
        return self._columns_cache[1]

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(name, partial=True)
        return style

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        columns = self._layout()
        if y == 0:
            header = base + self._style("run-table--header")
            parts = [Segment(" ", base)]
            for column, w in columns:
                label = column.label
                if column.key == self.sort_column:
                    label += " ▼" if self.sort_reverse else " ▲"
                parts.append(Segment(fit(label, w, column.right), header))
                parts.append(Segment(" " * GAP, base))
            return Strip(tight_segments(parts)).adjust_cell_length(width, base)
        index = int(self.scroll_y) + y - 1
        if index >= len(self.view):
            return Strip.blank(width, base)
        name = self.view[index]
        run = self.content.rows[name]
        cells = self.content.cells[name]
        on_cursor = index == self.cursor
        time_text = fmt_seconds(runtime(run, self.now()))
        key = (name, self.content.versions.get(name, 0), width, on_cursor and (1 + self.has_focus), time_text,
               self._layout_version, base)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._render_row(run, cells, columns, width, base, on_cursor, time_text)
            self._strips[key] = strip
        return strip

    def _render_row(self, run: Mapping[str, Any], cells: Mapping[str, str], columns: list[tuple[Column, int]],
                    width: int, base: Style, on_cursor: bool, time_text: str) -> Strip:
        line = base
        if on_cursor:
            line = base + self._style("run-table--cursor" if self.has_focus else "run-table--cursor-blurred")
        dim = self._style("run-table--dim")
        parts = [Segment(" ", line)]
        for column, w in columns:
            key = column.key
            if key == "time":
                text = time_text
            else:
                text = cells[key]
            style = line
            if key == "state":
                style = base + self._style(f"run-table--{text}") if not on_cursor else line + Style(bold=True)
            elif text == "-" and not on_cursor:
                style = base + dim
            parts.append(Segment(fit(text, w, column.right), style))
            parts.append(Segment(" " * GAP, line))
        return Strip(tight_segments(parts)).adjust_cell_length(width, line)
