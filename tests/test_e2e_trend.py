"""The default early stopping (rule "trend") through the daemon: real processes printing a
curve, stopped by the rule, with the best run left to finish."""

from __future__ import annotations

import pytest

from conftest import DaemonProc

pytestmark = pytest.mark.slow


def test_the_default_rule_stops_runs_that_are_behind_and_flat_and_lets_the_best_finish(daemon: DaemonProc) -> None:
    # A grid in order of x: the best curve (x = 0) starts first. Every curve has the same
    # shape, x + 1 / (step + 1), so a run with x >= 0.5 is behind the first ones at every
    # step by more than its trend can make up: stopped from step 3 on (min_step), or at the
    # step it had got to when the daemon looked. The judge is hypd's rule, not Ax's.
    path = daemon.write_study("trend", """
        [study]
        name = "trend"
        objective = { metric = "loss", goal = "minimize" }
        algorithm = "grid"
        parallel = 3
        early_stop = { min_step = 3 }
        [params]
        x = { values = [0.0, 0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] }
        [run]
        command = "python3 -u -c 'import sys, time\\nx = float(sys.argv[1])\\nfor s in range(27):\\n print(\\"METRICS: step=%d loss=%r\\" % (s, x + 1 / (s + 1)))\\n time.sleep(0.25)' {x}"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("trend", timeout=150)
    runs = {r["params"]["x"]: r for r in daemon.runs(study="trend")}
    assert runs[0.0]["state"] == "completed"
    late = [runs[x] for x in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    for run in late:
        assert run["state"] == "stopped", run
        assert run["reason"].startswith("early-stopped: step "), run
        assert "below the top 1/3, and its trend cannot reach them" in run["reason"], run
        reports = daemon.call("metrics", run=run["name"], since=0)["reports"]
        assert 4 <= len(reports) < 27  # never before min_step (step 3 is the 4th report); its reports are kept
    info = daemon.cli("info", late[0]["name"]).stdout
    assert "stopped  early-stopped: step " in info
    ls = daemon.cli("ls", "--study", "trend", "--state", "stopped").stdout
    assert "[early-stopped: step " in ls
