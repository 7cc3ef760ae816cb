"""What the dashboard knows, and how it shows it: pure functions and small classes, no Textual.

The daemon's replies are plain dicts (see hypd/daemon.py): run rows (RUN_COLUMNS plus
"name"), study summaries and host summaries. Everything here takes those dicts as they are.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypd import display
from hypd.display import runtime, trial_no, where

STATES = ("pending", "queued", "running", "completed", "failed", "killed", "stopped", "lost")
LIVE_STATES = frozenset({"pending", "queued", "running", "lost"})
DONE_STATES = frozenset({"completed", "stopped"})

# The style each state is shown in, with Textual theme variables.
STATE_STYLE = {
    "pending": "$text-muted",
    "queued": "$text-accent",
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
    return display.fmt_number(value, digits)  # the dashboard's cells are narrower: 4 digits


def fmt_params(params: Mapping[str, Any] | None, sep: str = " ") -> str:
    return display.fmt_params(params, sep, digits=4)


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


def study_live(study: Mapping[str, Any]) -> dict[str, int]:
    """The runs a kill of the whole study would end: state -> how many (pending, running, lost)."""
    counts = study.get("counts") or {}
    return {state: counts.get(state, 0) for state in ("running", "pending", "lost") if counts.get(state, 0)}


def progress_cells(study: Mapping[str, Any], width: int) -> tuple[int, int]:
    """A progress bar `width` cells wide: (cells done, cells running). Only trials with a
    result fill it, so a study that ended with none done shows an empty bar; it is full only
    when every trial is done, and a trial done shows at least one cell."""
    total = study_total(study)
    if total <= 0 or width <= 0:
        return 0, 0
    done = min(study_done(study), total)
    running = min((study.get("outcomes") or {}).get("running", 0), total - done)  # trials, not attempts

    def cells(n: int) -> int:
        if n <= 0:
            return 0
        if n >= total:
            return width
        return min(width - 1, max(1, n * width // total))

    done_cells = cells(done)
    return done_cells, min(cells(running), width - done_cells)


# ------------------------------------------------------------------ a study's trials, for its plots

PLOTTED_STATES = ("completed", "stopped", "failed")
"""How a trial is drawn: its best result (completed, or early-stopped), or, when it never
had one, failed."""


@dataclass(frozen=True)
class TrialPoint:
    trial: int  # as shown (hypd.display.trial_no: from 1)
    state: str  # one of PLOTTED_STATES
    value: float | None  # the objective; None for a failed trial that reported none
    params: Mapping[str, Any]
    run: str


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_points(runs: Iterable[Mapping[str, Any]], minimize: bool) -> list[TrialPoint]:
    """One point per trial that has an outcome, in trial order: its best completed or
    stopped attempt (as the leaderboard ranks it); else, once no attempt is pending, running
    or lost, its last failed attempt. Trials that were only killed are left out."""
    by_trial: dict[int, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_trial.setdefault(trial_no(run.get("trial", 0)), []).append(run)
    points = []
    for trial in sorted(by_trial):
        attempts = sorted(by_trial[trial], key=lambda r: r.get("attempt") or 0)
        done = [r for r in attempts if r.get("state") in DONE_STATES and _finite(r.get("objective"))]
        if done:
            best = min(done, key=lambda r: r["objective"] if minimize else -r["objective"])
            points.append(TrialPoint(trial, best["state"], float(best["objective"]), best.get("params") or {},
                                     best.get("name", "")))
            continue
        if any(r.get("state") in LIVE_STATES for r in attempts):
            continue
        failed = [r for r in attempts if r.get("state") == "failed"]
        if failed:
            last = failed[-1]
            value = float(last["objective"]) if _finite(last.get("objective")) else None
            points.append(TrialPoint(trial, "failed", value, last.get("params") or {}, last.get("name", "")))
    return points


def best_so_far(points: Sequence[TrialPoint], minimize: bool) -> tuple[list[int], list[float]]:
    """The best result up to each trial with one (completed or stopped), in trial order."""
    xs: list[int] = []
    ys: list[float] = []
    for p in points:
        if p.state == "failed" or p.value is None:
            continue
        best = p.value if not ys else (min(ys[-1], p.value) if minimize else max(ys[-1], p.value))
        xs.append(p.trial)
        ys.append(best)
    return xs, ys


def describe_trials(points: Sequence[TrialPoint]) -> str:
    """"9 trials · 1 failed · 1 without a result": what the objective plot shows."""
    parts = [f"{len(points)} trial{'s' if len(points) != 1 else ''}"]
    for state in PLOTTED_STATES[1:]:
        n = sum(1 for p in points if p.state == state)
        if n:
            parts.append(f"{n} {state}")
    blind = sum(1 for p in points if p.value is None)
    if blind:
        parts.append(f"{blind} without a result")
    return " · ".join(parts)


def step_line(xs: Sequence[float], ys: Sequence[float], until: float | None = None) -> tuple[list[float], list[float]]:
    """The points of a line that holds each value until the next x and then jumps (a line
    drawn through them is a staircase, not a slope between two results); `until`: the
    last value is held up to there."""
    out_x: list[float] = []
    out_y: list[float] = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        if i:
            out_x.append(x)
            out_y.append(ys[i - 1])
        out_x.append(x)
        out_y.append(y)
    if out_x and until is not None and until > out_x[-1]:
        out_x.append(until)
        out_y.append(out_y[-1])
    return out_x, out_y


def objective_series(runs: Iterable[Mapping[str, Any]], minimize: bool) -> tuple[list[int], list[float], list[float]]:
    """Each trial with a result, in trial order: (trial numbers, objective, best so far).

    A trial's result is the best objective among its finished attempts."""
    points = [p for p in trial_points(runs, minimize) if p.state != "failed" and p.value is not None]
    _, best = best_so_far(points, minimize)
    return [p.trial for p in points], [p.value for p in points if p.value is not None], best


