"""What a user can ask the daemon to do from any screen (kill, retry, pause), with a
confirmation first where it cannot be undone. Mixed into the app, so screens call
`self.app.kill(target)`; it uses the app's `call`, `runs`, `studies` and `push_screen`.

A confirmation is a ModalScreen: when it closes, Textual gives focus back to the widget
that had it on the screen below, so the user's place (the run row, the study row) is kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import work
from textual.content import Content

from hypd.tui.model import study_live, where


class DaemonActions:
    """Kill, retry and pause, for HypdApp."""

    runs: dict[str, dict[str, Any]]
    studies: dict[str, dict[str, Any]]
    notify: Any
    push_screen: Any
    call: Any

    def run_op(self, op: str, done: Callable[[Any], str] | None = None, **args: Any) -> None:
        """Send one request in the background and tell the user how it went."""
        self._run_op(op, done, args)

    @work(group="ops", exit_on_error=False)
    async def _run_op(self, op: str, done: Callable[[Any], str] | None, args: dict[str, Any]) -> None:
        try:
            result = await self.call(op, **args)
        except Exception as exc:
            self.notify(getattr(exc, "message", None) or str(exc), title=f"{op} failed", severity="error")
            return
        if done is not None:
            self.notify(done(result))

    def kill(self, target: str) -> None:
        """Kill a run ("study:N") or every live run of a study, after a confirmation that
        names what is killed."""
        from hypd.tui.screens.confirm import ConfirmScreen

        if ":" in target:
            run = self.runs.get(target, {})
            if run and run.get("state") not in ("pending", "queued", "running", "lost"):
                self.notify(f"{target} is {run.get('state')}: nothing to kill", severity="warning")
                return
            prompt = Content.from_markup("Kill run [b]$target[/b]?", target=target)
            place = f" on {where(run)}" if run.get("host") else ""
            detail = Content(f"It is {run.get('state', '?')}{place}. A killed run is not retried "
                             "automatically (r retries it).")
        else:
            live = study_live(self.studies.get(target, {}))
            running = live.get("running", 0)
            if running:
                prompt = Content.from_markup("Kill study [b]$target[/b] and its [b]$running running[/b] run(s)?",
                                             target=target, running=str(running))
            else:
                prompt = Content.from_markup("Kill study [b]$target[/b]? None of its runs is running.", target=target)
            others = ", ".join(f"{n} {state}" for state, n in live.items() if state != "running")
            detail = Content(f"Every live run of the study is killed{f' (and {others})' if others else ''}, "
                             "and the study is paused (p resumes it). To kill one run, pick it in the runs table.")

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_op("kill", lambda r: ("killing " + " ".join(r["killed"])) if r["killed"] else "nothing to kill",
                            target=target)

        self.push_screen(ConfirmScreen(prompt, detail, yes="Kill"), answer)

    def retry(self, target: str) -> None:
        if ":" in target:
            run = self.runs.get(target, {})
            if run.get("state") in ("pending", "queued", "running"):
                self.notify(f"{target} is {run['state']}; kill it first to retry it", severity="warning")
                return
            self.run_op("retry", _retried, target=target, state=None)
            return
        from hypd.tui.screens.confirm import ConfirmScreen

        failed = (self.studies.get(target, {}).get("counts") or {}).get("failed", 0)

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_op("retry", _retried, target=target, state="failed")

        self.push_screen(ConfirmScreen(Content.from_markup("Retry the failed runs of study [b]$target[/b]?",
                                                           target=target),
                                       Content(f"{failed} run(s) failed; each of their trials gets a new attempt."),
                                       yes="Retry"),
                         answer)

    def toggle_pause(self, study: str) -> None:
        summary = self.studies.get(study)
        if summary is None:
            self.notify(f"no study {study}", severity="warning")
            return
        if summary.get("paused"):
            self.run_op("resume", lambda r: f"study {r['study']} resumed", study=study)
        else:
            self.run_op("pause", lambda r: f"study {r['study']} paused: nothing new starts", study=study)


def _retried(result: dict[str, Any]) -> str:
    return ("queued " + " ".join(result["retried"])) if result["retried"] else "nothing to retry"
