"""The dashboard application: one connection to the daemon, a cache of what it said, and
the screens that show it.

Data flow: subscribe to the daemon's events ("run", "study", "host"); when the first one,
"subscribed", says the subscription is in place, load everything (ops `ls`, `studies`,
`hosts`); from then on the pushed events keep the cache current and nothing polls. Run
events are coalesced for a tenth of a second so a burst of metrics reports redraws once.
When the daemon goes away the event stream ends: a banner says so and the connection worker
retries with backoff, subscribes and loads again, and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.signal import Signal

from hypd.tui.actions import DaemonActions
from hypd.tui.model import Backoff, Clock, DaemonClient

CALL_TIMEOUT = 60.0
FLUSH_DELAY = 0.1


class HypdApp(DaemonActions, App[int]):
    """`hypd tui`."""

    CSS_PATH = "hypd.tcss"
    TITLE = "hypd"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Keys", tooltip="this list of keys (esc closes it)"),
        Binding("ctrl+r", "reconnect", "Reconnect", show=False,
                tooltip="try the daemon again now rather than after the backoff"),
    ]

    connected: reactive[bool] = reactive(False)
    """Whether the event stream is up (the banner shows when it is not)."""
    problem: reactive[str] = reactive("")
    """Why the daemon cannot be reached, for the banner."""
    loaded: reactive[bool] = reactive(False)
    """Set once the first full load has arrived."""

    def __init__(self, client: DaemonClient, *, clock: Clock = time.time, where: str = "",
                 backoff: Backoff | None = None) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        self.where = where
        self.backoff = backoff or Backoff()
        self.runs: dict[str, dict[str, Any]] = {}
        self.studies: dict[str, dict[str, Any]] = {}
        self.hosts: dict[str, dict[str, Any]] = {}
        self.hello: dict[str, Any] = {}
        self.attempts = 0
        self.events_received = 0
        # Published with the list of changed rows (runs), or the changed summaries.
        self.runs_changed: Signal[list[dict[str, Any]]] = Signal(self, "runs_changed")
        self.studies_changed: Signal[list[dict[str, Any]]] = Signal(self, "studies_changed")
        self.hosts_changed: Signal[list[dict[str, Any]]] = Signal(self, "hosts_changed")
        self.reloaded: Signal[None] = Signal(self, "reloaded")
        self._pending_runs: dict[str, dict[str, Any]] = {}
        self._flush_timer: Any = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    def get_default_screen(self) -> Screen:
        from hypd.tui.screens.dashboard import DashboardScreen

        return DashboardScreen()

    def on_mount(self) -> None:
        self.sub_title = self.where
        self.stay_connected()

    async def call(self, op: str, **args: Any) -> Any:
        """One request to the daemon (hypd.ipc.DaemonError when it refuses or is gone)."""
        return await asyncio.wait_for(self.client.call(op, **args), CALL_TIMEOUT)

    @work(exclusive=True, group="connection", exit_on_error=False)
    async def stay_connected(self) -> None:
        """Subscribe, load once the subscription is in place, follow events; when they stop,
        say so, wait, and do it again."""
        while True:
            try:
                async with contextlib.aclosing(self.client.events(["run", "study", "host"])) as stream:
                    async for message in stream:
                        self.events_received += 1
                        if message.get("event") == "subscribed":
                            if message["data"].get("dropped"):
                                self.notify(message["data"]["dropped"], severity="warning")
                            # From here on no change is missed: what the load returns is
                            # current, and events that come meanwhile queue up behind it.
                            await self._load()
                            self.attempts = 0
                            self.backoff.reset()
                            self.problem = ""
                            self.connected = True
                        else:
                            self._on_event(message)
                self.problem = "the daemon closed the connection"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # DaemonError, OSError, a garbled line: all mean "try again"
                self.problem = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.attempts += 1
            self.connected = False
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.backoff.next())

    def action_reconnect(self) -> None:
        """Try to reach the daemon again now rather than after the backoff."""
        self._wake.set()

    async def _load(self) -> None:
        """Everything the daemon knows, applied as one change."""
        runs, studies, hosts = await asyncio.gather(self.call("ls"), self.call("studies"), self.call("hosts"))
        self.hello = dict(getattr(self.client, "hello", {}) or {})
        if self.hello.get("pid"):
            self.sub_title = f"daemon pid {self.hello['pid']} · {self.hello.get('home', self.where)}"
        self._apply_snapshot(runs, studies, hosts)
        self.loaded = True

    def _apply_snapshot(self, runs: list[dict[str, Any]], studies: list[dict[str, Any]],
                        hosts: list[dict[str, Any]]) -> None:
        self._pending_runs.clear()
        new_runs = {r["name"]: r for r in runs}
        changed = [r for name, r in new_runs.items() if self.runs.get(name) != r]
        gone = [name for name in self.runs if name not in new_runs]
        self.runs = new_runs
        self.studies = {s["name"]: s for s in studies}
        self.hosts = {h["name"]: h for h in hosts}
        if gone:
            self.reloaded.publish(None)
        elif changed:
            self.runs_changed.publish(changed)
        self.studies_changed.publish(list(self.studies.values()))
        self.hosts_changed.publish(list(self.hosts.values()))

    # ------------------------------------------------------------ events

    def _on_event(self, message: dict[str, Any]) -> None:
        topic, data = message.get("event"), message.get("data")
        if not isinstance(data, dict) or "name" not in data:
            return
        if topic == "run":
            self.runs[data["name"]] = data
            self._pending_runs[data["name"]] = data
            if self._flush_timer is None:
                self._flush_timer = self.set_timer(FLUSH_DELAY, self._flush_runs)
        elif topic == "study":
            if data.get("state") == "removed" or data.get("archived"):
                self._drop_study(data["name"])  # `hypd rm`, or archived (`hypd studies --archived` lists it)
                return
            old = self.studies.get(data["name"])
            if old is not None and "counts" not in data:
                data = {**old, **data}  # a search error: a partial summary
            if old != data:
                self.studies[data["name"]] = data
                self.studies_changed.publish([data])
                reason = data.get("pause_reason")
                if reason and (old is None or old.get("pause_reason") != reason):
                    # hypd paused it itself (its runs kept failing): say so wherever the user is.
                    self.notify(f"{reason}. Fix the cause, then resume it (p).", title=f"study {data['name']} paused",
                                severity="warning", timeout=30)
                known = (old or {}).get("prepare_failed") or {}
                for host, why in (data.get("prepare_failed") or {}).items():
                    if known.get(host) != why:  # its runs now go elsewhere: say so wherever the user is
                        self.notify(f"{why}. Fix it, then `hypd retry {data['name']} --prepare`.",
                                    title=f"study {data['name']}: host {host} unusable", severity="error",
                                    timeout=30)
        elif topic == "host":
            if self.hosts.get(data["name"]) != data:
                self.hosts[data["name"]] = data
                self.hosts_changed.publish([data])

    def _drop_study(self, name: str) -> None:
        """A study removed or archived: it and its runs leave the dashboard."""
        self.studies.pop(name, None)
        gone = [run for run, r in self.runs.items() if r.get("study") == name]
        for run in gone:
            del self.runs[run]
            self._pending_runs.pop(run, None)
        if gone:
            self.reloaded.publish(None)
        self.studies_changed.publish([])

    def _flush_runs(self) -> None:
        self._flush_timer = None
        if self._pending_runs:
            rows = list(self._pending_runs.values())
            self._pending_runs.clear()
            self.runs_changed.publish(rows)

    # ------------------------------------------------------------ screens

    def action_help(self) -> None:
        """`?`: the keys of the screen in front (again, or esc, closes it)."""
        from hypd.tui.screens.help import HelpScreen, screen_keys

        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        title = str(getattr(self.screen, "HELP_TITLE", type(self.screen).__name__))
        self.push_screen(HelpScreen(title, screen_keys(self.screen)))

    def open_run(self, name: str, *, log: bool = False) -> None:
        from hypd.tui.screens.run import RunScreen

        if name in self.runs:
            self.push_screen(RunScreen(name, log_only=log))

    def open_study(self, name: str) -> None:
        from hypd.tui.screens.study import StudyScreen

        if name in self.studies:
            self.push_screen(StudyScreen(name))

    # ------------------------------------------------------------ command palette

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        provide = getattr(screen, "commands", None)
        if provide is not None:
            yield from provide()
        for name in sorted(self.studies):
            yield SystemCommand(f"Open study {name}", "leaderboard, objective by trial, a plot per parameter",
                                lambda n=name: self.open_study(n))
        yield SystemCommand("Reconnect now", "try the daemon again without waiting", self.action_reconnect)
        yield from super().get_system_commands(screen)


def make_app(client: DaemonClient, *, clock: Clock = time.time, where: str = "") -> HypdApp:
    """The dashboard, talking to the daemon through `client` (an hypd.ipc.AsyncClient or
    anything with its `call` and `events`)."""
    return HypdApp(client, clock=clock, where=where)


def run_tui(path: Path) -> int:
    from hypd.ipc import AsyncClient

    app = make_app(AsyncClient(Path(path)), where=str(path))
    result = app.run()
    return 0 if result is None else int(result)
