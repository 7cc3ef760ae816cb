"""Early stopping through the daemon: real processes printing a curve, stopped by hypd's
rules (the default trend rule, ASHA), the best run left to finish."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import DaemonProc

pytestmark = pytest.mark.slow

LATE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def grid_with_early_stop(daemon: DaemonProc, name: str, early_stop: str) -> dict[float, dict[str, Any]]:
    """A grid in order of x: the best curve (x = 0) starts first, and every later run's
    curve, x + 1 / (step + 1), is worse at every step than all before it. Runs the study
    to its end; its runs by x."""
    path = daemon.write_study(name, f"""
        [study]
        name = "{name}"
        objective = {{ metric = "loss", goal = "minimize" }}
        algorithm = "grid"
        parallel = 3
        early_stop = {early_stop}
        [params]
        x = {{ values = [0.0, 0.1, 0.2, {", ".join(map(str, LATE))}] }}
        [run]
        command = "python3 -u -c 'import sys, time\\nx = float(sys.argv[1])\\nfor s in range(27):\\n print(\\"METRICS: step=%d loss=%r\\" % (s, x + 1 / (s + 1)))\\n time.sleep(0.25)' {{x}}"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished(name, timeout=150)
    return {r["params"]["x"]: r for r in daemon.runs(study=name)}


def assert_stopped_with_reports_kept(daemon: DaemonProc, run: dict[str, Any], reason: str, min_reports: int) -> None:
    assert run["state"] == "stopped", run
    assert run["reason"].startswith(reason), run
    reports = daemon.call("metrics", run=run["name"], since=0)["reports"]
    assert min_reports <= len(reports) < 27  # never before min_step; its reports are kept


def test_asha_stops_the_runs_below_the_top_third_at_a_rung(daemon: DaemonProc) -> None:
    # Each run from the fourth on is ranked last at rung 1 among at least four runs there,
    # and as flat as the runs ahead of it (the guard does not spare it): stopped at step 1
    # (or the step it had got to when the daemon looked).
    runs = grid_with_early_stop(daemon, "asha", '{ rule = "asha", min_step = 1, max_step = 27, eta = 3 }')
    assert runs[0.0]["state"] == "completed"
    for x in LATE:
        assert_stopped_with_reports_kept(
            daemon, runs[x], "early-stopped: rung 1 (step 1), below the top 1/3: ranked ", min_reports=2)
    info = daemon.cli("info", runs[LATE[0]]["name"]).stdout
    assert "stopped  early-stopped: rung 1 (step 1), below the top 1/3" in info
    assert "[early-stopped: rung 1" in daemon.cli("ls", "--study", "asha", "--state", "stopped").stdout


def test_the_default_rule_stops_runs_behind_and_flat_and_lets_the_best_finish(daemon: DaemonProc) -> None:
    # `early_stop = { min_step = 3 }` is hypd's trend rule (not Ax's: the study is a grid).
    # A run with x >= 0.3 is behind the first ones at every step by more than its trend
    # can make up: stopped from step 3 on (the 4th report), or at the step it had got to.
    runs = grid_with_early_stop(daemon, "trend", "{ min_step = 3 }")
    assert runs[0.0]["state"] == "completed"
    for x in LATE:
        assert_stopped_with_reports_kept(daemon, runs[x], "early-stopped: step ", min_reports=4)
        assert runs[x]["reason"].endswith("below the top 1/3, and its trend cannot reach them"), runs[x]
    assert "stopped  early-stopped: step " in daemon.cli("info", runs[LATE[0]]["name"]).stdout
    assert "[early-stopped: step " in daemon.cli("ls", "--study", "trend", "--state", "stopped").stdout
