"""Hostile input on the daemon's socket: every line gets one JSON reply, the connection
and the daemon carry on, and subscribers that never read cost a bounded amount of memory."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypd.ipc import MAX_LINE, socket_path
from hypd.server import MAX_BEHIND
from tests.conftest import DaemonProc, wait_for

pytestmark = pytest.mark.slow


class RawConnection:
    """A socket to the daemon that sends exactly the bytes a test gives it."""

    def __init__(self, home: Path, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(str(socket_path(home)))
        self.file = self.sock.makefile("rb")
        self.hello = json.loads(self.file.readline())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"no whole reply line: {line[:200]!r}"
        msg = json.loads(line)
        assert isinstance(msg, dict) and isinstance(msg.get("ok"), bool), msg
        assert msg["ok"] or set(msg["error"]) == {"code", "message"}, msg
        return msg

    def ask(self, data: bytes) -> dict[str, Any]:
        self.send(data)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@contextmanager
def raw(home: Path, rcvbuf: int | None = None) -> Iterator[RawConnection]:
    conn = RawConnection(home, rcvbuf)
    try:
        yield conn
    finally:
        conn.close()


PING = b'{"v":1,"id":1,"op":"ping","args":{}}\n'


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("line", [
    b"[" * 100_000 + b"\n",  # deeper than json's recursion allows
    b'{"v":1,"id":' + b"7" * 5000 + b',"op":"ping"}\n',  # more digits than int() converts
    b'{"v":1,"id":1,"op":"suggest","args":{"study":"x","params":{"a":' + b"1" * 5000 + b"}}}\n",
    b'{"v":1,"id":1,"op":"ls","args":{"limit":' + b"9" * 4000 + b"}}\n",  # an int SQLite cannot take
    b'{"v":1,"id":1,"op":"logs","args":{"run":"x:1","offset":-1,"limit":-5}}\n',
    b'{"v":1,"id":1,"op":"ping","args":{}' + b" " * 100 + b"}\xff\xfe\n",
    b'\x00\x01\x02\n',
    b'{"v":NaN,"id":Infinity}\n',
    b'{"v":1,"id":"\\ud800","op":"ping"}\n',  # accepted: the id goes back as it came
], ids=["nested", "digits-id", "digits-param", "int64-overflow", "negative", "trailing-bytes", "binary", "nan",
        "lone-surrogate"])
def test_an_odd_line_gets_an_error_reply_and_the_connection_carries_on(daemon: DaemonProc, line: bytes) -> None:
    with raw(daemon.home) as conn:
        reply = conn.ask(line)
        assert reply["ok"] is (b"ud800" in line), reply
        assert conn.ask(PING)["ok"] is True
    log = (daemon.home / "daemon.log").read_text()
    assert "Unhandled exception" not in log and "Traceback" not in log


def test_nested_json_and_a_5000_digit_integer_are_named(daemon: DaemonProc) -> None:
    with raw(daemon.home) as conn:
        nested = conn.ask(b"[" * 100_000 + b"\n")["error"]
        digits = conn.ask(b'{"v":1,"id":' + b"7" * 5000 + b"}\n")["error"]
    assert nested == {"code": "bad_request", "message": "not a JSON line hypd reads: nested too deeply"}
    assert digits == {"code": "bad_request", "message": "not a JSON line hypd reads: a number with too many digits"}


def test_an_oversized_line_is_refused_and_the_daemon_stays_up(daemon: DaemonProc) -> None:
    with raw(daemon.home) as conn:
        conn.send(b"[" * (MAX_LINE + 10) + b"\n")
        assert conn.reply()["error"]["code"] == "too_large"
    assert daemon.call("ping")["pid"] == daemon.proc.pid  # type: ignore[union-attr]


# One JSON value of any shape, as a request or as its arguments; and bytes of any kind.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
ops = st.sampled_from(["ping", "ls", "info", "logs", "metrics", "kill", "retry", "pause", "resume",
                       "leaderboard", "best", "suggest", "studies", "hosts",
                       "submit", "nope"])
requests = st.one_of(
    st.fixed_dictionaries({"v": st.just(1), "id": st.integers(0, 1 << 40), "op": ops,
                           "args": st.dictionaries(st.sampled_from(["run", "study", "target", "state", "limit",
                                                                    "offset", "since", "name", "params", "text",
                                                                    "path", "undo", "tail", "as_name"]),
                                                   json_values, max_size=4)}).map(
        lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(requests, min_size=1, max_size=5))
def test_fuzzed_requests_each_get_one_reply_line(daemon: DaemonProc, lines: list[bytes]) -> None:
    """Whatever is sent (no op here stops the daemon or changes hosts), every non-blank line
    gets exactly one JSON line with ok true/false, in order, and the daemon stays up."""
    with raw(daemon.home) as conn:
        for line in lines:
            if not line.strip():
                continue
            msg = conn.ask(line + b"\n")
            assert set(msg) <= {"v", "id", "ok", "result", "error"}, msg
        assert conn.ask(PING)["ok"] is True
    assert daemon.proc is not None and daemon.proc.poll() is None


CHATTY = """
[study]
name = "{name}"
objective = {{ metric = "loss", goal = "minimize" }}
algorithm = "grid"
parallel = 1
retries = 0

