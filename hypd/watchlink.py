"""The daemon's end of one host watcher (hypd/hostwatch.py): commands out, events in.

A `WatchLink` wraps the watcher's stdin (a writer) and stdout (an async byte reader): an
asyncio subprocess's pipes for the local host, asyncssh's binary-mode process streams for
an SSH host. Its `run()` task reads events and hands them to `on_event`.

In send-logs mode (SSH hosts; the watcher's hello says which) the log bytes arrive in
frames, which the link writes into the run's local copy (`log_path_for(run)`; None: pass
the frames on as `LogBytes`) itself and reports as `Size(run, local size)`:
- a frame that overlaps what the copy has adds only the new part, so no byte is doubled;
- a frame past the copy's end (a gap: bytes lost to a failed write) is not written, the
  watcher is asked to send again from the copy's size (`watch(offset=...)`);
- a failed write (disk full) is said once in the daemon's log and asked again a bit later;
- `Exited` is held back until the copy has every byte up to the exit's size, and the
  run's `Clean` with it, so the daemon sees a run end only with its whole log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hypd.private import append_private
from hypd.watchproto import (
    Alive,
    Clean,
    Error,
    EventDecoder,
    Exited,
    Hello,
    LogBytes,
    Pong,
    Size,
    Started,
    encode_kill,
    encode_launch,
    encode_ping,
    encode_unwatch,
    encode_watch,
)

log = logging.getLogger("hypd.watchlink")

WATCHER_PATH = Path(__file__).with_name("hostwatch.py")
WATCHER_SOURCE = WATCHER_PATH.read_text()
READ_SIZE = 1 << 16
REASK_AFTER = 5.0  # seconds before the same re-request is sent again (it cannot get lost on a stream)


class WatchLinkError(ConnectionError):
    """The watcher cannot be reached (it ended, or its stream broke); one line of text."""


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass
class _Run:
    """What the link knows of a run it launched or watches: enough to ask again."""

    ctl: str
    pid: int | None
    start: str | None
    grace: float
    asked_from: int | None = None  # a re-request from this offset is on its way
    asked_at: float = 0.0
    failing: bool = False  # local writes fail (said once in the log, until one works again)
    retry: asyncio.TimerHandle | None = None  # the re-request scheduled after a failed write
    held: list[Any] = field(default_factory=list)  # Exited (then Clean) until the copy catches up
    done: bool = False  # its Exited was delivered; repeats (answers to a re-request) are dropped
    cleaned: bool = False  # its Clean was delivered; likewise


class WatchLink:
    def __init__(self, reader: ByteReader, writer: ByteWriter, on_event: Callable[[Any], None] | None = None,
                 log_path_for: Callable[[str], str | None] | None = None, *, retry_after: float = 1.0) -> None:
        self.reader = reader
        self.writer = writer
        self.on_event = on_event or (lambda ev: None)
        self.log_path_for = log_path_for or (lambda run: None)
        self.retry_after = retry_after  # seconds before asking again after a failed local write
        self.hello: Hello | None = None
        self.closed = False
        self._decoder = EventDecoder()
        self._runs: dict[str, _Run] = {}
        self._lock = asyncio.Lock()  # one command's write+drain at a time
        self._hello_seen = asyncio.Event()
        self._pongs = 0
        self._pong_seen = asyncio.Event()
        self._tasks: set[asyncio.Future[Any]] = set()

    # -- commands

    async def launch(self, run: str, ctl: str, script: str, grace: float) -> None:
        self._track(run, _Run(ctl, None, None, grace))
        await self._send(encode_launch(run, ctl, script, grace))

    async def watch(self, run: str, ctl: str, offset: int, pid: int | None, start: str | None,
                    grace: float) -> None:
        self._track(run, _Run(ctl, pid, start, grace))
        await self._send(encode_watch(run, ctl, offset, pid, start, grace))

    async def kill(self, run: str, grace: float) -> None:
        await self._send(encode_kill(run, grace))

    async def unwatch(self, run: str) -> None:
        self._forget(run)
        await self._send(encode_unwatch(run))

    async def ping(self, timeout: float | None = None) -> None:
        """Send a ping; with a timeout, also wait for its pong (WatchLinkError if none comes)."""
        seen = self._pongs
        self._pong_seen.clear()
        await self._send(encode_ping())
        if timeout is None:
            return
        deadline = time.monotonic() + timeout
        while self._pongs == seen:
            if self.closed:
                raise WatchLinkError("the watcher ended")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WatchLinkError(f"no pong within {timeout:g} s")
            await _wait_event(self._pong_seen, left)
            self._pong_seen.clear()

    async def wait_hello(self, timeout: float) -> Hello:
        """The watcher's hello (run() must be running); WatchLinkError if it ends or is late."""
        await _wait_event(self._hello_seen, timeout)
        if self.hello is None:
            raise WatchLinkError("the watcher ended before saying hello" if self.closed
                                 else f"no hello from the watcher within {timeout:g} s")
        return self.hello

    async def _send(self, line: bytes) -> None:
        if self.closed:
            raise WatchLinkError("the watcher ended")
        async with self._lock:
            try:
                self.writer.write(line)
                await self.writer.drain()
            except Exception as exc:  # asyncio and asyncssh raise different things for a broken pipe
                raise WatchLinkError(f"cannot write to the watcher: {type(exc).__name__}: {exc}") from None

    # -- events

    async def run(self) -> None:
        """Read and dispatch events until the watcher's output ends."""
        try:
            while True:
                try:
                    data = await self.reader.read(READ_SIZE)
                except Exception as exc:  # a broken connection reads as the end
                    log.debug("reading from the watcher failed: %s", exc)
                    data = b""
                if not data:
                    break
                for ev in self._decoder.feed(data):
                    self._dispatch(ev)
        finally:
            self.closed = True
            self._hello_seen.set()
            self._pong_seen.set()
            self.close()

    def close(self) -> None:
        """Stop background re-requests (run() does this when the stream ends)."""
        for ref in self._runs.values():
            if ref.retry is not None:
                ref.retry.cancel()
                ref.retry = None
        for task in self._tasks:
            task.cancel()

    def _emit(self, ev: Any) -> None:
        try:
            self.on_event(ev)
        except Exception:  # the daemon's bug must not stop the stream of every other run
            log.exception("handling watcher event %r failed", ev)

    def _dispatch(self, ev: Any) -> None:
        if isinstance(ev, Hello):
            self.hello = ev
            self._hello_seen.set()
        elif isinstance(ev, Pong):
            self._pongs += 1
            self._pong_seen.set()
        elif isinstance(ev, (Started, Alive)):
            ref = self._runs.get(ev.run)
            if ref is not None:
                ref.pid, ref.start = ev.pid, ev.start
        elif isinstance(ev, LogBytes):
            path = self._copy_path(ev.run)
            if path is not None:
                self._copy(ev, path)
                return
        elif isinstance(ev, Exited):
            if not self._exited(ev):
                return
        elif isinstance(ev, Clean):
            ref = self._runs.get(ev.run)
            if ref is not None:
                if ref.held:
                    ref.held.append(ev)
                    return
                repeat, ref.cleaned = ref.cleaned, True
                if ref.asked_from is None:
                    self._forget(ev.run)  # the watcher forgot it; so do we (unless a repeat is on its way)
                if repeat:
                    return
        elif isinstance(ev, Error) and ev.why.startswith("undecodable"):
            log.warning("watcher stream: %s", ev.why)
        self._emit(ev)

    def _exited(self, ev: Exited) -> bool:
        """Whether to deliver this Exited now (else it is held, or a repeat)."""
        ref = self._runs.get(ev.run)
        if ref is None:
            return True
        if ref.done:
            ref.asked_from = None  # the watcher answered our re-request in full: exit comes last
            return False  # the daemon has it already
        path = self._copy_path(ev.run)
        if path is not None:
            try:
                size = _local_size(path) or 0
            except OSError:
                size = 0
            if size < ev.size:
                ref.held = [ev]
                if ref.retry is None:
                    self._ask_again(ev.run, size)
                return False
        ref.done = True
        return True

    def _copy_path(self, run: str) -> str | None:
        """Where the run's log copy goes; None for a watcher that sends only sizes."""
        if self.hello is None or not self.hello.send_logs:
            return None
        return self.log_path_for(run)

    def _track(self, run: str, ref: _Run) -> None:
        self._forget(run)
        self._runs[run] = ref

    def _forget(self, run: str) -> None:
        ref = self._runs.pop(run, None)
        if ref is not None and ref.retry is not None:
            ref.retry.cancel()

    # -- the local copy of a run's log

    def _copy(self, ev: LogBytes, path: str) -> None:
        ref = self._runs.get(ev.run)
        try:
            size = _local_size(path) or 0
            if ev.offset > size:
                # A gap: bytes before this frame never reached the copy. Ask for them again
                # (unless a failed write already scheduled that) and drop this frame.
                if ref is None:
                    log.warning("log bytes of %s from %d but its copy %s has %d; cannot ask again (unknown run)",
                                ev.run, ev.offset, path, size)
                elif ref.retry is None:
                    self._ask_again(ev.run, size)
                return
            new = ev.data[size - ev.offset:]
            if new:
                _append(path, new)
                size += len(new)
        except OSError as exc:
            self._write_failed(ev.run, path, exc)
            return
        if ref is not None:
            if ref.failing:
                log.warning("writing the log copy of %s works again", ev.run)
                ref.failing = False
            if ref.asked_from is not None and ev.offset <= ref.asked_from:
                ref.asked_from = None  # the answer to our re-request
        if new:
            self._emit(Size(ev.run, size))
        if ref is not None and ref.held and size >= ref.held[0].size:
            held, ref.held = ref.held, []
            ref.done = True
            for event in held:
                ref.cleaned = ref.cleaned or isinstance(event, Clean)
                self._emit(event)

    def _ask_again(self, run: str, offset: int, force: bool = False) -> None:
        """Ask the watcher to send the run's log again from `offset` (not awaited here: the
        reader must go on reading, or a watcher blocked on its output would deadlock us)."""
        ref = self._runs.get(run)
        if ref is None:
            return
        now = time.monotonic()
        if not force and ref.asked_from == offset and now - ref.asked_at < REASK_AFTER:
            return
        ref.asked_from, ref.asked_at = offset, now
        self._spawn(self._send(encode_watch(run, ref.ctl, offset, ref.pid, ref.start, ref.grace)))

    def _write_failed(self, run: str, path: str, exc: OSError) -> None:
        ref = self._runs.get(run)
        if ref is None:
            log.warning("cannot write %s (log copy of %s): %s", path, run, exc.strerror or exc)
            return
        if not ref.failing:  # once, not once per frame while the disk stays full
            ref.failing = True
            log.warning("cannot write %s (log copy of %s): %s; asking the watcher again every %g s",
                        path, run, exc.strerror or exc, self.retry_after)
        if ref.retry is None and not self.closed:
            ref.retry = asyncio.get_running_loop().call_later(self.retry_after, self._retry, run, path)

    def _retry(self, run: str, path: str) -> None:
        ref = self._runs.get(run)
        if ref is None or self.closed:
            return
        ref.retry = None
        try:
            size = _local_size(path) or 0
        except OSError:
            size = 0
        # If writing still fails, the answer's first frame fails too and schedules the next retry.
        self._ask_again(run, size, force=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.debug("a re-request to the watcher failed: %s", t.exception())

        task.add_done_callback(done)


# --------------------------------------------------------------------------- helpers

def _local_size(path: str) -> int | None:
    """The copy's size; None if there is none yet. OSError for other trouble."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _append(path: str, data: bytes) -> None:
    try:
        fd = append_private(Path(path))
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = append_private(Path(path))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for `event` at most `timeout` seconds (not wait_for: see hypd.ssh._wait_event)."""
    if event.is_set():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)


def watcher_args(root: str, send_logs: bool, tick: float) -> list[str]:
    return ["--root", root, *(["--send-logs"] if send_logs else []), "--tick", f"{tick:g}"]


def watcher_command(root_expr: str, send_logs: bool, tick: float) -> str:
    """The remote command line that runs the watcher from its source text. root_expr
    (e.g. "~/hypd") is quoted, so it reaches the watcher unexpanded and the watcher expands it."""
    args = " ".join(shlex.quote(a) for a in watcher_args(root_expr, send_logs, tick))
    return f"exec python3 -u -c {shlex.quote(WATCHER_SOURCE)} {args}"


async def start_local_watcher(root: str, *, send_logs: bool = False, tick: float = 0.1,
                              on_event: Callable[[Any], None] | None = None,
                              log_path_for: Callable[[str], str | None] | None = None,
                              ) -> tuple[asyncio.subprocess.Process, WatchLink]:
    """Start hostwatch.py here as a child (in its own session: a ^C at the daemon's terminal
    is not for it; it ends when its stdin does). The caller runs `link.run()`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", str(WATCHER_PATH), *watcher_args(root, send_logs, tick),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdin is not None
    return proc, WatchLink(proc.stdout, proc.stdin, on_event, log_path_for)
