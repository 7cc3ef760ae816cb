"""The host watcher's protocol, daemon side: commands encoded as JSON lines, events
decoded from the watcher's byte stream. Pure: no I/O.

The watcher (hypd/hostwatch.py, which runs on the host and cannot import this) writes one
JSON object per line; a log frame is the header line {"ev":"log","run","offset","n"}
followed at once by exactly n raw bytes (binary-safe, not JSON). `EventDecoder` takes the
stream in chunks of any size and never raises: a line it cannot read becomes an `Error`.
`encode_event` writes events the way the watcher does (for tests and fakes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_HEADER = 64 << 10  # longest event line; a longer one is dropped up to its newline
MAX_FRAME = 16 << 20  # largest log frame accepted (the watcher sends at most 1 MiB)


# --------------------------------------------------------------------------- events

@dataclass(frozen=True)
class Hello:
    root: str  # the watcher's root, absolute and resolved
    nproc: int | None
    pidfd: bool  # whether it watches processes with pidfds (else /proc each tick)
    version: int
    send_logs: bool = False  # log bytes come in frames (else only sizes)


@dataclass(frozen=True)
class Started:
    run: str
    pid: int
    start: str | None  # field 22 of /proc/<pid>/stat: with pid, the process's identity


@dataclass(frozen=True)
class LaunchFailed:
    run: str
    why: str


@dataclass(frozen=True)
class Alive:
    run: str
    pid: int
    start: str | None


@dataclass(frozen=True)
class Signalled:
    run: str
    found: bool


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Error:
    why: str
    run: str | None = None


@dataclass(frozen=True)
class Size:
    run: str
    size: int


@dataclass(frozen=True)
class LogBytes:
    run: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class Exited:
    run: str
    status: int | None  # None: no exit file (its group was killed)
    stage: str | None
    size: int  # the log's size when it ended; every byte up to here was sent before this


@dataclass(frozen=True)
class Clean:
    run: str
    ended: tuple[int, ...]  # pids of leftovers the watcher had to end


Event = Hello | Started | LaunchFailed | Alive | Signalled | Pong | Error | Size | LogBytes | Exited | Clean


# --------------------------------------------------------------------------- commands

def _line(obj: dict[str, Any]) -> bytes:
    # ensure_ascii: no raw newline or odd byte can end up inside the line.
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def encode_launch(run: str, ctl: str, script: str, grace: float) -> bytes:
    return _line({"op": "launch", "run": run, "ctl": ctl, "script": script, "grace": grace})


def encode_watch(run: str, ctl: str, offset: int, pid: int | None = None, start: str | None = None,
                 grace: float = 10.0) -> bytes:
    return _line({"op": "watch", "run": run, "ctl": ctl, "offset": offset, "pid": pid, "start": start,
                  "grace": grace})


def encode_kill(run: str, grace: float) -> bytes:
    return _line({"op": "kill", "run": run, "grace": grace})


def encode_unwatch(run: str) -> bytes:
    return _line({"op": "unwatch", "run": run})


def encode_ping() -> bytes:
    return _line({"op": "ping"})


def encode_event(ev: Event) -> bytes:
    """An event as the watcher writes it."""
    if isinstance(ev, LogBytes):
        return _line({"ev": "log", "run": ev.run, "offset": ev.offset, "n": len(ev.data)}) + ev.data
    name = _NAMES[type(ev)]
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ev.__dict__.items()}
    if isinstance(ev, Error) and ev.run is None:
        del fields["run"]
    return _line({"ev": name, **fields})


# --------------------------------------------------------------------------- decoding

class _Bad(Exception):
    pass


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _Bad(f"{key} is not a string")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key)


def _int(obj: dict[str, Any], key: str, low: int = 0) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _Bad(f"{key} is not an integer >= {low}")
    return value


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{key} is not an integer")
    return value


def _bool(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise _Bad(f"{key} is not a boolean")
    return value


def _start(obj: dict[str, Any]) -> str | None:
    value = obj.get("start")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad("start is not a string")
    return str(value)


def _ended(obj: dict[str, Any]) -> tuple[int, ...]:
    value = obj.get("ended")
    if not isinstance(value, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in value):
        raise _Bad("ended is not a list of pids")
    return tuple(value)


_PARSERS: dict[str, Callable[[dict[str, Any]], Event]] = {
    "hello": lambda o: Hello(_str(o, "root"), _opt_int(o, "nproc"), _bool(o, "pidfd"), _int(o, "version"),
                             _bool({"send_logs": o.get("send_logs", False)}, "send_logs")),
    "started": lambda o: Started(_str(o, "run"), _int(o, "pid", 1), _start(o)),
    "launch_failed": lambda o: LaunchFailed(_str(o, "run"), _str(o, "why")),
    "alive": lambda o: Alive(_str(o, "run"), _int(o, "pid", 1), _start(o)),
    "signalled": lambda o: Signalled(_str(o, "run"), _bool(o, "found")),
    "pong": lambda o: Pong(),
    "error": lambda o: Error(_str(o, "why"), _opt_str(o, "run")),
    "size": lambda o: Size(_str(o, "run"), _int(o, "size")),
    "exit": lambda o: Exited(_str(o, "run"), _opt_int(o, "status"), _opt_str(o, "stage"), _int(o, "size")),
    "clean": lambda o: Clean(_str(o, "run"), _ended(o)),
}
_NAMES: dict[type, str] = {Hello: "hello", Started: "started", LaunchFailed: "launch_failed", Alive: "alive",
                           Signalled: "signalled", Pong: "pong", Error: "error", Size: "size",
                           Exited: "exit", Clean: "clean"}


def _preview(line: bytes) -> str:
    text = line[:80].decode("utf-8", "replace")
    return repr(text) + ("..." if len(line) > 80 else "")


class EventDecoder:
    """Events from the watcher's stdout, fed in chunks split anywhere."""

    def __init__(self, max_header: int = MAX_HEADER, max_frame: int = MAX_FRAME) -> None:
        self.max_header = max_header
        self.max_frame = max_frame
        self._buf = bytearray()
        self._frame: tuple[str, int, int] | None = None  # (run, offset, n): a header whose bytes are awaited
        self._skipping = False  # dropping the rest of an over-long line, up to its newline

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        out: list[Event] = []
        pos = 0  # consumed so far; the buffer is cut once at the end (cutting per event is quadratic)
        buf = self._buf
        while True:
            if self._frame is not None:
                run, offset, n = self._frame
                if len(buf) - pos < n:
                    break
                out.append(LogBytes(run, offset, bytes(buf[pos:pos + n])))
                pos += n
                self._frame = None
                continue
            nl = buf.find(b"\n", pos)
            if self._skipping:
                if nl < 0:
                    pos = len(buf)
                    break
                pos = nl + 1
                self._skipping = False
                continue
            if nl < 0:
                if len(buf) - pos > self.max_header:
                    out.append(Error(f"undecodable: an event line longer than {self.max_header} bytes; dropped"))
                    pos = len(buf)
                    self._skipping = True
                break
            line = bytes(buf[pos:nl])
            pos = nl + 1
            if len(line) > self.max_header:
                out.append(Error(f"undecodable: an event line longer than {self.max_header} bytes; dropped"))
                continue
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        del buf[:pos]
        return out

    def _line(self, line: bytes) -> Event | None:
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return Error(f"undecodable: not JSON: {_preview(line)}")
        if not isinstance(obj, dict):
            return Error(f"undecodable: not a JSON object: {_preview(line)}")
        name = obj.get("ev")
        try:
            if name == "log":
                run, offset, n = _str(obj, "run"), _int(obj, "offset"), _int(obj, "n")
                if n > self.max_frame:
                    self._skipping = True  # its length cannot be trusted: back in step at the next newline
                    return Error(f"undecodable: a log frame of {n} bytes (more than {self.max_frame})", run)
                if n == 0:
                    return LogBytes(run, offset, b"")
                self._frame = (run, offset, n)
                return None
            parser = _PARSERS.get(name) if isinstance(name, str) else None
            if parser is None:
                return Error(f"undecodable: unknown event {name!r}")
            return parser(obj)
        except _Bad as exc:
            return Error(f"undecodable: bad {name} event: {exc}: {_preview(line)}")
