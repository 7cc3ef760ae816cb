"""The daemon's Unix socket: one JSON line per request and per reply (hypd/ipc.py declares
them), the peer's uid checked, and event subscriptions fed from an `EventBus`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypd import __version__, ipc
from hypd.private import private_dir

log = logging.getLogger("hypd.server")


# A reply of more items than this is encoded on a thread: one big reply (`ls --all`) does
# not hold the event loop (and every other client) while it is written out.
BIG_REPLY = 1000

class Refusal(Exception):
    """A request the daemon refuses; code is one of ipc.ERROR_EXIT's keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MAX_BEHIND = 16 << 20  # bytes of events a subscriber may have waiting before it is dropped: more
# than one batch of a chatty log (hypd.metrics reads up to 8 MiB at a time), so a reader that keeps up
# is never dropped
_NOTICES_KEPT = 64  # drop notices kept for subscribers that have not come back


@dataclass(eq=False)
class Subscriber:
    """One subscription: the events waiting for it, counted in bytes (an event may be a
    MiB of log), and why it was dropped."""

    topics: set[str]
    run: str | None
    client: int | None  # the peer's pid: a drop notice waits for its next subscribe
    waiting: collections.deque[bytes] = field(default_factory=collections.deque)
    waiting_bytes: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: str | None = None


class EventBus:
    """Subscribers each have a buffer of at most MAX_BEHIND bytes; one that falls further
    behind (it does not read) is dropped rather than slowing the daemon or filling its
    memory, and is told why on its next subscribe."""

    def __init__(self, max_behind: int = MAX_BEHIND) -> None:
        self.max_behind = max_behind
        self.subscribers: set[Subscriber] = set()
        self.notices: collections.OrderedDict[int, str] = collections.OrderedDict()

    def subscribe(self, topics: set[str], run: str | None, client: int | None = None) -> Subscriber:
        sub = Subscriber(topics, run, client)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def notice_for(self, client: int | None) -> str | None:
        """Why this client's last subscription was dropped, once."""
        return None if client is None else self.notices.pop(client, None)

    def publish(self, topic: str, data: Any, run: str | None = None) -> None:
        if not self.subscribers:
            return
        line = ipc.event(topic, data)
        for sub in list(self.subscribers):
            if topic not in sub.topics or (sub.run is not None and run != sub.run):
                continue
            if sub.waiting and sub.waiting_bytes + len(line) > self.max_behind:
                self._drop(sub, sub.waiting_bytes + len(line))
                continue
            sub.waiting.append(line)
            sub.waiting_bytes += len(line)
            sub.ready.set()

    def _drop(self, sub: Subscriber, behind: int) -> None:
        sub.dropped = (f"dropped: you fell {behind / (1 << 20):.1f} MiB behind on events at "
                       f"{time.strftime('%H:%M:%S')} (the limit is {self.max_behind >> 20} MiB); "
                       "events until this subscribe were lost, so load the state again")
        log.warning("dropped a subscriber (pid %s) %.1f MiB behind", sub.client, behind / (1 << 20))
        self.subscribers.discard(sub)
        sub.waiting.clear()
        sub.waiting_bytes = 0
        sub.ready.set()
        if sub.client is not None:
            self.notices[sub.client] = sub.dropped
            while len(self.notices) > _NOTICES_KEPT:
                self.notices.popitem(last=False)


class Server:
    """Serves requests with `handler(op)` -> an async callable of the op's arguments."""

    def __init__(self, path: Path, home: Path, bus: EventBus,
                 handler: Callable[[str], Callable[..., Any]]) -> None:
        self.path = path
        self.home = home
        self.bus = bus
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Task[Any]] = set()
        self.stop_requested: Callable[[], None] = lambda: None

    async def start(self) -> None:
        directory = self.path.parent  # $HYPD_HOME/run, or a folder under /tmp (hypd.ipc.socket_path)
        tightened = private_dir(directory, follow=False)
        if tightened:
            log.warning("%s", tightened)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: we hold the lock, so no daemon owns it
        old_umask = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve_client, str(self.path), limit=ipc.MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, stat.S_IRUSR | stat.S_IWUSR)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        subscription: asyncio.Task[None] | None = None
        try:
            sock = writer.get_extra_info("socket")
            pid, uid = (ipc.peer_credentials(sock) if sock is not None else None) or (None, None)
            if uid is not None and uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                writer.write(ipc.error(None, "denied", f"refused: this daemon serves uid {os.getuid()} only, "
                                                      f"the client runs as uid {uid}"))
                await writer.drain()
                return
            writer.write(ipc.encode({"hello": "hypd", "version": __version__, "pid": os.getpid(),
                                     "home": str(self.home)}))
            await writer.drain()
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(ipc.error(None, "too_large", f"message over {ipc.MAX_LINE} bytes; closing"))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    reply, subscriber, last = await self._answer(line, pid, subscription is not None)
                except Exception as exc:  # whatever a line holds, it gets a reply, never a dropped connection
                    log.exception("a request failed before it reached its op")
                    reply, subscriber, last = ipc.error(None, "error", f"request failed inside the daemon: {exc!r}"[:500]), None, False
                writer.write(reply)
                await writer.drain()
                if subscriber is not None:
                    subscription = asyncio.create_task(self._pump(subscriber, writer))
                if last:
                    return
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            self.connections.discard(task)
            if subscription is not None:
                subscription.cancel()
            writer.close()

    async def _answer(self, line: bytes, client: int | None,
                      subscribed: bool) -> tuple[bytes, Subscriber | None, bool]:
        """The reply to one request line, the subscription it opened, and whether it is the
        connection's last (`stop`)."""
        try:
            request = ipc.parse_request(line)
        except ipc.ProtocolError as exc:
            return ipc.error(None, exc.code, exc.message), None, False
        if request.op == "subscribe":
            topics = set(request.args["topics"])
            bad = topics - set(ipc.TOPICS)
            if bad or subscribed:
                why = f"unknown topic(s) {sorted(bad)}" if bad else "already subscribed"
                return ipc.error(request.id, "bad_request", why), None, False
            notice = self.bus.notice_for(client)
            subscriber = self.bus.subscribe(topics, request.args["run"], client)
            ack: dict[str, Any] = {"topics": sorted(topics)}
            if notice:
                ack["dropped"] = notice
            return ipc.ok(request.id, ack), subscriber, False
        return await self._dispatch(request), None, request.op == "stop"

    async def _pump(self, sub: Subscriber, writer: asyncio.StreamWriter) -> None:
        """Feed a subscriber its events; once dropped, the connection is cut at once (its
        unsent buffer freed), and the client reads why when it subscribes again."""
        try:
            while True:
                await sub.ready.wait()
                sub.ready.clear()
                if sub.dropped is not None:
                    writer.write(ipc.event("dropped", {"why": sub.dropped}))
                    writer.transport.abort()
                    return
                while sub.waiting and sub.dropped is None:
                    line = sub.waiting.popleft()
                    sub.waiting_bytes -= len(line)
                    writer.write(line)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.bus.unsubscribe(sub)

    async def _dispatch(self, request: ipc.Request) -> bytes:
        try:
            result = await self.handler(request.op)(**request.args)
            if isinstance(result, list) and len(result) > BIG_REPLY:  # (`ls --all` of 100,000 runs)
                return await asyncio.to_thread(ipc.ok_list, request.id, result)
            return ipc.ok(request.id, result)
        except Refusal as exc:
            return ipc.error(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("op %s failed", request.op)
            return ipc.error(request.id, "error", f"{request.op} failed inside the daemon: {str(exc) or repr(exc)}")