@dataclass
class ParamSeries:
    """One parameter against the objective: the points of each state, and for a parameter
    that is not a number, the tick labels of its values (drawn at 1, 2, ...)."""

    name: str
    by_state: dict[str, tuple[list[float], list[float]]]
    labels: list[str] = field(default_factory=list)
    log: bool = False  # a positive range over two decades or more: a log axis

    @property
    def count(self) -> int:
        return sum(len(xs) for xs, _ in self.by_state.values())


def param_series(points: Sequence[TrialPoint]) -> list[ParamSeries]:
    """A scatter per parameter that takes more than one value: its value against the
    objective, for trials with an objective, by how each trial ended."""
    out = []
    for name, values in varying_params({"params": p.params} for p in points).items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        series = ParamSeries(name, {})
        if not numeric:
            series.labels = [fmt_number(v) for v in values]
            position = {v: i + 1 for i, v in enumerate(values)}
        for p in points:
            if p.value is None or name not in p.params:
                continue
            value = p.params[name]
            x = float(value) if numeric else position.get(_hashable(value))
            if x is None:
                continue
            xs, ys = series.by_state.setdefault(p.state, ([], []))
            xs.append(x)
            ys.append(p.value)
        series.log = numeric and wide_range(values, 100)
        out.append(series)
    return out


def wide_range(values: Sequence[float], ratio: float = 1000) -> bool:
    """Positive values that span `ratio` or more (a log axis shows them better)."""
    return len(values) > 1 and min(values) > 0 and max(values) / min(values) >= ratio


def int_ticks(xs: Sequence[float], most: int, first: int | None = None) -> list[int]:
    """Whole-number ticks across xs (steps and trial numbers are whole numbers), at most
    `most` of them; `first`: where the axis starts when that is before the smallest x."""
    if not xs or any(x != int(x) for x in xs):
        return []
    lo, hi = int(min(xs)), int(max(xs))
    if first is not None:
        lo = min(lo, first)
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, most - 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    start = lo - lo % step if lo % step else lo
    ticks = [t for t in range(start, hi + 1, step) if t >= lo] or [lo]
    if first is not None and ticks[0] != lo:
        # The axis's start is labelled too (1, 5, 10), unless that crowds the next tick.
        ticks = [lo] + (ticks[1:] if ticks[0] - lo < step / 2 else ticks)
    return ticks


def varying_params(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The parameters that take more than one value across runs, with their sorted values."""
    seen: dict[str, set[Any]] = {}
    order: list[str] = []
    for run in runs:
        for key, value in (run.get("params") or {}).items():
            if key not in seen:
                seen[key] = set()
                order.append(key)
            seen[key].add(_hashable(value))
    out = {}
    for key in order:
        values = seen[key]
        if len(values) > 1:
            out[key] = sorted(values, key=_value_key)
    return out


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


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


# ------------------------------------------------------------------ help


@dataclass(frozen=True)
class HelpRow:
    section: str  # whose key it is: the screen, the focused table, everywhere
    keys: str  # "n / esc"
    text: str
    in_footer: bool


def help_rows(bindings: Iterable[tuple[str, str, str, str, str, bool]]) -> list[HelpRow]:
    """The help screen's lines from a screen's bindings, each (section, key as shown,
    action, description, longer description or "", shown in the footer): one line per action
    of a section with all its keys, in the order given; the longer description where there is
    one."""
    rows: dict[tuple[str, str], HelpRow] = {}
    for section, key, action, description, tooltip, shown in bindings:
        old = rows.get((section, action))
        if old is None:
            rows[(section, action)] = HelpRow(section, key, tooltip or description, shown)
        elif key not in old.keys.split(" / "):
            rows[(section, action)] = HelpRow(section, f"{old.keys} / {key}", old.text, old.in_footer or shown)
    return list(rows.values())
