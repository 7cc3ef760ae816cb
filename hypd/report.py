"""`report(loss=0.31, acc=0.88, step=3)` prints `METRICS: step=3 loss=0.31 acc=0.88`.

Standard library only, so a training script pays nothing to import it.
"""

from __future__ import annotations

import math
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # (typing itself costs a training script and the CLI milliseconds)
    from typing import TextIO


def report(*, step: int | None = None, file: TextIO | None = None, **metrics: float) -> None:
    """Print one metrics report on stdout (flushed, so hypd sees it at once)."""
    if not metrics:
        raise TypeError("report() needs at least one metric, e.g. report(loss=0.3)")
    parts = [] if step is None else [f"step={int(step)}"]
    for name, value in metrics.items():
        if not name.replace("_", "").replace(".", "").replace("/", "").isalnum():
            raise ValueError(f"metric name {name!r}: use letters, digits, _ . /")
        number = float(value)
        if math.isnan(number):
            parts.append(f"{name}=nan")
        else:
            parts.append(f"{name}={number!r}")
    print("METRICS: " + " ".join(parts), file=file or sys.stdout, flush=True)
