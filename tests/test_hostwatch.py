"""hypd.hostwatch through hypd.watchlink: the real watcher as a local subprocess starting
real runs (hypd.wrapper scripts) in a temporary folder; then WatchLink's local log copy
against a scripted event stream. Every test ends every process it started."""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hypd.watchlink import (
    WATCHER_PATH,
    WATCHER_SOURCE,
    WatchLink,
    WatchLinkError,
    start_local_watcher,
    watcher_command,
)
from hypd.watchproto import (
    Alive,
    Clean,
    Error,
    Exited,
    Hello,
    LaunchFailed,
    LogBytes,
    Pong,
    Signalled,
    Size,
    Started,
    encode_event,
)
from hypd.wrapper import RunScript, script_text

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watcher reads /proc")


# --------------------------------------------------------------------------- helpers

def proc_state(pid: int) -> tuple[str, int, int, str] | None:
    """(state, pgrp, session, start) of a process, or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[2]), int(fields[3]), fields[19].decode()


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead; it waits for a parent that may never reap it)."""
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def marked_pids(prefix: bytes) -> list[int]:
    """Live processes whose HYPD_CTL starts with prefix."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if (b"\0" + env).find(b"\0HYPD_CTL=" + prefix) >= 0 and running(int(name)):
            out.append(int(name))
    return out


def run_script(ctl: Path, *stages: tuple[str, str], setup: str = "") -> str:
    return script_text(RunScript(run=ctl.name, ctl_dir=str(ctl), run_dir=str(ctl / "out"), workdir=str(ctl.parent),
                                 env={}, stages=stages, setup=setup))


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@dataclass
class W:
    """A watcher process, its link, and every event it sent with when it arrived."""

    proc: asyncio.subprocess.Process
    link: WatchLink
    task: asyncio.Task[None]
    events: list[tuple[float, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, ev: Any) -> None:
        self.events.append((time.time(), ev))
        self.arrived.set()

    def of(self, kind: type, run: str | None = None) -> list[Any]:
        return [ev for _, ev in self.events if isinstance(ev, kind) and (run is None or getattr(ev, "run", None) == run)]

    async def wait(self, kind: type, run: str | None = None, timeout: float = 10.0, n: int = 1) -> Any:
        """The n-th event of this kind (for this run); its arrival time is in `at`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [(t, ev) for t, ev in self.events
                     if isinstance(ev, kind) and (run is None or getattr(ev, "run", None) == run)]
            if len(found) >= n:
                self.at = found[n - 1][0]
                return found[n - 1][1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} for {run} in {timeout} s; got {[e for _, e in self.events]}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """End the watcher (closing its stdin) and its reader task."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None and not self.proc.stdin.is_closing():
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.wait_for(self.task, 5)


Spawn = Callable[..., Any]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """spawn(send_logs=True, copies=True, args=()) -> W. At the end: every watcher ends,
    and every run started under tmp_path is killed (its group and its marked processes)."""
    made: list[W] = []
    copies = tmp_path / "copies"

    async def _spawn(send_logs: bool = True, copy: bool = True, args: tuple[str, ...] = ()) -> W:
        cmd = [sys.executable, "-u", str(WATCHER_PATH), "--root", str(tmp_path / "root"), "--tick", "0.05", *args]
        if send_logs:
            cmd.append("--send-logs")
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None and proc.stdin is not None
        link = WatchLink(proc.stdout, proc.stdin, None, (lambda run: str(copies / run)) if copy else None)
        w = W(proc, link, asyncio.create_task(link.run()))
        link.on_event = w.on_event
        made.append(w)
        await link.wait_hello(10)
        return w

    yield _spawn
    for w in made:
        await w.stop()
    for w in made:
        for ev in w.of(Started) + w.of(Alive):
            state = proc_state(ev.pid)
            if state is not None and state[3] == ev.start:
                os.killpg(ev.pid, signal.SIGKILL)
    for pid in marked_pids(str(tmp_path).encode()):
        os.kill(pid, signal.SIGKILL)


def ctl_of(tmp_path: Path, name: str) -> Path:
    return tmp_path / "root" / "runs" / name


# --------------------------------------------------------------------------- launch to clean

@pytest.mark.parametrize("send_logs", [True, False], ids=["send-logs", "sizes"])
async def test_launch_streams_the_log_then_exit_then_clean(spawn: Spawn, tmp_path: Path, send_logs: bool) -> None:
    w = await spawn(send_logs=send_logs)
    assert w.link.hello == Hello(str(tmp_path / "root"), os.cpu_count(), w.link.hello.pidfd, 1, send_logs)
    ctl = ctl_of(tmp_path, "r1")
    await w.link.launch("r1", str(ctl), run_script(ctl, ("main", "echo hello; sleep 0.2; echo bye")), 1.0)
    started = await w.wait(Started, "r1")
    assert started.pid == int((ctl / "pid").read_text())
    assert started.start == proc_state(started.pid)[3]
    exited = await w.wait(Exited, "r1")
    clean = await w.wait(Clean, "r1")
    log = (ctl / "log").read_bytes()
    assert log == b"hello\nbye\n"
    assert exited == Exited("r1", 0, "-", len(log))
    assert clean == Clean("r1", ())
    sizes = [ev.size for ev in w.of(Size, "r1")]
    assert sizes == sorted(sizes) and sizes[-1] == len(log)
    if send_logs:
        assert (tmp_path / "copies" / "r1").read_bytes() == log  # the link wrote the copy
    else:
        assert not (tmp_path / "copies").exists()  # sizes only: the daemon reads the file itself
    kinds = [type(ev) for _, ev in w.events if getattr(ev, "run", None) == "r1"]
    assert kinds.index(Started) < kinds.index(Size) < kinds.index(Exited) < kinds.index(Clean)
    assert not w.of(Error)


@pytest.mark.parametrize("args", [(), ("--no-pidfd",)], ids=["pidfd", "proc-polling"])
async def test_the_exit_is_reported_promptly(spawn: Spawn, tmp_path: Path, args: tuple[str, ...]) -> None:
    w = await spawn(args=args)
    assert w.link.hello.pidfd == (not args and hasattr(os, "pidfd_open"))
    ctl = ctl_of(tmp_path, "quick")
    await w.link.launch("quick", str(ctl), run_script(ctl, ("main", "sleep 0.2")), 1.0)
    assert await w.wait(Exited, "quick") == Exited("quick", 0, "-", 0)
    latency = w.at - (ctl / "exit").stat().st_mtime
    print(f"exit reported {latency * 1000:.1f} ms after the exit file was written ({args or 'pidfd'})")
    assert -0.05 < latency < 1.0
    await w.wait(Clean, "quick")


async def test_a_failing_stage_gives_its_status_and_stage(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn()
    ctl = ctl_of(tmp_path, "fails")
    await w.link.launch("fails", str(ctl), run_script(ctl, ("prep", "true"), ("train", "echo boom; exit 3"),
                                                      ("eval", "true")), 1.0)
    exited = await w.wait(Exited, "fails")
    assert (exited.status, exited.stage) == (3, "train")
    assert b"boom" in (tmp_path / "copies" / "fails").read_bytes()
    await w.wait(Clean, "fails")


async def test_launch_failures(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    await w.link.launch("nodir", str(blocker / "ctl"), "true\n", 1.0)
    assert "cannot prepare" in (await w.wait(LaunchFailed, "nodir")).why
    ctl = ctl_of(tmp_path, "nopid")
    await w.link.launch("nopid", str(ctl), "echo this script writes no pid; exit 4\n", 1.0)
    why = (await w.wait(LaunchFailed, "nopid")).why
    assert "without writing its pid file" in why and "this script writes no pid" in why
    ctl = ctl_of(tmp_path, "twice")
    await w.link.launch("twice", str(ctl), run_script(ctl, ("main", "sleep 0.3")), 1.0)
    await w.link.launch("twice", str(ctl), run_script(ctl, ("main", "true")), 1.0)
    assert "already watched" in (await w.wait(LaunchFailed, "twice")).why
    assert (await w.wait(Exited, "twice")).status == 0  # the first one is not disturbed
    await w.wait(Clean, "twice")
    assert not w.of(Started, "nodir") and not w.of(Started, "nopid")


# --------------------------------------------------------------------------- kill and leftovers

async def test_kill_ends_a_run_that_ignores_sigterm_after_the_grace(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn()
    ctl = ctl_of(tmp_path, "stubborn")
    await w.link.launch("stubborn", str(ctl), run_script(ctl, ("main", "echo up; sleep 1000"), setup="trap '' TERM"), 0.5)
    started = await w.wait(Started, "stubborn")
    await eventually(lambda: (tmp_path / "copies" / "stubborn").exists(), what="the run's first output")
    await w.link.kill("stubborn", 0.5)
    assert (await w.wait(Signalled, "stubborn")).found
    t_signalled = w.at
    exited = await w.wait(Exited, "stubborn")
    waited = w.at - t_signalled
    print(f"ended {waited:.2f} s after SIGTERM (grace 0.5 s)")
    assert waited >= 0.4  # it ignored SIGTERM: only the SIGKILL after the grace ended it
    assert (exited.status, exited.stage) == (None, None)  # no exit file: its group was killed
    await w.wait(Clean, "stubborn")
    assert not running(started.pid)
    assert not marked_pids(str(ctl).encode())


async def test_a_kill_sends_sigterm_once_per_process(spawn: Spawn, tmp_path: Path) -> None:
    # The stage outlives the wrapper (which dies of the SIGTERM at once) and becomes a
    # leftover of the clean phase: it must not get a second SIGTERM from there (to many
    # programs a second one means "quit now, skip the graceful part").
    w = await spawn()
    ctl = ctl_of(tmp_path, "counted")
    code = ("import signal, sys, time\n"
            "def on_term(*_):\n    open(sys.argv[1], 'a').write('term\\n')\n"
            "signal.signal(signal.SIGTERM, on_term)\nprint('ready', flush=True)\n"
            "while True:\n    time.sleep(0.01)\n")
    stage = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(ctl / 'terms'))}"
    await w.link.launch("counted", str(ctl), run_script(ctl, ("main", stage)), 5.0)
    await eventually(lambda: b"ready" in (tmp_path / "copies" / "counted").read_bytes()
                     if (tmp_path / "copies" / "counted").exists() else False, what="the stage to be ready")
    await w.link.kill("counted", 0.5)
    assert (await w.wait(Signalled, "counted")).found
    assert (await w.wait(Exited, "counted")).status is None
    clean = await w.wait(Clean, "counted")
    assert len(clean.ended) == 1 and not running(clean.ended[0])
    assert (ctl / "terms").read_text() == "term\n"


async def test_kill_of_an_unknown_run_finds_nothing(spawn: Spawn) -> None:
    w = await spawn()
    await w.link.kill("nobody", 0.1)
    assert await w.wait(Signalled, "nobody") == Signalled("nobody", False)


async def test_leftovers_are_ended_and_listed_in_clean(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn()
    ctl = ctl_of(tmp_path, "leaky")
    # One child leaves the process group and the session (setsid), one just stays behind in
    # the background; each writes "<pid> <pgrp>" first.
    note = "echo $$ $(cut -d' ' -f5 /proc/$$/stat) > {}; exec sleep 1000"
    stage = (f"setsid sh -c {shlex.quote(note.format(ctl / 'escaped'))} & "
             f"(sh -c {shlex.quote(note.format(ctl / 'behind'))} &); "
             f"while [ ! -s {ctl}/escaped ] || [ ! -s {ctl}/behind ]; do sleep 0.01; done; echo done")
    await w.link.launch("leaky", str(ctl), run_script(ctl, ("main", stage)), 1.0)
    started = await w.wait(Started, "leaky")
    assert await w.wait(Exited, "leaky") == Exited("leaky", 0, "-", 5)
    clean = await w.wait(Clean, "leaky")
    escaped, escaped_pgrp = map(int, (ctl / "escaped").read_text().split())
    behind, behind_pgrp = map(int, (ctl / "behind").read_text().split())
    assert escaped_pgrp == escaped != started.pid  # out of the group: found by its HYPD_CTL
    assert behind_pgrp == started.pid
    assert sorted(clean.ended) == sorted([escaped, behind])
    assert not running(escaped) and not running(behind)


# --------------------------------------------------------------------------- adopting runs

async def test_a_second_watcher_adopts_a_run_with_no_byte_lost_or_doubled(spawn: Spawn, tmp_path: Path) -> None:
    first = await spawn()
    ctl = ctl_of(tmp_path, "long")
    copy = tmp_path / "copies" / "long"
    await first.link.launch("long", str(ctl),
                            run_script(ctl, ("main", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo line $i; sleep 0.02; done")), 1.0)
    started = await first.wait(Started, "long")
    await eventually(lambda: copy.exists() and copy.read_bytes().count(b"\n") >= 5, what="5 lines copied")
    first.proc.kill()  # the watcher dies; the run goes on
    await first.stop()
    assert running(started.pid)
    offset = copy.stat().st_size
    second = await spawn()
    await second.link.watch("long", str(ctl), offset, started.pid, started.start, 1.0)
    assert await second.wait(Alive, "long") == Alive("long", started.pid, started.start)
    exited = await second.wait(Exited, "long")
    assert (exited.status, exited.stage) == (0, "-")
    assert copy.read_bytes() == (ctl / "log").read_bytes() == b"".join(b"line %d\n" % i for i in range(1, 41))
    assert exited.size == copy.stat().st_size
    await second.wait(Clean, "long")


async def test_a_watch_without_pid_reads_the_pid_file(spawn: Spawn, tmp_path: Path) -> None:
    first = await spawn()
    ctl = ctl_of(tmp_path, "nopid")
    await first.link.launch("nopid", str(ctl), run_script(ctl, ("main", "sleep 0.5; echo end")), 1.0)
    started = await first.wait(Started, "nopid")
    await first.stop()  # stdin closed: the watcher leaves, the run goes on
    second = await spawn(copy=False)
    await second.link.watch("nopid", str(ctl), 0, None, None, 1.0)
    assert await second.wait(Alive, "nopid") == Alive("nopid", started.pid, started.start)
    assert (await second.wait(Exited, "nopid")).status == 0
    assert second.of(LogBytes) == [LogBytes("nopid", 0, b"end\n")]


async def test_the_wait_for_the_pid_file_ends(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn(copy=False, args=("--pid-wait", "0.3"))
    # A launch whose script never writes its pid: reported, and not left running.
    ctl = ctl_of(tmp_path, "mute")
    await w.link.launch("mute", str(ctl), f"echo no pid here; echo $$ > {ctl}/me; exec sleep 1000\n", 1.0)
    why = (await w.wait(LaunchFailed, "mute")).why
    assert "no pid file within 0.3 s" in why and "no pid here" in why
    script_pid = int((ctl / "me").read_text())
    await eventually(lambda: not running(script_pid), what="the script to be killed")
    # A watch without pid of a run that never wrote one: it ended, how is unknown.
    ctl = ctl_of(tmp_path, "never")
    ctl.mkdir(parents=True)
    await w.link.watch("never", str(ctl), 0, None, None, 1.0)
    assert await w.wait(Exited, "never") == Exited("never", None, None, 0)
    assert w.at - w.events[0][0] >= 0.25
    await w.wait(Clean, "never")


@pytest.mark.parametrize("exit_file, status", [("5 main\n", (5, "main")), (None, (None, None))])
async def test_a_reused_pid_is_not_the_run(spawn: Spawn, tmp_path: Path, exit_file: str | None,
                                           status: tuple[int | None, str | None]) -> None:
    ctl = ctl_of(tmp_path, "gone")
    ctl.mkdir(parents=True)
    (ctl / "log").write_bytes(b"old output\n")
    if exit_file:
        (ctl / "exit").write_text(exit_file)
    # A live process holds the pid now, with another start time than the one recorded.
    other = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        (ctl / "pid").write_text(f"{other.pid}\n")
        w = await spawn(copy=False)
        await w.link.watch("gone", str(ctl), 4, other.pid, str(int(proc_state(other.pid)[3]) - 1), 1.0)
        exited = await w.wait(Exited, "gone")
        assert (exited.status, exited.stage) == status and exited.size == 11
        assert w.of(LogBytes, "gone") == [LogBytes("gone", 4, b"output\n")]  # from the offset asked
        assert not w.of(Alive)
        assert (await w.wait(Clean, "gone")).ended == ()
        assert running(other.pid)  # never signalled: it is not the run's
    finally:
        other.kill()
        await other.wait()


async def test_watch_again_sends_again_from_the_offset(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn(copy=False)  # raw frames reach on_event
    ctl = ctl_of(tmp_path, "again")
    await w.link.launch("again", str(ctl), run_script(ctl, ("main", "printf abc; sleep 0.5; printf def")), 1.0)
    started = await w.wait(Started, "again")
    assert await w.wait(LogBytes, "again") == LogBytes("again", 0, b"abc")
    await w.link.watch("again", str(ctl), 1, started.pid, started.start, 1.0)
    assert await w.wait(LogBytes, "again", n=2) == LogBytes("again", 1, b"bc")
    assert await w.wait(LogBytes, "again", n=3) == LogBytes("again", 3, b"def")
    assert await w.wait(Exited, "again") == Exited("again", 0, "-", 6)
    assert not w.of(Alive)  # an already watched run is not announced again


async def test_an_unwatched_run_is_forgotten_but_not_disturbed(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn(send_logs=False, copy=False)
    ctl = ctl_of(tmp_path, "dropped")
    await w.link.launch("dropped", str(ctl), run_script(ctl, ("main", "sleep 0.3; echo done")), 1.0)
    started = await w.wait(Started, "dropped")
    await w.link.unwatch("dropped")
    await eventually(lambda: (ctl / "exit").exists(), what="the run to end")
    await asyncio.sleep(0.3)
    await w.link.ping(timeout=5)
    assert (ctl / "exit").read_text() == "0 -\n" and not running(started.pid)
    assert not w.of(Exited) and not w.of(Clean)
    await w.link.kill("dropped", 0.1)
    assert (await w.wait(Signalled, "dropped")).found is False


# --------------------------------------------------------------------------- bytes, EOF, garbage

@pytest.mark.parametrize("send_logs", [True, False], ids=["send-logs", "sizes"])
async def test_a_long_line_and_binary_bytes_pass_intact(spawn: Spawn, tmp_path: Path, send_logs: bool) -> None:
    w = await spawn(send_logs=send_logs)
    ctl = ctl_of(tmp_path, "big")
    expected = b"x" * (3 << 20) + b"\n" + bytes(range(256)) * 4
    code = "import sys; sys.stdout.buffer.write(b'x' * (3 << 20) + b'\\n' + bytes(range(256)) * 4)"
    await w.link.launch("big", str(ctl), run_script(ctl, ("main", f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}")), 1.0)
    exited = await w.wait(Exited, "big", timeout=20)
    assert exited == Exited("big", 0, "-", len(expected))
    assert (ctl / "log").read_bytes() == expected
    if send_logs:
        assert (tmp_path / "copies" / "big").read_bytes() == expected
        sizes = [ev.size for ev in w.of(Size, "big")]
        assert len(sizes) >= 4 and max(b - a for a, b in zip([0, *sizes], sizes)) <= 1 << 20  # frames of <= 1 MiB
    await w.wait(Clean, "big")


async def test_the_watcher_leaves_at_eof_and_the_run_goes_on(spawn: Spawn, tmp_path: Path) -> None:
    proc, link = await start_local_watcher(str(tmp_path / "root"), send_logs=False, tick=0.05)
    events: list[Any] = []
    link.on_event = events.append
    task = asyncio.create_task(link.run())
    try:
        await link.wait_hello(10)
        ctl = ctl_of(tmp_path, "lasting")
        await link.launch("lasting", str(ctl), run_script(ctl, ("main", "sleep 1000")), 1.0)
        started = await eventually(lambda: [ev for ev in events if isinstance(ev, Started)], what="started")
        pid = started[0].pid
        assert proc.stdin is not None
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        await asyncio.wait_for(task, 5)
        assert link.closed
        assert running(pid) and proc_state(pid)[3] == started[0].start
        with pytest.raises(WatchLinkError):
            await link.ping()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for ev in events:
            if isinstance(ev, Started) and running(ev.pid):
                os.killpg(ev.pid, signal.SIGKILL)


async def test_garbage_commands_give_errors_and_the_watcher_keeps_working(spawn: Spawn, tmp_path: Path) -> None:
    w = await spawn()
    garbage = [b"not json", b"[1, 2]", b'{"op":"fly"}', b'{"no":"op"}', b'{"op":"launch","run":"x"}',
               b'{"op":"watch","run":"x","ctl":"/c","pid":"12"}', b'{"op":"kill","run":"x","grace":"soon"}',
               b'{"op":"watch","run":"x","ctl":"/c","offset":-1}', b"\xff\xfe", b"[" * 100000, b'{"op":[1]}',
               b'{"op":{"a":1}}']
    assert w.proc.stdin is not None
    w.proc.stdin.write(b"\n".join(garbage) + b"\n\n")
    await w.link.ping(timeout=10)
    errors = w.of(Error)
    assert len(errors) == len(garbage), errors
    assert "unknown op 'fly'" in errors[2].why
    assert errors[4].run == "x" and "ctl must be a non-empty str" in errors[4].why
    ctl = ctl_of(tmp_path, "fine")
    await w.link.launch("fine", str(ctl), run_script(ctl, ("main", "echo fine")), 1.0)
    assert (await w.wait(Exited, "fine")).status == 0
    assert w.proc.returncode is None


async def test_watcher_command_runs_the_source_under_sh_and_expands_the_root(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", watcher_command("~/hw root", True, 0.05), env=env,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    events: list[Any] = []
    link = WatchLink(proc.stdout, proc.stdin, events.append)
    task = asyncio.create_task(link.run())
    try:
        hello = await link.wait_hello(10)
        assert hello.root == os.path.realpath(home / "hw root") and (home / "hw root").is_dir()
        await link.ping(timeout=10)
        assert Pong() in events
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 5)
        await asyncio.wait_for(task, 5)


def test_the_watcher_source_is_python36_and_standard_library_only() -> None:
    tree = ast.parse(WATCHER_SOURCE, feature_version=(3, 6))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "__future__" not in imported
    assert len(watcher_command("~/hypd", True, 0.1)) < 100_000  # one argument to the remote shell (128 KiB max)


# --------------------------------------------------------------------------- WatchLink on a scripted stream

class Scripted:
    """The watcher's side of a link, played by the test: events in, commands recorded."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: list[bytes] = []

    async def read(self, n: int = -1) -> bytes:
        return await self.chunks.get()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None

    def send(self, *events: Any) -> None:
        self.chunks.put_nowait(b"".join(encode_event(ev) for ev in events))

    def end(self) -> None:
        self.chunks.put_nowait(b"")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[tuple[Scripted, WatchLink, list[Any]]]:
    pipe = Scripted()
    events: list[Any] = []
    link = WatchLink(pipe, pipe, events.append, lambda run: str(tmp_path / "copies" / run), retry_after=0.05)
    task = asyncio.create_task(link.run())
    pipe.send(Hello("/r", 1, True, 1, send_logs=True))
    await link.wait_hello(5)
    events.clear()
    yield pipe, link, events
    pipe.end()
    await asyncio.wait_for(task, 5)


