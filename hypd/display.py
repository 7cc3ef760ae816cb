"""How a run is shown, the same in the CLI and the dashboard. Standard library only."""

from __future__ import annotations

import signal
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # the CLI imports this module: no typing at run time
    from collections.abc import Mapping
    from typing import Any


def trial_no(trial: int) -> int:
    """The number a user sees for a trial: trials are stored as the search numbers them
    (Ax's indexes, from 0) and shown, like runs, from 1 — in the CLI, the dashboard, the
    `{trial}` placeholder and HYPD_TRIAL alike."""
    return trial + 1


def fmt_number(value: Any, digits: int = 6) -> str:
    """A parameter's or metric's value as a user reads it: floats to `digits` significant
    digits (nan and inf as such), booleans as TOML writes them."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_params(params: Mapping[str, Any] | None, sep: str = " ", digits: int = 6) -> str:
    return sep.join(f"{k}={fmt_number(v, digits)}" for k, v in (params or {}).items())


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def runtime(run: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds a run has run: until it ended, or until now."""
    if not run.get("started"):
        return None
    return (run.get("ended") or (time.time() if now is None else now)) - run["started"]


def state_text(run: Mapping[str, Any]) -> str:
    """The run's state; a queued one with its batch host's reason (`queued (Priority)`)."""
    state = str(run.get("state", ""))
    reason = str(run.get("reason") or "")
    if state == "queued" and reason.startswith("queued: "):
        return f"queued ({reason.removeprefix('queued: ')})"
    return state


def where(run: Mapping[str, Any]) -> str:
    """host:GPUs, host:cpu, host alone (a batch host chose its GPUs), or '-' before it has a host."""
    if not run.get("host"):
        return "-"
    if run.get("gpus") is None and run.get("state") != "pending":
        return str(run["host"])
    gpus = run.get("gpus") or []
    return f"{run['host']}:{','.join(map(str, gpus))}" if gpus else f"{run['host']}:cpu"


def fmt_exit(code: int | None, stage: str | None) -> str:
    """How a run's wrapper exited: its status, or the signal that ended it (a status over
    128 is the shell's way of saying so), and the stage that failed."""
    if code is None:
        how = "no exit status (its processes were killed outright)"
    elif code > 128:
        try:
            name = f" ({signal.Signals(code - 128).name})"
        except ValueError:
            name = ""
        how = f"killed by signal {code - 128}{name}"
    else:
        how = f"status {code}"
    if stage == "main":
        return f"{how} in its command"
    return f"{how} in stage {stage}" if stage else how


def one_line(text: object, limit: int = 300) -> str:
    """Text on one line (whitespace runs made one space), cut at `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def fmt_ahead(ahead: Mapping[str, Any] | None) -> str:
    """An adaptive study's suggestions asked ahead, `2 ready, lead 8.1s` (the lead: how long
    before its launch a suggestion was ready); '-' for a study that asks nothing ahead."""
    if not ahead:
        return "-"
    lead = ahead.get("lead")
    return f"{ahead.get('ready', 0)} ready" + (f", lead {lead:.1f}s" if lead is not None else "")
