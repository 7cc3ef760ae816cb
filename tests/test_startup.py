"""Start-up: the socket answers before the studies are loaded (the first Ax study imports
Ax, seconds); studies still loading are shown so, and writes wait for them."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import DaemonProc, wait_for
from tests.test_e2e_ax import branin

pytestmark = pytest.mark.slow


def test_the_socket_answers_while_ax_studies_load(daemon: DaemonProc) -> None:
    for name in ("ax1", "ax2"):
        daemon.cli("submit", branin(daemon, name=name, trials=2, parallel=2, sleep=0))
    for name in ("ax1", "ax2"):
        daemon.wait_finished(name, timeout=150)
    daemon.stop()
    began = time.monotonic()
    daemon.cli("serve", "--detach")  # returns once the socket answers
    try:
        answered = time.monotonic() - began
        first = {s["name"]: s for s in daemon.call("studies")}
        assert first["ax1"] == {"name": "ax1", "state": "loading"}, first
        assert "loading" in daemon.cli("studies").stdout
        assert daemon.call("ping")["pid"]
        # A write waits for the loads rather than being refused, and then acts.
        assert daemon.call("pause", study="ax2") == {"study": "ax2", "paused": True}
        loaded = time.monotonic() - began
        studies = {s["name"]: s for s in daemon.call("studies")}
        assert "counts" in studies["ax1"] and studies["ax2"]["paused"] is True
        log = (daemon.home / "daemon.log").read_text()
        took = float(re.findall(r"started: 2 studies loaded in ([0-9.]+) s", log)[-1])
        # The socket did not wait for the loads: it answered in well under the time they took.
        assert answered < took / 2 and answered < loaded / 2, (answered, took, loaded)
    finally:
        daemon.cli("stop", check=False)
        wait_for(lambda: not (daemon.home / "run" / "hypd.sock").exists(), 30, what="the daemon to stop")