async def test_the_copy_takes_only_new_bytes_and_asks_again_after_a_gap(
        scripted: tuple[Scripted, WatchLink, list[Any]], tmp_path: Path) -> None:
    pipe, link, events = scripted
    copy = tmp_path / "copies" / "r"
    await link.watch("r", "/ctl", 0, 5, "9", 1.0)
    pipe.send(LogBytes("r", 0, b"abc"), LogBytes("r", 1, b"bcdef"), LogBytes("r", 3, b"de"), LogBytes("r", 6, b""))
    await settle()
    assert copy.read_bytes() == b"abcdef"  # overlaps add only what is new
    assert events == [Size("r", 3), Size("r", 6)]
    pipe.written.clear()
    pipe.send(LogBytes("r", 10, b"kl"), LogBytes("r", 12, b"mn"), Exited("r", 0, "-", 14), Clean("r", ()))
    await settle()
    assert copy.read_bytes() == b"abcdef"  # a gap is not written...
    assert pipe.written == [b'{"op":"watch","run":"r","ctl":"/ctl","offset":6,"pid":5,"start":"9","grace":1.0}\n']
    assert events == [Size("r", 3), Size("r", 6)]  # ...and exit waits for the copy
    # The watcher answers from 6 (then, having forgotten the run, says exit and clean again).
    pipe.send(LogBytes("r", 6, b"ghijklmn"), Exited("r", 0, "-", 14), Clean("r", ()))
    await settle()
    assert copy.read_bytes() == b"abcdefghijklmn"
    assert events[2:] == [Size("r", 14), Exited("r", 0, "-", 14), Clean("r", ())]  # each once
    assert len(pipe.written) == 1


