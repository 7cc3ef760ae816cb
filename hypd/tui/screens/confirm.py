"""A yes/no question before anything that cannot be undone (kill, retry, archive or remove a
study), and a question for a number (how many trials to add to a study)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label

Answer = TypeVar("Answer")


class Dialog(ModalScreen[Answer], Generic[Answer]):
    """A prompt, a detail line, what the subclass asks for, and no / yes buttons."""

    KEYS = ("n", "y")  # shown on the no / yes buttons
    YES_VARIANT = "error"

    def __init__(self, prompt: str | Content, detail: str | Content = "", *, yes: str = "Yes",
                 no: str = "Cancel") -> None:
        super().__init__()
        self.prompt = prompt
        self.detail = detail
        self.yes = yes
        self.no = no

    def fields(self) -> Iterable[Widget]:
        return ()

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.prompt, id="prompt")
            if self.detail:
                yield Label(self.detail, id="detail")
            yield from self.fields()
            with Horizontal(id="buttons"):
                yield Button(f"{self.no} ({self.KEYS[0]})", id="no")
                yield Button(f"{self.yes} ({self.KEYS[1]})", variant=self.YES_VARIANT, id="yes")  # type: ignore[arg-type]


class ConfirmScreen(Dialog[bool]):
    """Dismissed with True (y, or the yes button) or False (n, escape, the no button)."""

    HELP_TITLE = "Confirm"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
        Binding("left,right", "app.focus_next", "Switch", show=False),
    ]

    def on_mount(self) -> None:
        self.query_one("#dialog").border_title = "Confirm"
        self.query_one("#no", Button).focus()

    @on(Button.Pressed, "#yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class NumberScreen(Dialog[int | None]):
    """Dismissed with the whole number typed (enter, or the yes button; at least 1), or
    None (escape, the no button)."""

    HELP_TITLE = "Ask"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    KEYS = ("esc", "enter")
    YES_VARIANT = "primary"

    def __init__(self, prompt: str | Content, detail: str | Content = "", *, value: int, yes: str = "OK") -> None:
        super().__init__(prompt, detail, yes=yes)
        self.value = value

    def fields(self) -> Iterable[Widget]:
        yield Input(str(self.value), type="integer", id="number")

    def on_mount(self) -> None:
        self.query_one("#dialog").border_title = self.yes
        number = self.query_one("#number", Input)
        number.focus()
        number.select_all()  # typing replaces the offered number

    @on(Input.Submitted, "#number")
    @on(Button.Pressed, "#yes")
    def _submit(self) -> None:
        text = self.query_one("#number", Input).value.strip()
        if not text.isdigit() or int(text) < 1:
            self.notify("a whole number, at least 1", severity="warning")
            return
        self.dismiss(int(text))

    @on(Button.Pressed, "#no")
    def action_cancel(self) -> None:
        self.dismiss(None)
