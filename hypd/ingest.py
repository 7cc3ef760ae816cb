"""A run's log into the store: its new lines read from the stored offset on, its METRICS
reports (and keepalive asks) picked out, and what was read committed with the offset it
reached, so that a report is stored exactly once. Carries out the core's Ingest action and
answers it with Stored or StoreFailed."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypd import lifecycle as lc
from hypd.metrics import METRICS_PREFIX, MetricsReader, fold_objective, keepalive_request, read_lines
from hypd.store import Store, StoreUnavailable
from hypd.studies import Studies
from hypd.wrapper import STAGE_MARK

log = logging.getLogger("hypd.runs")  # a part of the runs shell: its log lines say so

# The wrapper's own "[hypd] stage X started/failed" lines: a run's last line is the
# program's (the error a failed run printed), not these.
STAGE_LINE = f"{STAGE_MARK} stage "


@dataclass
class RunData:
    """What the shell keeps of a live run beside the core: where its files are, and its
    metrics as of the last stored report."""

    ctl_dir: str
    log_path: str
    reader: MetricsReader
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float | None = None
    last_line: str = ""
    gpu_mem_mib: int = 0
    started: float = 0.0


class LogIngest:
    def __init__(self, store: Store, studies: Studies, data: dict[int, RunData], attempts: dict[int, lc.Attempt],
                 feed: Callable[[object], None], publish_run: Callable[[int], Awaitable[None]],
                 publish_log: Callable[[str, str], None]) -> None:
        self.store = store
        self.studies = studies
        self.data = data  # the shell's, shared
        self.attempts = attempts  # the core's, shared
        self.feed = feed
        self.publish_run = publish_run
        self.publish_log = publish_log

    async def __call__(self, action: lc.Ingest) -> None:
        data = self.data.get(action.run)
        attempt = self.attempts.get(action.run)
        if data is None or attempt is None:
            return
        rt = self.studies.get(attempt.study)
        batch = await asyncio.to_thread(_read_log, data.log_path, action.offset, action.final)
        reader_step = data.reader.next_step
        metrics, objective, last_line = dict(data.metrics), data.objective, data.last_line
        reports = []
        now = time.time()
        for line in batch.lines:
            if (window := keepalive_request(line)) is not None:
                self.feed(lc.KeepaliveAsked(action.run, window))
                continue
            if line.strip() and not line.lstrip().startswith((METRICS_PREFIX, STAGE_LINE)):
                last_line = line.strip()[:500]
            report = data.reader.line(line)
            if report is None:
                continue
            reports.append((report.step, now, dict(report.values)))
            metrics.update(report.values)
            if rt is not None and rt.spec.objective.metric in report.values:
                o = rt.spec.objective
                objective = fold_objective(objective, report.values[o.metric], o.minimize, o.use)
        if batch.end == action.offset and not batch.lines:
            self.feed(lc.Stored(action.run, batch.end))  # nothing new: no write
            return
        try:
            await self.store.add_reports(action.run, reports, log_offset=batch.end, metrics=metrics,
                                         objective=_finite(objective), last_line=last_line)
        except StoreUnavailable as exc:
            data.reader.next_step = reader_step  # read again from the last commit
            self.feed(lc.StoreFailed(action.run, str(exc), time.time()))
            return
        data.metrics, data.objective, data.last_line = metrics, objective, last_line
        self.feed(lc.Stored(action.run, batch.end))
        if batch.lines:
            self.publish_log(attempt.name, "\n".join(batch.lines) + "\n")
        if batch.refused:
            log.warning("%s: %d output line(s) over the length limit were not read for metrics",
                        attempt.name, batch.refused)
        if reports:
            await self.publish_run(action.run)
            await self.studies.report(attempt.study, attempt.trial, reports, run=action.run)


def _read_log(path: str, offset: int, final: bool) -> Any:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return read_lines(lambda at, n: b"", offset, final=final)
    with f:
        def read(at: int, n: int) -> bytes:
            f.seek(at)
            return f.read(n)
        return read_lines(read, offset, final=final)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
