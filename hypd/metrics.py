"""Reading metrics out of a run's output. Pure.

A run reports with lines `METRICS: loss=0.31 acc=0.88 step=3` (Diviner's convention); a
study may instead give regular expressions that pull metrics out of an unmodified log.
Reports without a step are numbered 0, 1, 2, ... in the order they arrive.

Bounds (so that no output a run can print stops ingestion or makes the store fail):

- A log is read line by line with `read_lines`: a line longer than `max_line` bytes
  (default 1 MiB, not counting its newline) is refused whole — skipped up to and including
  its newline, however long it is — and counted; every other line is kept. One call reads
  at most `max_chunks` chunks (default 8 x 1 MiB) once it has made progress, so one huge
  log cannot hold the caller; the caller calls again from the returned `end`.
- Bytes that are not UTF-8 are replaced (U+FFFD); reading never raises on content.
- A carriage return (progress bars) keeps the text after the last one in a line.
- An explicit step must be a finite integer in [0, 2**63-1] (SQLite's INTEGER): a line
  with any other numeric step (`step=-1`, `step=1e30`, `step=nan`, `step=2.5`) is refused
  whole (`MetricsReader.refused`, `MetricsReader.last_refusal`); a step that is not a
  number at all (`step=abc`) is ignored like any other non-number and the report is
  numbered implicitly. An implicit step past 2**63-1 refuses the line too.
- At most MAX_METRICS (256) metrics per line (the first ones win; later new names are
  ignored) and metric names of at most MAX_NAME (200) characters (a longer name: that
  pair is ignored). Values are floats; nan and ±inf are kept (JSON stores them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hypd.study import parse_duration

METRICS_PREFIX = "METRICS:"
KEEPALIVE_RE = re.compile(r"^\s*HYPD:\s*keepalive\s+(\S+)\s*$")  # `HYPD: keepalive 20m`
METRIC_NAME = r"[A-Za-z_][A-Za-z0-9_./-]*"  # what a METRICS line can name
_PAIR_RE = re.compile(rf"({METRIC_NAME})=(\S+)")

MAX_STEP = (1 << 63) - 1   # SQLite's largest INTEGER
MAX_METRICS = 256          # metrics kept from one line
MAX_NAME = 200             # characters in a metric's name
READ_CHUNK = 1 << 20       # bytes per read() in read_lines
MAX_LINE = 1 << 20         # bytes in one line (without its newline); a longer one is refused
MAX_CHUNKS = 8             # reads per read_lines call once it has made progress


def is_metric_name(name: str) -> bool:
    """Whether a METRICS line can report a metric of this name."""
    return len(name) <= MAX_NAME and re.fullmatch(METRIC_NAME, name) is not None


@dataclass(frozen=True)
class Report:
    step: int
    values: Mapping[str, float]


def keepalive_request(line: str) -> float | None:
    """The window (seconds) a `HYPD: keepalive 20m` line asks for; None for any other line
    (one whose duration cannot be read included: it is an ordinary output line)."""
    m = KEEPALIVE_RE.match(line)
    if m is None:
        return None
    try:
        return parse_duration(m.group(1))
    except ValueError:
        return None


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _step(text: str) -> int | str | None:
    """An explicit step: the integer, None when the text is not a number at all (ignored),
    or why the number cannot be a step (the line is refused)."""
    try:
        return _in_range(int(text), text)
    except ValueError:
        pass
    number = _number(text)
    if number is None:
        return None
    if not math.isfinite(number) or not number.is_integer():
        return f"step={_clip(text)} is not a finite integer"
    return _in_range(int(number), text)


def _in_range(step: int, text: str) -> int | str:
    if 0 <= step <= MAX_STEP:
        return step
    return f"step={_clip(text)} is outside 0..2**63-1"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


class MetricsReader:
    """Turns complete output lines into reports. `next_step` carries the implicit step
    counter across restarts (the daemon stores how many reports a run has made).

    A line that would make a bad report (see the module's bounds) gives None and counts
    in `refused`; `last_refusal` says why, in one line."""

    def __init__(self, regexes: Mapping[str, str] | None = None, next_step: int = 0) -> None:
        self.regexes = {k: re.compile(v) for k, v in (regexes or {}).items()}
        self.next_step = next_step
        self.refused = 0
        self.last_refusal: str | None = None

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.last_refusal = why

    def line(self, line: str) -> Report | None:
        stripped = line.strip()
        if stripped.startswith(METRICS_PREFIX):
            pairs = _PAIR_RE.findall(stripped[len(METRICS_PREFIX):])
        else:
            pairs = [(key, m.group(1)) for key, pattern in self.regexes.items()
                     if (m := pattern.search(line)) and m.group(1) is not None]
        values: dict[str, float] = {}
        step: int | None = None
        bad_step: str | None = None
        for key, raw in pairs:
            if key == "step":
                got = _step(raw)
                if isinstance(got, str):  # the last step given wins, like any metric
                    step, bad_step = None, got
                elif got is not None:
                    step, bad_step = got, None
                continue
            if len(key) > MAX_NAME or (len(values) >= MAX_METRICS and key not in values):
                continue
            number = _number(raw)
            if number is not None:
                values[key] = number
        if not values:
            return None
        if bad_step is not None:
            self._refuse(bad_step)
            return None
        if step is None:
            if self.next_step > MAX_STEP:
                self._refuse("implicit step is past 2**63-1")
                return None
            step = self.next_step
        self.next_step = max(self.next_step, step + 1)
        return Report(step, values)


# ------------------------------------------------------------------ lines of a log

@dataclass(frozen=True)
class LineBatch:
    lines: list[str]    # the complete lines read, in order
    end: int            # the offset just after the last byte consumed
    refused: int = 0    # lines over max_line skipped whole (each counted once)
    capped: bool = False  # stopped at max_chunks: more may be there now


def _decode_line(raw: bytes) -> str:
    """One line's text (without its newline): the text after its last carriage return."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    return text


def read_lines(read: Callable[[int, int], bytes], offset: int, *, final: bool,
               chunk: int = READ_CHUNK, max_line: int = MAX_LINE, max_chunks: int = MAX_CHUNKS) -> LineBatch:
    """The complete lines of a log from `offset`, read with `read(offset, n)` (up to n
    bytes at offset; b"" at the end).

    Returns the lines and `end`, the offset just after the last byte consumed: a partial
    last line is left for the next call, unless `final` (the writer has ended), when an
    unterminated last line is complete too. A line longer than `max_line` bytes (without
    its newline) is refused: skipped whole up to and including its newline, counted once
    in `refused`. Once it has consumed something, a call stops after `max_chunks` reads
    (`capped`); the caller calls again from `end` while `end` advances.

    `end` is at the start of a line, except inside (or at the end of) a refused line
    being skipped, or after a final unterminated line: a call whose offset does not follow
    a newline (the byte before it is not b"\\n") is inside a refused line and first skips
    to its end. So the offset alone carries the state across calls and restarts.
    """
    if chunk < 1 or max_line < 0 or max_chunks < 1 or offset < 0:
        raise ValueError("read_lines: chunk and max_chunks must be >= 1, max_line and offset >= 0")
    lines: list[str] = []
    refused = 0
    end = pos = offset
    skipping = offset > 0 and read(offset - 1, 1) not in (b"", b"\n")
    partial = bytearray()  # the current line's bytes so far (not while skipping)
    reads = 0
    capped = False
    while True:
        if reads >= max_chunks and end > offset:
            capped = True
            break
        data = read(pos, chunk)
        if not data:
            break
        reads += 1
        base = pos
        pos += len(data)
        start = 0
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                end = pos
                continue
            skipping = False
            start = nl + 1
            end = base + start
        segments = data[start:].split(b"\n")
        rest = segments.pop()
        for k, seg in enumerate(segments):
            if k == 0 and partial:
                seg = bytes(partial) + seg
                partial.clear()
            if len(seg) > max_line:
                refused += 1
            else:
                lines.append(_decode_line(seg))
        if segments:
            end = pos - len(rest)
        if len(partial) + len(rest) > max_line:
            refused += 1
            partial.clear()
            skipping = True
            end = pos
        else:
            partial += rest
    if final and not capped and partial:
        lines.append(_decode_line(bytes(partial)))
        end = pos
    return LineBatch(lines, end, refused, capped)


def split_lines(data: bytes) -> tuple[list[str], int]:
    """The complete lines in data and how many bytes they take; a partial last line is
    left for the next read. A carriage return (progress bars) keeps the text after it.
    (read_lines over one buffer, with no line too long.)"""
    batch = read_lines(lambda at, n: data[at:at + n], 0, final=False, chunk=max(len(data), 1),
                       max_line=len(data), max_chunks=1)
    return batch.lines, batch.end


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
