"""One run: its parameters and state, every metric's curve against step, its log following
live (the daemon's "log" topic for this run; the text itself is read with op `logs` from
where the screen got to, so nothing is shown twice or skipped).

A long log opens at its end (the last LOG_TAIL bytes, op `logs` with `tail`); new metric
reports are fetched as they come (op `metrics` with `since`), not the whole series again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header

from hypd.ipc import OPS
from hypd.tui.model import Backoff, LogBuffer, fmt_bytes, run_study
from hypd.tui.widgets.common import ConnectionBanner
from hypd.tui.widgets.plots import PlotGrid, page_note
from hypd.tui.widgets.run_detail import LogView, MetricPlots, RunInfo

LOG_CHUNK = 1 << 20
LOG_TAIL = 256 << 10  # a longer log opens this far before its end
ENDED = ("completed", "failed", "killed", "stopped")  # no more output will come


class RunScreen(Screen[None]):
    HELP_TITLE = "Run"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back", tooltip="back to where you were"),
        Binding("k", "kill", "Kill", tooltip="kill this run (asks first)"),
        Binding("r", "retry", "Retry", tooltip="a new attempt of this run's trial"),
        Binding("p", "pause", "Pause", tooltip="pause or resume this run's study"),
        Binding("f", "follow", "Follow", tooltip="keep the newest log line in view, or stop"),
        Binding("l", "log_only", "Log only", tooltip="hide the parameters and plots, or show them"),
        Binding("s", "study", "Study", tooltip="this run's study: leaderboard and plots"),
        Binding("d", "pull", "Pull artifacts", tooltip="copy this run's artifacts ([run] fetch) back from its host now"),
        Binding("m", "more_metrics", "More plots", show=False, tooltip="the metric plots that do not fit"),
    ]

    def __init__(self, name: str, *, log_only: bool = False) -> None:
        super().__init__()
        self.run_name = name
        self.start_log_only = log_only
        self.info: dict[str, Any] | None = None
        self.reports: list[dict[str, Any]] = []
        self.reports_next = 0  # the sequence number of the next report to fetch
        self.log_offset = 0
        self.log_opened = False  # the first read (from the end) is done
        self.log_skipped = 0  # bytes before the part shown
        self.log_buffer = LogBuffer()
        self.log_ended = False
        self._log_wanted = asyncio.Event()
        self._metrics_wanted = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        with Horizontal(id="run-top"):
            with VerticalScroll(id="run-info-box", classes="box"):
                yield RunInfo(id="run-info")
            with Vertical(id="plots-box", classes="box"):
                yield MetricPlots(id="plots")
        with Vertical(id="log-box", classes="box"):
            yield LogView(id="log")
        yield Footer()

    @property
    def run(self) -> dict[str, Any]:
        return self.app.runs.get(self.run_name, {"name": self.run_name})  # type: ignore[attr-defined]

    @property
    def log_view(self) -> LogView:
        return self.query_one("#log", LogView)

    def on_mount(self) -> None:
        app: Any = self.app
        self.title = f"run {self.run_name}"
        self.query_one("#run-info-box").border_title = self.run_name
        self.query_one("#plots-box").border_title = "Metrics against step"
        self.set_class(self.start_log_only, "-log-only")
        self._log_title()
        app.runs_changed.subscribe(self, self._runs_changed)
        app.reloaded.subscribe(self, lambda _: self._kick())
        self._show_info()
        self.set_interval(1.0, self._tick)
        self.fetch_metrics_loop()
        self.fetch_log_loop()
        if self.run.get("state") in ENDED:
            self._log_wanted.set()  # all there is: read it now
        else:
            self.follow_log()  # reads once subscribed, then as the log grows
        self.log_view.focus()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 120, "-narrow")

    def _tick(self) -> None:
        if self.run.get("state") == "running":
            self._show_info()

    def _show_info(self) -> None:
        self.query_one("#run-info", RunInfo).show(self.run, self.info, self.app.clock())  # type: ignore[attr-defined]

    def _runs_changed(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row.get("name") == self.run_name:
                self._show_info()
                if row.get("reports", 0) != self.reports_next:
                    self._metrics_wanted.set()
                self._log_wanted.set()

    def _kick(self) -> None:
        self._show_info()
        self._metrics_wanted.set()
        self._log_wanted.set()

    # ------------------------------------------------------------ loading

    async def load_details(self) -> None:
        """Op `info`: what the run is, and its reports so far."""
        app: Any = self.app
        try:
            info = await app.call("info", run=self.run_name)
        except Exception as exc:
            self.notify(getattr(exc, "message", str(exc)), title=f"info {self.run_name}", severity="error")
            return
        self.info = info
        self.reports = list(info.get("reports") or [])  # the latest page of them
        self.reports_next = info.get("reports_from", 0) + len(self.reports)
        await self.query_one("#plots", MetricPlots).show(self.reports)
        self._show_info()

    @work(group="run-metrics", exit_on_error=False)
    async def fetch_metrics_loop(self) -> None:
        """The details, then the new reports whenever a run event says there are some (one
        request at a time; a burst of events is one more request)."""
        app: Any = self.app
        await self.load_details()
        if self.info is None:
            self._metrics_wanted.set()  # no `info`: the reports on their own then
        while True:
            await self._metrics_wanted.wait()
            self._metrics_wanted.clear()
            try:
                result = await app.call("metrics", run=self.run_name, since=self.reports_next)
            except Exception:
                continue
            new = list(result.get("reports") or [])
            self.reports_next = result.get("next", self.reports_next + len(new))
            if len(new) >= OPS["metrics"]["limit"].default:
                self._metrics_wanted.set()  # a full page: more are waiting
            if new:
                self.reports.extend(new)
                await self.query_one("#plots", MetricPlots).show(self.reports)
                await asyncio.sleep(0.5)  # at most two redraws a second

    @work(group="run-log-fetch", exit_on_error=False)
    async def fetch_log_loop(self) -> None:
        """Read the log from where we got to, whenever something says it grew; the first
        read takes only its last LOG_TAIL bytes."""
        while True:
            await self._log_wanted.wait()
            self._log_wanted.clear()
            try:
                if self.log_opened:
                    await self._read_log()
                else:
                    await self._open_log()  # what it adds later, log events announce
            except Exception:
                await asyncio.sleep(0.5)

    async def _open_log(self) -> None:
        app: Any = self.app
        chunk = await app.call("logs", run=self.run_name, tail=LOG_TAIL, limit=LOG_CHUNK)
        text = chunk["text"]
        self.log_skipped = max(0, chunk.get("size", 0) - LOG_TAIL)
        if self.log_skipped:
            text = text.partition("\n")[2]  # the first line is cut
        self.log_offset = chunk["offset"]
        self.log_opened = True
        self.log_view.add_lines(self.log_buffer.feed(text))
        self._log_state(chunk)
        self._log_title()

    async def _read_log(self) -> None:
        app: Any = self.app
        while True:
            start = self.log_offset
            chunk = await app.call("logs", run=self.run_name, offset=start, limit=LOG_CHUNK)
            self.log_offset = chunk["offset"]
            self.log_view.add_lines(self.log_buffer.feed(chunk["text"]))
            if chunk["offset"] - start < LOG_CHUNK:
                break
        self._log_state(chunk)

    def _log_state(self, chunk: dict[str, Any]) -> None:
        if not chunk.get("live") and not self.log_ended:
            self.log_ended = True
            self.log_view.add_lines(self.log_buffer.flush())
            self._log_title()
        elif chunk.get("live") and self.log_ended:
            self.log_ended = False  # a lost run came back
            self._log_title()

    @work(group="run-log-follow", exit_on_error=False)
    async def follow_log(self) -> None:
        """The daemon's "log" events for this run say when to read more (the first,
        "subscribed", that the subscription is in place: nothing written from then on is
        missed); subscribe again if the daemon goes away."""
        app: Any = self.app
        backoff = Backoff()
        while True:
            try:
                async with contextlib.aclosing(app.client.events(["log"], run=self.run_name)) as stream:
                    async for _message in stream:
                        backoff.reset()
                        self._log_wanted.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            await asyncio.sleep(backoff.next())

    # ------------------------------------------------------------ actions

    def _log_title(self) -> None:
        box = self.query_one("#log-box")
        # A long log opens at its end: say how much is not shown.
        box.border_title = f"Log · from {fmt_bytes(self.log_skipped)} in" if self.log_skipped else "Log"
        if self.log_ended:
            state = "ended"
        else:
            state = "following" if self.log_view.auto_scroll else "paused (f follows)"
        box.border_subtitle = state

    def action_follow(self) -> None:
        self.log_view.auto_scroll = not self.log_view.auto_scroll
        if self.log_view.auto_scroll:
            self.log_view.scroll_end(animate=False)
        self._log_title()

    @on(PlotGrid.Arranged, "#plots")
    def _plots_arranged(self, message: PlotGrid.Arranged) -> None:
        page_note(self.query_one("#plots-box"), message.grid, "m")

    def action_more_metrics(self) -> None:
        self.query_one("#plots", MetricPlots).next_page()

    def action_log_only(self) -> None:
        self.toggle_class("-log-only")

    def action_kill(self) -> None:
        self.app.kill(self.run_name)  # type: ignore[attr-defined]

    def action_retry(self) -> None:
        self.app.retry(self.run_name)  # type: ignore[attr-defined]

    def action_pause(self) -> None:
        self.app.toggle_pause(run_study(self.run_name))  # type: ignore[attr-defined]

    def action_pull(self) -> None:
        self.app.pull(self.run_name)  # type: ignore[attr-defined]

    def action_study(self) -> None:
        self.app.open_study(run_study(self.run_name))  # type: ignore[attr-defined]

    def commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand(f"Kill run {self.run_name}", "after a confirmation", self.action_kill)
        yield SystemCommand(f"Retry run {self.run_name}", "a new attempt of its trial", self.action_retry)
        yield SystemCommand(f"Pull the artifacts of {self.run_name}", "copy them back from its host now",
                            self.action_pull)
        yield SystemCommand("Follow the log / stop following", "keep the newest line in view", self.action_follow)
        yield SystemCommand("Show the log only", "hide the parameters and plots", self.action_log_only)
        yield SystemCommand(f"Open study {run_study(self.run_name)}", "its leaderboard and plots", self.action_study)
        yield SystemCommand("Back to the dashboard", "", self.app.pop_screen)
