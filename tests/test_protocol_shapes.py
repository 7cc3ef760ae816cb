"""A real daemon's replies and events keep to the shapes hypd/ipc.py declares (REPLIES,
EVENTS): every op a user can send, and every event topic, checked field by field."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hypd.ipc import EVENTS, REPLIES, Client, mismatch, socket_path
from tests.conftest import DaemonProc, wait_for

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "{algorithm}"
max_trials = 3
parallel = 2
retries = 0
{extra}
[params]
x = {{ type = "float", low = 0, high = 1 }}

[run]
command = "python3 -c 'import time\\nfor i in range(3):\\n    print(\\"METRICS: loss=%g\\" % ({{x}} + i), flush=True)\\n    time.sleep(0.05)'"
"""


def checked(op: str, reply: Any) -> Any:
    why = mismatch(REPLIES[op], reply, op)
    assert why is None, why
    return reply


def test_every_reply_and_event_has_its_declared_shape(daemon: DaemonProc) -> None:
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with Client(socket_path(daemon.home), timeout=None) as c:
            for event in c.subscribe(["run", "study", "host", "log"]):
                events.append(event)
                if len(events) > 500:
                    return

    threading.Thread(target=listen, daemon=True).start()
    path = daemon.write_study("shapes", STUDY.format(name="shapes", algorithm="random", extra=""))
    checked("submit", daemon.call("submit", path=str(path), text=path.read_text(), as_name=None))
    daemon.wait_finished("shapes")
    checked("ping", daemon.call("ping"))
    runs = checked("ls", daemon.call("ls", state=None, study=None, limit=None))
    name = runs[0]["name"]
    checked("info", daemon.call("info", run=name))
    checked("logs", daemon.call("logs", run=name, offset=0, limit=1000, tail=None))
    checked("metrics", daemon.call("metrics", run=name, since=0))
    checked("leaderboard", daemon.call("leaderboard", study="shapes", limit=None))
    checked("best", daemon.call("best", study="shapes"))
    checked("studies", daemon.call("studies"))
    page = checked("export", daemon.call("export", study="shapes", limit=2))
    checked("export", daemon.call("export", study="shapes", after=page["next"]))
    checked("export", daemon.call("export", study="shapes", reports=True))
    checked("hosts", daemon.call("hosts"))
    checked("retry", daemon.call("retry", target=name, state=None))
    checked("kill", daemon.call("kill", target="shapes"))
    checked("pause", daemon.call("pause", study="shapes"))
    checked("resume", daemon.call("resume", study="shapes"))
    checked("suggest", daemon.call("suggest", study="shapes", params={"x": 0.5}))
    checked("extend", daemon.call("extend", study="shapes", trials=1))
    checked("studies", daemon.call("studies", archived=True))
    checked("ls", daemon.call("ls", state=None, study=None, limit=None, archived=True))
    checked("hosts_drain", daemon.call("hosts_drain", name="local", undo=False))
    checked("hosts_drain", daemon.call("hosts_drain", name="local", undo=True))
    wait_for(lambda: {e["event"] for e in events} >= {"run", "study", "host", "log"}, 30, what="every topic")
    for event in events:
        why = mismatch(EVENTS[event["event"]], event["data"], f"event {event['event']}")
        assert why is None, why
    # A study of its own to archive and remove (none of its runs going).
    path = daemon.write_study("gone", STUDY.format(name="gone", algorithm="random", extra="") + 'fetch = ["*"]\n')
    daemon.call("submit", path=str(path), text=path.read_text(), as_name=None)
    daemon.wait_finished("gone")
    checked("pull", daemon.call("pull", run="gone:1"))
    assert checked("info", daemon.call("info", run="gone:1"))["artifacts"] is not None
    checked("best", daemon.call("best", study="gone"))
    checked("archive", daemon.call("archive", study="gone", undo=False))
    checked("archive", daemon.call("archive", study="gone", undo=True))
    checked("rm", daemon.call("rm", study="gone", files=True))
    wait_for(lambda: any(e["event"] == "study" and e["data"].get("state") == "removed" for e in list(events)), 30,
             what="the removed study's event")
    for event in list(events):
        why = mismatch(EVENTS[event["event"]], event["data"], f"event {event['event']}")
        assert why is None, why
    checked("stop", daemon.call("stop", kill_runs=True))
