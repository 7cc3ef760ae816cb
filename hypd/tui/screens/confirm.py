"""A yes/no question before anything that cannot be undone (kill, retry, archive or remove a
study), and a question for a number (how many trials to add to a study)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class ConfirmScreen(ModalScreen[bool]):
    """Dismissed with True (y, or the yes button) or False (n, escape, the no button)."""

    HELP_TITLE = "Confirm"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
        Binding("left,right", "app.focus_next", "Switch", show=False),
    ]

    def __init__(self, prompt: str | Content, detail: str | Content = "", *, yes: str = "Yes",
                 no: str = "Cancel") -> None:
        super().__init__()
        self.prompt = prompt
        self.detail = detail
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.prompt, id="prompt")
            if self.detail:
                yield Label(self.detail, id="detail")
            with Horizontal(id="buttons"):
                yield Button(f"{self.no} (n)", id="no")
                yield Button(f"{self.yes} (y)", variant="error", id="yes")

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


class NumberScreen(ModalScreen[int | None]):
    """Dismissed with the whole number typed (enter, or the yes button; at least 1), or
    None (escape, the no button)."""

    HELP_TITLE = "Ask"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str | Content, detail: str | Content = "", *, value: int, yes: str = "OK",
                 no: str = "Cancel") -> None:
        super().__init__()
        self.prompt = prompt
        self.detail = detail
        self.value = value
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.prompt, id="prompt")
            if self.detail:
                yield Label(self.detail, id="detail")
            yield Input(str(self.value), type="integer", id="number")
            with Horizontal(id="buttons"):
                yield Button(f"{self.no} (esc)", id="no")
                yield Button(f"{self.yes} (enter)", variant="primary", id="yes")

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
