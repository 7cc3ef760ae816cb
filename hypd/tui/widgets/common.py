"""Small pieces the screens share: bars, the connection banner, gap-keeping assembly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.content import Content
from textual.widgets import Static

EIGHTHS = " ▏▎▍▌▋▊▉"
BLANK = "not reverse"
"""A style that shows nothing on a space but is not the style of the text beside it."""


def _leading_spaces(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def tight(*pieces: str | tuple[str, str] | Content) -> Content:
    """Content.assemble, with the spaces a piece starts with moved to the end of the piece
    before it (in that piece's style, which a space does not show).

    The terminal gets the same cells. An SVG screenshot (the snapshot tests) then never has
    a run of text that starts with spaces: librsvg drops those, which draws the next word
    over the gap ("upcpu" for "up  cpu")."""
    parts: list[Content] = []
    for piece in pieces:
        content = piece if isinstance(piece, Content) else Content.assemble(piece)
        n = _leading_spaces(content.plain)
        if n:
            if parts:
                parts[-1] = parts[-1].extend_right(n)
            else:
                # Line-leading spaces: in a style of their own (one a space does not show),
                # so they do not join the text after them either.
                parts.append(Content.styled(" " * n, BLANK))
            content = content[n:]
        if content.plain:
            parts.append(content)
    return Content.assemble(*parts)


def tight_segments(segments: Iterable[Segment]) -> list[Segment]:
    """`tight` for a line of segments: leading spaces join the segment before when a space
    looks the same in both styles (same background, no underline and the like)."""
    out: list[Segment] = []
    for segment in segments:
        text, style = segment.text, segment.style
        n = _leading_spaces(text)
        if n and out and _blank_alike(out[-1].style, style):
            out[-1] = Segment(out[-1].text + text[:n], out[-1].style)
            text = text[n:]
        elif n and not (style and style.reverse):
            # In a style of their own (the same look), so they do not join the text after.
            out.append(Segment(text[:n], (style or Style()) + Style(reverse=False)))
            text = text[n:]
        if text:
            out.append(Segment(text, style))
    return out


def _blank_alike(a: Style | None, b: Style | None) -> bool:
    a, b = a or Style(), b or Style()
    visible: Any = ("underline", "underline2", "strike", "overline", "reverse", "encircle", "frame")
    return a.bgcolor == b.bgcolor and not any(getattr(s, name) for s in (a, b) for name in visible)


def bar(fraction: float | None, width: int, style: str, empty_style: str = "$surface-lighten-2") -> Content:
    """A horizontal bar `width` cells wide, filled to `fraction` in eighths of a cell."""
    if width <= 0:
        return Content("")
    if fraction is None:
        return Content.assemble(("·" * width, "$text-muted"))
    fraction = max(0.0, min(1.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (EIGHTHS[part] if part and full < width else "")
    rest = width - len(filled)
    return Content.assemble((filled, style), ("█" * rest, empty_style))


class ConnectionBanner(Static):
    """Shown while the daemon cannot be reached; the app's `connected` drives it."""

    DEFAULT_CSS = """
    ConnectionBanner {
        dock: top;
        height: auto;
        width: 1fr;
        padding: 0 1;
        background: $error;
        color: $text;
        text-style: bold;
        display: none;
    }
    ConnectionBanner.-down { display: block; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "connected", self._update)
        self.watch(self.app, "problem", self._update)
        self.watch(self.app, "loaded", self._update)

    def _update(self, _value: object = None) -> None:
        app = self.app
        down = not app.connected  # type: ignore[attr-defined]
        self.set_class(down, "-down")
        if down:
            problem = app.problem or "connecting"  # type: ignore[attr-defined]
            verb = "Reconnecting" if app.loaded else "Connecting"  # type: ignore[attr-defined]
            attempts = app.attempts  # type: ignore[attr-defined]
            tries = f"  (tried {attempts}×; ctrl+r tries now)" if attempts else ""
            self.update(tight(f"⚠ {verb} to the hypd daemon…  ", (problem, "not bold"), (tries, "not bold italic")))


def rich_style(app: object, spec: str) -> Style:
    """A Rich style from a spec that may name theme variables ("$text-success bold"), for
    widgets that take Rich text (DataTable cells). A variable that is not a plain colour
    ("auto 60%") becomes dim."""
    variables = getattr(app, "theme_variables", {}) or {}
    words = []
    for word in spec.split():
        if word.startswith("$"):
            value = str(variables.get(word[1:], ""))
            if value.startswith("#") and " " not in value:
                words.append(value[:7])
            else:
                words.append("dim")
        else:
            words.append(word)
    try:
        return Style.parse(" ".join(words))
    except Exception:
        return Style()