async def test_a_failing_write_is_said_once_and_asked_again(
        scripted: tuple[Scripted, WatchLink, list[Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe, link, events = scripted
    (tmp_path / "copies").write_text("a file where the folder should be")
    await link.launch("r", "/ctl", "script", 1.0)
    pipe.send(Started("r", 7, "70"))
    pipe.written.clear()
    with caplog.at_level(logging.WARNING, logger="hypd.watchlink"):
        pipe.send(LogBytes("r", 0, b"abc"), LogBytes("r", 3, b"def"))
        await settle()
        assert len([r for r in caplog.records if "cannot write" in r.message]) == 1
        await eventually(lambda: pipe.written, what="a re-request")
        assert b'"offset":0,"pid":7,"start":"70"' in pipe.written[0]
        (tmp_path / "copies").unlink()  # space again
        pipe.send(LogBytes("r", 0, b"abcdef"))
        await settle()
    assert (tmp_path / "copies" / "r").read_bytes() == b"abcdef"
    assert any("works again" in r.message for r in caplog.records)
    assert events == [Started("r", 7, "70"), Size("r", 6)]


async def test_without_a_copy_path_frames_and_sizes_pass_through(tmp_path: Path) -> None:
    pipe = Scripted()
    events: list[Any] = []
    link = WatchLink(pipe, pipe, events.append)
    task = asyncio.create_task(link.run())
    stream = [Hello("/r", 2, True, 1, send_logs=False), LogBytes("r", 0, b"x"), Size("r", 9), Exited("r", None, None, 9),
              Clean("r", (3,)), Error("why", "r")]
    pipe.send(*stream)
    await settle()
    assert events == stream
    assert await link.wait_hello(1) == stream[0]
    pipe.end()
    await asyncio.wait_for(task, 5)


async def test_hello_and_ping_fail_cleanly(tmp_path: Path) -> None:
    pipe = Scripted()
    link = WatchLink(pipe, pipe)
    task = asyncio.create_task(link.run())
    with pytest.raises(WatchLinkError, match="no hello"):
        await link.wait_hello(0.05)
    with pytest.raises(WatchLinkError, match="no pong"):
        await link.ping(timeout=0.05)
    pipe.send(Pong())
    await settle()
    pipe.end()
    await asyncio.wait_for(task, 5)
    with pytest.raises(WatchLinkError, match="ended before saying hello"):
        await link.wait_hello(1)
    with pytest.raises(WatchLinkError):
        await link.kill("r", 1)
