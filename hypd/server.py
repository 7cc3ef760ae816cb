"""The daemon's Unix socket: one JSON line per request and per reply (hypd/ipc.py declares
them), the peer's uid checked, and event subscriptions fed from an `EventBus`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypd import __version__, ipc

log = logging.getLogger("hypd.server")


class Refusal(Exception):
    """A request the daemon refuses; code is one of ipc.ERROR_EXIT's keys."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventBus:
    """Subscribers each have a bounded queue; a subscriber too slow to keep up is dropped
    rather than slowing the daemon."""

    def __init__(self) -> None:
        self.queues: dict[asyncio.Queue[bytes | None], tuple[set[str], str | None]] = {}

    def subscribe(self, topics: set[str], run: str | None) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10000)
        self.queues[queue] = (topics, run)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.queues.pop(queue, None)

    def publish(self, topic: str, data: Any, run: str | None = None) -> None:
        if not self.queues:
            return
        line = ipc.event(topic, data)
        for queue, (topics, only_run) in list(self.queues.items()):
            if topic not in topics or (only_run is not None and run != only_run):
                continue
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                self.queues.pop(queue, None)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)


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
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        if directory.stat().st_uid != os.getuid():
            raise RuntimeError(f"{directory} belongs to another user; refusing to put a socket there")
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
            uid = ipc.peer_uid(sock) if sock is not None else None
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
                    request = ipc.parse_request(line)
                except ipc.ProtocolError as exc:
                    writer.write(ipc.error(None, exc.code, exc.message))
                    await writer.drain()
                    continue
                if request.op == "subscribe":
                    topics = set(request.args["topics"])
                    bad = topics - set(ipc.TOPICS)
                    if bad or subscription is not None:
                        why = f"unknown topic(s) {sorted(bad)}" if bad else "already subscribed"
                        writer.write(ipc.error(request.id, "bad_request", why))
                    else:
                        queue = self.bus.subscribe(topics, request.args["run"])
                        writer.write(ipc.ok(request.id, {"topics": sorted(topics)}))
                        subscription = asyncio.create_task(self._pump(queue, writer))
                    await writer.drain()
                    continue
                writer.write(await self._dispatch(request))
                await writer.drain()
                if request.op == "stop":
                    return
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            self.connections.discard(task)
            if subscription is not None:
                subscription.cancel()
            writer.close()

    async def _pump(self, queue: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await queue.get()
                if line is None:
                    writer.write(ipc.event("dropped", {"why": "too slow to keep up; reconnect"}))
                    await writer.drain()
                    writer.close()
                    return
                writer.write(line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.bus.unsubscribe(queue)

    async def _dispatch(self, request: ipc.Request) -> bytes:
        try:
            return ipc.ok(request.id, await self.handler(request.op)(**request.args))
        except Refusal as exc:
            return ipc.error(request.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("op %s failed", request.op)
            return ipc.error(request.id, "error", f"{request.op} failed inside the daemon: {exc}")
