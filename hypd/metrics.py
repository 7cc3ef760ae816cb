"""Reading metrics out of a run's output. Pure.

A run reports with lines `METRICS: loss=0.31 acc=0.88 step=3` (Diviner's convention); a
study may instead give regular expressions that pull metrics out of an unmodified log.
Reports without a step are numbered 0, 1, 2, ... in the order they arrive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

METRICS_PREFIX = "METRICS:"
_PAIR_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_./-]*)=(\S+)")


@dataclass(frozen=True)
class Report:
    step: int
    values: Mapping[str, float]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


class MetricsReader:
    """Turns complete output lines into reports. `next_step` carries the implicit step
    counter across restarts (the daemon stores how many reports a run has made)."""

    def __init__(self, regexes: Mapping[str, str] | None = None, next_step: int = 0) -> None:
        self.regexes = {k: re.compile(v) for k, v in (regexes or {}).items()}
        self.next_step = next_step

    def line(self, line: str) -> Report | None:
        stripped = line.strip()
        if stripped.startswith(METRICS_PREFIX):
            pairs = _PAIR_RE.findall(stripped[len(METRICS_PREFIX):])
        else:
            pairs = [(key, m.group(1)) for key, pattern in self.regexes.items()
                     if (m := pattern.search(line)) and m.group(1) is not None]
        values: dict[str, float] = {}
        step: int | None = None
        for key, raw in pairs:
            number = _number(raw)
            if number is None:
                continue
            if key != "step":
                values[key] = number
            elif math.isfinite(number):
                step = int(number)
        if not values:
            return None
        if step is None:
            step = self.next_step
        self.next_step = max(self.next_step, step + 1)
        return Report(step, values)


def split_lines(data: bytes) -> tuple[list[str], int]:
    """The complete lines in data and how many bytes they take; a partial last line is
    left for the next read. A carriage return (progress bars) keeps the text after it."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    lines = []
    for raw in data[: end + 1].split(b"\n")[:-1]:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if "\r" in text:
            text = text.rsplit("\r", 1)[-1]
        lines.append(text)
    return lines, end + 1


def fold_objective(current: float | None, new: float, minimize: bool, use: str) -> float:
    """A run's result after one more report of its objective metric: the last reported
    value, or the best one so far."""
    if current is None or math.isnan(current) or use == "last":
        return new
    if math.isnan(new):
        return current
    return min(current, new) if minimize else max(current, new)


def pareto_front(points: list[tuple[float, ...]], minimize: tuple[bool, ...]) -> list[bool]:
    """For each point, whether no other point is at least as good in every objective and
    better in one (the Pareto front of several objectives)."""
    signed = [tuple(v if m else -v for v, m in zip(p, minimize)) for p in points]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [not any(dominates(other, p) for other in signed if other is not p) for p in signed]
