"""How a run is shown, the same in the CLI and the dashboard. Standard library only."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def runtime(run: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds a run has run: until it ended, or until now."""
    if not run.get("started"):
        return None
    return (run.get("ended") or (time.time() if now is None else now)) - run["started"]


def where(run: Mapping[str, Any]) -> str:
    """host:GPUs, host:cpu, or '-' before it has a host."""
    if not run.get("host"):
        return "-"
    gpus = run.get("gpus") or []
    return f"{run['host']}:{','.join(map(str, gpus))}" if gpus else f"{run['host']}:cpu"
