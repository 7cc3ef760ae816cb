"""ASHA early stopping through the daemon: real processes printing a curve, stopped by the rule."""

from __future__ import annotations

import pytest

from conftest import DaemonProc

pytestmark = pytest.mark.slow


def test_asha_stops_the_runs_below_the_top_third_at_a_rung(daemon: DaemonProc) -> None:
    # A grid in order of x: the best curve (x = 0) starts first, and every later run is
    # worse at every step than all before it, so each run from the fourth on is ranked
    # last at rung 1 among at least four runs there: stopped at step 1 (or the step it
    # had got to when the daemon looked).
    path = daemon.write_study("asha", """
        [study]
        name = "asha"
        objective = { metric = "loss", goal = "minimize" }
        algorithm = "grid"
        parallel = 3
        early_stop = { rule = "asha", min_step = 1, max_step = 27, eta = 3 }
        [params]
        x = { values = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] }
        [run]
        command = "python3 -u -c 'import sys, time\\nx = float(sys.argv[1])\\nfor s in range(27):\\n print(\\"METRICS: step=%d loss=%r\\" % (s, x + 1 / (s + 1)))\\n time.sleep(0.25)' {x}"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("asha", timeout=150)
    runs = {r["params"]["x"]: r for r in daemon.runs(study="asha")}
    assert runs[0.0]["state"] == "completed"
    late = [runs[x] for x in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    for run in late:
        assert run["state"] == "stopped", run
        assert run["reason"].startswith("early-stopped: rung 1 (step 1), below the top 1/3: ranked "), run
        reports = daemon.call("metrics", run=run["name"], since=0)["reports"]
        assert 2 <= len(reports) < 27  # never before min_step; its reports are kept
    info = daemon.cli("info", late[0]["name"]).stdout
    assert "stopped  early-stopped: rung 1 (step 1), below the top 1/3" in info
    ls = daemon.cli("ls", "--study", "asha", "--state", "stopped").stdout
    assert "[early-stopped: rung 1" in ls
