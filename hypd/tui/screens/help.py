"""`?`: every key of the screen it was opened on, read from that screen's bindings (the
screen's own, the focused widget's, the app's), so it cannot drift from what the keys do.
Keys the footer does not show are marked: they work all the same."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from hypd.tui.model import HelpRow, help_rows
from hypd.tui.widgets.common import tight

EVERYWHERE = "Everywhere"


def section_of(node: Any, screen: Screen[Any]) -> str:
    """Whose keys these are, as the help screen heads them."""
    if node is screen:
        return str(getattr(screen, "HELP_TITLE", type(screen).__name__))
    if node is screen.app:
        return EVERYWHERE
    return str(getattr(node, "HELP_TITLE", type(node).__name__))


def screen_keys(screen: Screen[Any]) -> list[HelpRow]:
    """The keys that work on `screen` now: its own first, then the focused widget's, then
    the app's; a key the focused widget takes is listed under it."""
    own = {b.action for b in Binding.make_bindings(type(screen).BINDINGS)}
    entries: list[tuple[tuple[int, int], tuple[str, str, str, str, str, bool]]] = []
    for active in screen.active_bindings.values():
        binding: Binding = active.binding
        if not binding.description or binding.system:
            continue
        node = active.node
        section = 0 if node is screen else 2 if node is screen.app else 1
        # The screen's own keys before those every Textual screen has (tab, copy).
        rank = (section, 0 if node is not screen or binding.action in own else 1)
        entries.append((rank, (section_of(node, screen), screen.app.get_key_display(binding), binding.action,
                               binding.description, binding.tooltip, binding.show)))
    entries.sort(key=lambda e: e[0])  # stable: each section keeps its bindings' order
    return help_rows(e for _, e in entries)


class HelpScreen(ModalScreen[None]):
    """The keys of the screen below, in sections."""

    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "Close")]

    def __init__(self, title: str, rows: list[HelpRow]) -> None:
        super().__init__()
        self.help_title = title
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog"):
            with VerticalScroll(id="help-keys"):
                with Grid(id="help-grid"):
                    section = None
                    for row in self.rows:
                        if row.section != section:
                            section = row.section
                            yield Static(tight((section, "bold $text-accent")), classes="help-section")
                        mark = " " if row.in_footer else "·"
                        yield Static(tight(f"{mark} ", (row.keys, "bold")), classes="help-key")
                        yield Static(row.text, classes="help-text" + ("" if row.in_footer else " -hidden"))
            yield Static(Content.from_markup("[$text-muted]· not in the footer, works all the same   "
                                             "esc or ? closes[/]"), id="help-note")

    def on_mount(self) -> None:
        self.query_one("#help-dialog").border_title = f"Keys · {self.help_title}"
