"""A leaderboard as a person reads it: one column per parameter, the parameters that are
the same in every row named once above the table, numbers aligned on their decimal
point; a trial with replicates as `mean [min–max] (n)`. Standard library only (the CLI
imports it)."""

from __future__ import annotations

from hypd.display import fmt_number, fmt_seconds, runtime, trial_no

TYPE_CHECKING = False
if TYPE_CHECKING:  # the CLI imports this module: no typing at run time
    from collections.abc import Mapping, Sequence
    from typing import Any


def align_decimals(cells: Sequence[str]) -> list[str]:
    """Cells of one column padded so that the numbers' decimal points (or their ends,
    for whole numbers and exponents) line up; other cells are left as they are."""
    parts: list[tuple[str, str] | None] = []
    for cell in cells:
        if not _is_number(cell):
            parts.append(None)
            continue
        cut = cell.find(".")
        if cut < 0:
            cut = next((i for i, ch in enumerate(cell) if ch in "eE"), len(cell))
        parts.append((cell[:cut], cell[cut:]))
    numbers = [p for p in parts if p is not None]
    if not numbers:
        return list(cells)
    left = max(len(a) for a, _ in numbers)
    right = max(len(b) for _, b in numbers)
    return [cell if p is None else p[0].rjust(left) + p[1].ljust(right) for cell, p in zip(cells, parts)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text.lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def split_params(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The parameters with one value in every row (name -> value), and the names of the
    others, in the order the rows give them."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row["params"] if k not in names]
    same: dict[str, Any] = {}
    varying = []
    for name in names:
        values = {_key(row["params"].get(name, _MISSING)) for row in rows}
        if len(values) == 1 and len(rows) > 1 and name in rows[0]["params"]:
            same[name] = rows[0]["params"][name]
        else:
            varying.append(name)
    return same, varying


_MISSING = object()


def _key(value: Any) -> Any:
    return (type(value).__name__, repr(value))


def board_text(board: Mapping[str, Any], every_run: bool = False) -> str:
    """The `hypd leaderboard` table (a line naming the parameters that do not vary first,
    when some do not). every_run: a row per run (each replicate), not per trial."""
    runs = board["runs"]
    objectives = board["objectives"]
    same, varying = split_params(runs)
    columns: list[tuple[str, list[str], bool]] = []  # header, cells, numeric
    replicated = not every_run and any("mean" in r for r in runs)
    if len(objectives) > 1:
        columns.append(("#", [("*" if r["pareto"] else " ") + str(i + 1) for i, r in enumerate(runs)], False))
        columns.append(("RUN", [r["name"] for r in runs], False))
        for o in objectives:
            columns.append((f"{o['metric'].upper()} ({o['goal'][:3]})",
                            [fmt_number(r["values"][o["metric"]]) for r in runs], True))
    elif replicated:
        columns.append(("#", [str(i + 1) for i in range(len(runs))], False))
        columns.append(("TRIAL", [str(trial_no(r["trial"])) for r in runs], True))
        columns.append((f"{board['metric'].upper()} ({board['goal'][:3]}) MEAN [MIN–MAX] (N)",
                        _mean_cells(runs), False))
        columns.append(("BEST RUN", [r["name"] for r in runs], False))
    else:
        columns.append(("#", [str(i + 1) for i in range(len(runs))], False))
        columns.append(("RUN", [r["name"] for r in runs], False))
        if every_run and any(r.get("replicate", 1) > 1 for r in runs):
            columns.append(("TRIAL", [str(trial_no(r["trial"])) for r in runs], True))
            columns.append(("REP", [str(r.get("replicate", 1)) for r in runs], True))
        columns.append((f"{board['metric'].upper()} ({board['goal'][:3]})",
                        [fmt_number(r["objective"]) for r in runs], True))
        columns.append(("STATE", [r["state"] for r in runs], False))
    if not replicated:
        columns.append(("TIME", [fmt_seconds(runtime(r)) for r in runs], False))
    for name in varying:
        columns.append((name, [fmt_number(r["params"].get(name)) for r in runs], True))
    cells = [align_decimals(c) if numeric else c for _, c, numeric in columns]
    widths = [max(len(h), *(len(x) for x in c)) for (h, _, _), c in zip(columns, cells)]
    lines = []
    if same:
        lines.append("same in every row: " + " ".join(f"{k}={fmt_number(v)}" for k, v in same.items()))
    lines.append("  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths)).rstrip())
    for i in range(len(runs)):
        lines.append("  ".join(c[i].ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def _mean_cells(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """`mean [min–max] (n)`, each part aligned on its decimal point across the rows."""
    means = align_decimals([fmt_number(r.get("mean")) for r in runs])
    lows = align_decimals([fmt_number(r.get("low")) for r in runs])
    highs = align_decimals([fmt_number(r.get("high")) for r in runs])
    ns = [str(r.get("n", 0)) for r in runs]
    width = max(len(n) for n in ns)
    return [f"{m} [{lo}–{hi}] ({n.rjust(width)})" for m, lo, hi, n in zip(means, lows, highs, ns)]
