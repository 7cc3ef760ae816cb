"""What a user can ask the daemon to do from any screen (kill, retry, pause; extend,
archive or remove a study; pull a run's artifacts), with a confirmation first where it
cannot be undone. Mixed into the app, so screens call
`self.app.kill(target)`; it uses the app's `call`, `runs`, `studies` and `push_screen`.

A confirmation is a ModalScreen: when it closes, Textual gives focus back to the widget
that had it on the screen below, so the user's place (the run row, the study row) is kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import work
from textual.content import Content

from hypd.tui.model import run_study, study_live, where

EXTEND_BY = 10  # what the "how many trials" dialog offers first


class DaemonActions:
    """Kill, retry, pause, extend, archive, remove and pull, for HypdApp."""

    runs: dict[str, dict[str, Any]]
    studies: dict[str, dict[str, Any]]
    notify: Any
    push_screen: Any
    pop_screen: Any
    screen: Any
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

    def extend(self, study: str) -> None:
        """Ask how many trials to add (EXTEND_BY first), then `extend`."""
        from hypd.tui.screens.confirm import NumberScreen

        total = (self.studies.get(study) or {}).get("total", "?")

        def answer(trials: int | None) -> None:
            if trials:
                self.run_op("extend", _extended, study=study, trials=trials)

        self.push_screen(NumberScreen(Content.from_markup("Add trials to study [b]$study[/b]", study=study),
                                      Content(f"It has {total} trial(s); its search carries on where it was."),
                                      value=EXTEND_BY, yes="Extend"),
                         answer)

    def archive(self, study: str) -> None:
        """Hide a study (the daemon refuses while any of its runs is going), after a confirmation."""
        from hypd.tui.screens.confirm import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_op("archive", lambda r: self._left_study(study, "archived"), study=study)

        self.push_screen(ConfirmScreen(Content.from_markup("Archive study [b]$study[/b]?", study=study),
                                       Content("It leaves the dashboard, `hypd studies` and `hypd ls`; "
                                               f"`hypd archive {study} --undo` brings it back."),
                                       yes="Archive"),
                         answer)

    def remove(self, study: str) -> None:
        """Remove a study and its runs (refused while any is going), after a confirmation."""
        from hypd.tui.screens.confirm import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_op("rm", lambda r: self._left_study(study, f"removed ({r['runs']} runs)"), study=study)

        runs = sum(1 for r in self.runs.values() if r.get("study") == study)
        self.push_screen(ConfirmScreen(Content.from_markup("Remove study [b]$study[/b] and its $runs run(s)?",
                                                           study=study, runs=str(runs)),
                                       Content("The daemon forgets them; their logs and outputs are kept "
                                               f"(`hypd rm {study} --files` removes those too)."),
                                       yes="Remove"),
                         answer)

    def _left_study(self, study: str, what: str) -> str:
        """The study is gone from the dashboard: leave its screens (and its runs')."""
        while getattr(self.screen, "study_name", None) == study or \
                run_study(getattr(self.screen, "run_name", "") or "") == study:
            self.pop_screen()
        return f"study {study} {what}"

    def pull(self, run: str) -> None:
        """Copy a run's artifacts ([run] fetch) back from its host now."""
        self.notify(f"copying the artifacts of {run} ...")
        self.run_op("pull", _pulled, run=run)


def _extended(result: dict[str, Any]) -> str:
    queued = f"; {result['queued']} trial(s) queued" if result["queued"] else ""
    paused = " (paused: p resumes it)" if result["paused"] else ""
    return f"study {result['study']} extended to {result['max_trials']} trials{queued}{paused}"


def _pulled(record: dict[str, Any]) -> str:
    files = ", ".join(record["files"]) or "nothing"
    missing = f"; nothing matched {', '.join(record['missing'])}" if record["missing"] else ""
    return f"{files} copied to {record['dir']}{missing}"


def _retried(result: dict[str, Any]) -> str:
    return ("queued " + " ".join(result["retried"])) if result["retried"] else "nothing to retry"