[params]
x = {{ type = "choice", values = [1] }}

[run]
command = "python3 -c 'import sys\\nfor i in range({lines}):\\n    sys.stdout.write(\\"x\\" * 999 + \\"\\\\n\\")\\nprint(\\"METRICS: loss=1\\")'"
"""


OUTPUT = 300_000 * 1000  # bytes of log: far more than MAX_BEHIND, all of it sent to each subscriber


def test_subscribers_that_never_read_are_dropped_and_told_why_on_their_next_subscribe(daemon: DaemonProc) -> None:
    subscribe = b'{"v":1,"id":1,"op":"subscribe","args":{"topics":["log"]}}\n'
    # A warm-up study first: what running a study costs the daemon is not counted below.
    path = daemon.write_study("warm", CHATTY.format(name="warm", lines=2000))
    daemon.call("submit", path=str(path), text=path.read_text(), as_name=None)
    daemon.wait_finished("warm")
    assert daemon.proc is not None
    before = rss_mib(daemon.proc.pid)
    sleepers = [RawConnection(daemon.home, rcvbuf=4096) for _ in range(3)]
    for s in sleepers:
        assert s.ask(subscribe)["ok"] is True
    path = daemon.write_study("chatty", CHATTY.format(name="chatty", lines=OUTPUT // 1000))
    daemon.call("submit", path=str(path), text=path.read_text(), as_name=None)
    peak = before
    deadline = time.monotonic() + 240
    while not any(s["name"] == "chatty" and s.get("finished") for s in daemon.call("studies")):
        assert time.monotonic() < deadline, "the chatty study did not finish"
        peak = max(peak, rss_mib(daemon.proc.pid))
        time.sleep(0.1)
    # Each sleeper was cut: its socket ends after what the kernel held (a timeout here
    # would mean the daemon kept it).
    for s in sleepers:
        s.sock.settimeout(30)
        s.file.read()
        s.close()
    # The same client (this process) is told on its next subscribe why it was dropped.
    with raw(daemon.home) as conn:
        ack = conn.ask(subscribe)
    assert ack["ok"] is True and "MiB behind" in ack["result"]["dropped"], ack
    log = (daemon.home / "daemon.log").read_text()
    assert log.count("dropped a subscriber") == 3
    # 300 MB went to each of 3 subscribers that never read: the daemon held at most their
    # buffers (3 x MAX_BEHIND) and the copies of one 8 MiB batch of log being read, never
    # the stream (which it held whole before).
    growth = peak - before
    assert growth < 3 * MAX_BEHIND / (1 << 20) + 32 < OUTPUT / (1 << 20) / 3, f"RSS {before:.0f} -> peak {peak:.0f} MiB"
    wait_for(lambda: daemon.call("ping"), 5)


async def test_the_dashboard_says_when_its_client_was_dropped(daemon: DaemonProc) -> None:
    """The notice goes to the client process that fell behind: here this test's own, whose
    sleeping subscriber is dropped first; the dashboard's next subscribe shows it."""
    from tests.test_tui import SIZE, app_for, until

    subscribe = b'{"v":1,"id":1,"op":"subscribe","args":{"topics":["log"]}}\n'
    sleeper = RawConnection(daemon.home, rcvbuf=4096)
    assert sleeper.ask(subscribe)["ok"] is True
    path = daemon.write_study("chatty", CHATTY.format(name="chatty", lines=40_000))  # 40 MB > MAX_BEHIND
    await asyncio.to_thread(daemon.call, "submit", path=str(path), text=path.read_text(), as_name=None)
    await asyncio.to_thread(daemon.wait_finished, "chatty")
    sleeper.close()
    assert "dropped a subscriber" in (daemon.home / "daemon.log").read_text()
    app = app_for(daemon)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.loaded, what="the load")
        toasts = [n.message for n in app._notifications]
        assert any(t.startswith("dropped: you fell") and "MiB behind" in t for t in toasts), toasts
