"""End to end, what Diviner's and the YAML runner's users rely on: a keepalive watchdog for
hung runs, replicates, a readable leaderboard, exports, continuing a grid. A real daemon,
real processes, the real CLI."""

from __future__ import annotations

import pytest

from conftest import DaemonProc

pytestmark = pytest.mark.slow


def test_a_silent_run_is_ended_as_hung_and_retried_and_a_run_may_widen_its_window(daemon: DaemonProc) -> None:
    # x=1 prints once and then hangs; x=2 asks for a wider window, is silent past the
    # study's, and completes.
    daemon.write_study("hang", """
        [study]
        name = "hang"
        objective = { metric = "loss" }
        algorithm = "grid"
        keepalive = "2s"
        timeout = "10m"
        retries = 1
        [params]
        x = { values = [1, 2] }
        [run]
        command = '''python3 -u -c "
        import time
        print('METRICS: loss=1')
        if {x} == 1:
            time.sleep(300)
        print('HYPD: keepalive 30s')
        time.sleep(4)
        print('METRICS: loss=0.5')
        "'''
    """)
    daemon.cli("submit", str(daemon.home / "studies" / "hang.toml"))
    hung = daemon.wait_state("hang:1", "failed", timeout=30)
    assert hung["reason"] == "no output for 2s (keepalive)"
    retry = daemon.wait_state("hang:3", "failed", timeout=30)  # retried like any failure
    assert retry["trial"] == hung["trial"] and retry["reason"] == "no output for 2s (keepalive)"
    widened = daemon.wait_state("hang:2", "completed", timeout=30)
    assert widened["objective"] == 0.5
    assert "keepalive window set to 30s by the run" in (daemon.home / "daemon.log").read_text()
