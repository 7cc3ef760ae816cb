"""What the dashboard knows, and how it shows it: pure functions and small classes, no Textual.

The daemon's replies are plain dicts (see hypd/daemon.py): run rows (RUN_COLUMNS plus
"name"), study summaries and host summaries. Everything here takes those dicts as they are.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypd.display import runtime, trial_no, where

STATES = ("pending", "running", "completed", "failed", "killed", "stopped", "lost")
LIVE_STATES = frozenset({"pending", "running", "lost"})
DONE_STATES = frozenset({"completed", "stopped"})

# The style each state is shown in, with Textual theme variables.
STATE_STYLE = {
    "pending": "$text-muted",
    "running": "$text-primary bold",
    "completed": "$text-success",
    "failed": "$text-error bold",
    "killed": "$text-warning",
    "stopped": "$text-secondary",
    "lost": "$text-warning bold",
}


class DaemonClient(Protocol):
    """What the dashboard needs of a daemon client: hypd.ipc.AsyncClient, or a stand-in."""

    async def call(self, op: str, **args: Any) -> Any: ...

    def events(self, topics: list[str] | None = None, run: str | None = None) -> AsyncIterator[dict[str, Any]]: ...


# ------------------------------------------------------------------ formatting

def fmt_number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_params(params: Mapping[str, Any] | None, sep: str = " ") -> str:
    return sep.join(f"{k}={fmt_number(v)}" for k, v in (params or {}).items())


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


def fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "-"
    if mib >= 1024:
        return f"{mib / 1024:.1f}G"
    return f"{int(mib)}M"


def fmt_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.0f} KiB"
    return f"{n} bytes"


def run_study(name: str) -> str:
    return name.rpartition(":")[0]


# ------------------------------------------------------------------ runs: filter and sort

@dataclass(frozen=True)
class RunFilter:
    state: str | None = None
    study: str | None = None
    text: str = ""

    def matches(self, run: Mapping[str, Any], haystack: str) -> bool:
        if self.state is not None and run.get("state") != self.state:
            return False
        if self.study is not None and run.get("study") != self.study:
            return False
        return not self.text or self.text.lower() in haystack

    @property
    def active(self) -> bool:
        return self.state is not None or self.study is not None or bool(self.text)

    def describe(self) -> str:
        parts = []
        if self.state:
            parts.append(f"state={self.state}")
        if self.study:
            parts.append(f"study={self.study}")
        if self.text:
            parts.append(f"/{self.text}")
        return " ".join(parts) or "all runs"


def haystack(run: Mapping[str, Any]) -> str:
    """The text `/` searches in: name, state, parameters, metrics, where, last line."""
    return " ".join([run.get("name", ""), run.get("state", ""), fmt_params(run.get("params")),
                     fmt_params(run.get("metrics")), where(run), run.get("last_line") or ""]).lower()


SORT_COLUMNS = ("run", "state", "objective", "params", "metrics", "where", "time")


def sort_value(column: str, run: Mapping[str, Any], now: float) -> Any:
    """A comparable value of a run for a column, or None (sorted last either way)."""
    if column == "run":
        return run.get("id") or 0
    if column == "state":
        state = run.get("state", "")
        return STATES.index(state) if state in STATES else len(STATES)
    if column == "objective":
        value = run.get("objective")
        return value if isinstance(value, (int, float)) and not math.isnan(value) else None
    if column == "params":
        return fmt_params(run.get("params")) or None
    if column == "metrics":
        return fmt_params(run.get("metrics")) or None
    if column == "where":
        return where(run) if run.get("host") else None
    if column == "time":
        return runtime(run, now)
    raise KeyError(column)


def sorted_names(runs: Mapping[str, Mapping[str, Any]], names: Iterable[str], column: str, reverse: bool,
                 now: float) -> list[str]:
    """names ordered by column (ties by run id), runs without a value last either way."""
    valued, missing = [], []
    for name in names:
        run = runs[name]
        value = sort_value(column, run, now)
        if value is None:
            missing.append((run.get("id") or 0, name))
        else:
            valued.append(((value, run.get("id") or 0), name))
    valued.sort(key=lambda item: item[0], reverse=reverse)
    missing.sort()
    return [n for _, n in valued] + [n for _, n in missing]


# ------------------------------------------------------------------ studies

def study_state(study: Mapping[str, Any]) -> str:
    if study.get("state") == "loading":  # the daemon has just started and loads it
        return "loading"
    if "error" in study and "counts" not in study:
        return "broken"
    if study.get("paused"):
        return "paused"
    if study.get("finished"):
        return "finished"
    return "active"


def study_total(study: Mapping[str, Any]) -> int:
    """Trials the study will have (the daemon's count: never fewer than it has)."""
    return int(study.get("total", 0))


def study_done(study: Mapping[str, Any]) -> int:
    """Trials completed or early-stopped, each once however many attempts it took."""
    return int(study.get("done", 0))


def objective_series(runs: Iterable[Mapping[str, Any]], minimize: bool) -> tuple[list[int], list[float], list[float]]:
    """Each trial with a result, in trial order: (trial numbers, objective, best so far).

    A trial's result is the best objective among its finished attempts."""
    by_trial: dict[int, float] = {}
    for run in runs:
        value = run.get("objective")
        if run.get("state") not in DONE_STATES or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        trial = trial_no(run.get("trial", 0))
        old = by_trial.get(trial)
        if old is None or (value < old if minimize else value > old):
            by_trial[trial] = value
    trials = sorted(by_trial)
    values = [by_trial[t] for t in trials]
    best: list[float] = []
    for v in values:
        best.append(v if not best else (min(best[-1], v) if minimize else max(best[-1], v)))
    return trials, values, best


def varying_params(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The parameters that take more than one value across runs, with their sorted values."""
    seen: dict[str, set[Any]] = {}
    order: list[str] = []
    for run in runs:
        for key, value in (run.get("params") or {}).items():
            if key not in seen:
                seen[key] = set()
                order.append(key)
            try:
                hash(value)
            except TypeError:
                value = repr(value)
            seen[key].add(value)
    out = {}
    for key in order:
        values = seen[key]
        if len(values) > 1:
            out[key] = sorted(values, key=_value_key)
    return out


def _value_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, str(value))


@dataclass
class Heatmap:
    x_name: str
    y_name: str
    xs: list[Any]
    ys: list[Any]
    cells: dict[tuple[int, int], float] = field(default_factory=dict)  # (yi, xi) -> objective
    lo: float = 0.0
    hi: float = 0.0


MAX_HEATMAP_VALUES = 16


def grid_heatmap(study: Mapping[str, Any] | None, runs: Sequence[Mapping[str, Any]], minimize: bool) -> Heatmap | None:
    """For a grid study whose runs vary exactly two parameters: the best objective at each
    pair of values. None for anything else."""
    if study is None or study.get("algorithm") != "grid":
        return None
    varying = varying_params(runs)
    if len(varying) != 2:
        return None
    (y_name, ys), (x_name, xs) = varying.items()
    if len(xs) > MAX_HEATMAP_VALUES or len(ys) > MAX_HEATMAP_VALUES:
        return None
    heat = Heatmap(x_name, y_name, xs, ys)
    x_index = {v: i for i, v in enumerate(xs)}
    y_index = {v: i for i, v in enumerate(ys)}
    for run in runs:
        value = run.get("objective")
        if run.get("state") not in DONE_STATES or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        params = run.get("params") or {}
        try:
            key = (y_index[params.get(y_name)], x_index[params.get(x_name)])
        except (KeyError, TypeError):
            continue
        old = heat.cells.get(key)
        if old is None or (value < old if minimize else value > old):
            heat.cells[key] = value
    if heat.cells:
        heat.lo = min(heat.cells.values())
        heat.hi = max(heat.cells.values())
    return heat


# ------------------------------------------------------------------ logs

class LogBuffer:
    """Turns chunks of a log (as op `logs` returns them) into complete lines; the
    unterminated tail waits for the rest. A carriage return (a progress bar) keeps the text
    after it, as the daemon does."""

    def __init__(self) -> None:
        self.partial = ""

    def feed(self, text: str) -> list[str]:
        data = self.partial + text
        end = data.rfind("\n")
        if end < 0:
            self.partial = data
            return []
        self.partial = data[end + 1:]
        return [_last_cr(line) for line in data[:end].split("\n")]

    def flush(self) -> list[str]:
        """The unterminated tail as a line (the run has ended)."""
        tail, self.partial = self.partial, ""
        return [_last_cr(tail)] if tail.strip("\r") else []


def _last_cr(line: str) -> str:
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1] if "\r" in line else line


# ------------------------------------------------------------------ reconnecting

@dataclass
class Backoff:
    """Delays between reconnection attempts: first, doubling, at most `most`."""

    first: float = 0.5
    most: float = 5.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.most, self.first * (2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


Clock = Callable[[], float]
