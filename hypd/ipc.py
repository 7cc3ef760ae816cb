"""The socket protocol: one declared schema of versioned JSON lines, and its clients.

Every line is one JSON object with "v": PROTOCOL_VERSION.

    server -> client, first:  {"v":1, "hello":"hypd", "version":"0.1.0", "pid":123}
    client -> server:         {"v":1, "id":7, "op":"ls", "args":{"state":"pending"}}
    server -> client:         {"v":1, "id":7, "ok":true, "result":...}
                              {"v":1, "id":7, "ok":false, "error":{"code":"not_found", "message":"..."}}
    after op "subscribe":     {"v":1, "event":"run", "data":{...}}   (until the connection closes)

A request whose op, argument names or types are not declared below is refused with a
"bad_request" error; the connection carries on. A line over MAX_LINE bytes is refused and
the connection closed. Standard library only. Its client side (paths, the blocking
client, exit codes) is in hypd/client.py, which is all the CLI imports.
"""

from __future__ import annotations

import copy
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, get_args, get_origin, get_type_hints, is_typeddict

from hypd.client import (  # noqa: F401 - the protocol's client side, declared with it
    ERROR_EXIT,
    MAX_LINE,
    MAX_RESPONSE,
    PROTOCOL_VERSION,
    Client,
    DaemonError,
    ExitCode,
    _check_hello,
    _no_daemon,
    _result,
    encode,
    hypd_home,
    socket_path,
)

if TYPE_CHECKING:  # asyncio only where the TUI needs it
    import asyncio

MAX_INT = 1 << 63  # integer arguments are 64-bit (what SQLite stores)


_OPTIONAL = object()


@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    default: Any = _OPTIONAL  # _OPTIONAL: required

    @property
    def required(self) -> bool:
        return self.default is _OPTIONAL


_opt_str = Arg((str, type(None)), None)
_opt_int = Arg((int, type(None)), None)

# op -> argument name -> declaration. The one place the request shapes are written.
OPS: dict[str, dict[str, Arg]] = {
    "ping": {},
    "submit": {"path": Arg(str), "text": Arg(str), "as_name": _opt_str},
    # newest_first: the newest runs first (`hypd ls` shows a page of them); fields: only
    # these of a Run's fields in each row (a `name` comes with `study` and `run_no`);
    # archived: runs of archived studies too (a named study's runs are always listed).
    "ls": {"state": _opt_str, "study": _opt_str, "limit": _opt_int, "newest_first": Arg(bool, False),
           "fields": Arg((list, type(None)), None), "archived": Arg(bool, False)},
    # reports: how many of the run's latest reports come with it (at most MAX_REPORTS_PAGE);
    # its summary covers all of them.
    "info": {"run": Arg(str), "reports": Arg(int, 1000)},
    # tail: start that many bytes before the end instead of at offset.
    "logs": {"run": Arg(str), "offset": Arg(int, 0), "limit": Arg(int, 1 << 20), "tail": _opt_int},
    # since: only the reports from that sequence number on; the reply's "next" continues.
    "metrics": {"run": Arg(str), "since": Arg(int, 0), "limit": Arg(int, 10_000)},
    "kill": {"target": Arg(str)},
    # prepare: the study's [prepare] step runs again on every host (after a failure)
    "retry": {"target": Arg(str), "state": _opt_str, "prepare": Arg(bool, False)},
    "pause": {"study": Arg(str)},
    "resume": {"study": Arg(str)},
    # runs: every run with a result (each replicate of a trial), not the best of each trial.
    "leaderboard": {"study": Arg(str), "limit": _opt_int, "runs": Arg(bool, False)},
    "best": {"study": Arg(str)},
    "suggest": {"study": Arg(str), "params": Arg(dict)},
    "studies": {"archived": Arg(bool, False)},  # archived: those archived too
    # trials: how many to add to max_trials; the search carries on from where it was
    "extend": {"study": Arg(str), "trials": Arg(int)},
    "archive": {"study": Arg(str), "undo": Arg(bool, False)},
    # files: its logs and the run folders on this machine too
    "rm": {"study": Arg(str), "files": Arg(bool, False)},
    "pull": {"run": Arg(str)},  # copy the run's artifacts ([run] fetch) back now
    # A page of a study's runs (or reports) for an export; after: the last page's "next".
    "export": {"study": Arg(str), "reports": Arg(bool, False), "after": Arg((int, str, type(None)), None),
               "limit": Arg(int, 5000)},
    "hosts": {},
    # options: any hosts.toml key (gpus, max_per_gpu, key, workdir, setup, known_hosts, labels, ...)
    "hosts_add": {"name": Arg(str), "target": Arg(str), "options": Arg(dict, {})},
    "hosts_rm": {"name": Arg(str)},
    "hosts_drain": {"name": Arg(str), "undo": Arg(bool, False)},
    "stop": {"kill_runs": Arg(bool, False)},
    # A stream of events until the connection closes. topics: any of "run", "study",
    # "host", "log"; run: only events of that run ("study:N").
    "subscribe": {"topics": Arg(list, ["run", "study", "host"]), "run": _opt_str},
}
TOPICS = ("run", "study", "host", "log")


# ------------------------------------------------------------------ replies and events
# The one place the shapes the daemon sends are written, as requests are above. A run has
# one shape from the store (its columns are these fields) through replies and events to
# the CLI and the TUI.


class Run(TypedDict):
    id: int
    name: str  # "study:N", what users type
    study: str
    run_no: int
    trial: int
    attempt: int  # 1, 2, ... within its replicate
    replicate: int  # 1..N: which run of its trial (`replicates = N`; 1 without)
    state: str  # hypd.runstate.STATES
    reason: str
    params: dict[str, Any]
    host: str | None
    gpus: list[int] | None  # [] for a CPU slot; None before it started
    created: float
    started: float | None
    ended: float | None
    deadline: float | None
    metrics: dict[str, float]  # the latest value of each metric
    objective: float | None
    last_line: str
    exit_code: int | None
    exit_stage: str | None  # the stage that failed: setup, main (a one-stage run), or a stage's name
    run_dir: str | None
    log_path: str | None
    reports: int  # how many reports it has made


RUN_FIELDS = tuple(Run.__annotations__)
# A row of `ls` with `fields`: some of a Run's fields.
RunFields = TypedDict("RunFields", Run.__annotations__, total=False)  # type: ignore[misc]
MAX_REPORTS_PAGE = 10_000  # reports in one reply (`info`, `metrics`): a run may have millions


class MetricSummary(TypedDict):
    count: int
    first: float | None  # None: not a number (nan)
    last: float | None
    min: float | None  # of the reports that were numbers
    max: float | None
    last_step: int


class LeaderRun(Run, total=False):
    values: dict[str, float]  # with several objectives: each objective's value
    pareto: bool  # with several objectives: on the Pareto front
    # With replicates, per trial (the row is its best run): the mean of its runs'
    # results, its standard error (None below two), their range, how many there are.
    mean: float
    sem: float | None
    low: float
    high: float
    n: int


class Report(TypedDict):
    step: int
    at: float
    values: dict[str, float]


Transition = TypedDict("Transition", {"at": float, "from": str | None, "to": str, "reason": str})


class Artifacts(TypedDict):
    """What the last fetch of a run's artifacts ([run] fetch) did."""

    dir: str  # the run's folder on this machine, where they are
    files: list[str]  # paths under the run's folder (a folder counts as one)
    missing: list[str]  # patterns that matched nothing
    error: str  # why the fetch failed ("" when it did not)
    at: float
    host: str
    run_dir: str  # the run's folder on its host
    fetching: bool  # a copy is under way (files, missing and error: empty until it ends)


class _RunInfo(TypedDict):
    run: Run
    summary: dict[str, MetricSummary]  # every metric the run reported, in the order they first came
    reports: list[Report]  # the latest ones: those from reports_from on
    reports_from: int
    reports_total: int
    transitions: list[Transition]
    attempts: list[str]
    retries: int
    objective_metric: str
    goal: str
    commands: list[list[str]]
    timeout: float | None
    log_tail: list[str]  # the log's last lines


class RunInfo(_RunInfo, total=False):
    artifacts: Artifacts | None  # None: nothing fetched (yet)


class AheadSummary(TypedDict):
    """An adaptive study's suggestions asked ahead (hypd/ahead.py)."""

    ready: int  # asked and waiting for a slot
    lead: float | None  # seconds a suggestion was ready before its launch (median of the last
    #                      launches; 0 for one asked when its slot freed); None before any launch
    behind: float | None  # results that reached the search between its ask and its launch (median)
    replaced: int  # suggestions asked again, with more data, before they ran
    launches: int  # launches the medians are over


class StudySummary(TypedDict, total=False):
    name: str
    error: str  # only this and the name when the study cannot be loaded
    state: str  # "loading": only this and the name while the daemon loads it at start
    algorithm: str
    paused: bool
    pause_reason: str  # why hypd paused it itself ("" when a user did)
    max_trials: int | None
    trials: int
    parallel: int
    gpus: int
    priority: int
    counts: dict[str, int]  # runs (attempts) by state
    outcomes: dict[str, int]  # trials by outcome: completed if an attempt was, else as its last attempt is
    done: int  # trials completed (or early-stopped)
    total: int  # trials it will have: max_trials, or more when trials were added by hand
    retried: int  # attempts beyond each trial's first
    metric: str
    goal: str
    best: float | None
    best_run: str | None
    finished: bool
    source: str
    archived: bool  # hidden from `studies` and `ls` unless asked for
    hosts: str  # where its runs may go, as the study file says it ("any host" without a choice)
    hosts_note: str  # "" when some host matches that choice, else why its runs wait
    prepare_failed: dict[str, str]  # host -> why the study's [prepare] step failed there
    ahead: AheadSummary  # adaptive studies only


class _HostSummary(TypedDict):
    name: str
    state: str  # up | down | draining | error
    why: str
    down_since: float | None
    cpu_slots: int
    cpu_used: int
    cpu_runs: list[str]
    gpus: list[dict[str, Any]]
    gpu_source: str | None
    gpu_error: str | None
    runs: list[str]


class HostSummary(_HostSummary, total=False):
    labels: list[str]  # what a study's hosts = { labels = [...] } matches
    prepare_failed: dict[str, str]  # study -> why its [prepare] step failed here (its runs go elsewhere)
    address: str  # an SSH host's user@address:port; a Slurm cluster's login node ("local")
    partition: str  # a Slurm cluster's: its partition, hypd's jobs there and the limit on them,
    max_jobs: int  #   and the partition's idle GPUs (None when sinfo could not tell)
    jobs_running: int
    jobs_queued: int
    idle_gpus: int | None


class Pong(TypedDict):
    pid: int
    version: str
    home: str
    uptime: float


class Submitted(TypedDict):
    study: str
    continued: bool
    queued: int
    warnings: list[str]


class LogChunk(TypedDict):
    text: str
    offset: int
    size: int
    state: str
    live: bool
    path: str | None


class MetricsPage(TypedDict):
    run: str
    reports: list[Report]
    next: int


class Killed(TypedDict):
    killed: list[str]
    paused: bool


class Retried(TypedDict):
    retried: list[str]
    prepared: bool  # the study's prepare step is to run again everywhere


class Paused(TypedDict):
    study: str
    paused: bool


class Leaderboard(TypedDict):
    study: str
    metric: str
    goal: str
    objectives: list[dict[str, Any]]
    runs: list[LeaderRun]


class _Best(TypedDict):
    study: str
    observed: LeaderRun | None
    predicted: dict[str, Any] | None
    metric: str
    goal: str


class Best(_Best, total=False):
    artifacts: Artifacts | None  # the observed best run's, when fetched
    fetch: list[str]  # the study's [run] fetch globs


class Suggested(TypedDict):
    run: str
    trial: int
    params: dict[str, Any]


class ExportPage(TypedDict):
    study: str
    params: list[str]  # the study's parameters, in its file's order
    metrics: list[str]  # first page: every metric its runs' final values (for reports: its reports) hold
    fields: list[str]  # what each row holds, in order
    # The rows, as one JSON text (an array of arrays; a params, metrics or values that
    # holds NaN or Infinity as its own JSON text): passed on as the store built it.
    rows: str
    next: Any  # what to pass as `after` for the next page; None after the last


class Removed(TypedDict):
    removed: str


class Extended(TypedDict):
    study: str
    max_trials: int
    queued: int  # runs queued now (a search that is not adaptive); an adaptive one proposes as slots free
    paused: bool


class Archived(TypedDict):
    study: str
    archived: bool


class StudyRemoved(TypedDict):
    removed: str
    runs: int
    files: list[str]  # folders removed on this machine (with files)
    left_on_hosts: list[str]  # SSH hosts whose run folders were left there (with files)


class Stopping(TypedDict):
    stopping: bool
    killed: list[str]
    left_running: list[str]
    pid: int


class _Subscribed(TypedDict):
    topics: list[str]


class Subscribed(_Subscribed, total=False):
    dropped: str  # this client's last subscription was dropped, and why (it fell behind)


class Dropped(TypedDict):
    why: str


class LogText(TypedDict):
    run: str
    text: str


REPLIES: dict[str, Any] = {
    "ping": Pong, "submit": Submitted, "ls": list[RunFields], "info": RunInfo, "logs": LogChunk,
    "metrics": MetricsPage, "kill": Killed, "retry": Retried, "pause": Paused, "resume": Paused,
    "leaderboard": Leaderboard, "best": Best, "suggest": Suggested, "studies": list[StudySummary],
    "hosts": list[HostSummary], "hosts_add": HostSummary, "hosts_rm": Removed, "hosts_drain": HostSummary,
    "stop": Stopping, "subscribe": Subscribed, "extend": Extended, "archive": Archived, "rm": StudyRemoved,
    "pull": Artifacts,
    "export": ExportPage,
}
# "dropped": the last event before the daemon cuts a subscriber that fell too far behind.
EVENTS: dict[str, Any] = {"run": Run, "study": StudySummary, "host": HostSummary, "log": LogText,
                          "dropped": Dropped}


def mismatch(shape: Any, value: Any, where: str = "") -> str | None:
    """Why `value` does not have the declared `shape` (a TypedDict, list[...], X | None, or
    a plain type), or None when it does. For tests and tools that check the daemon keeps
    to what is declared."""
    where = where or getattr(shape, "__name__", str(shape))
    if shape is Any:
        return None
    args = get_args(shape)
    if type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        return mismatch(rest[0] if len(rest) == 1 else Any, value, where)
    origin = get_origin(shape)
    if origin is list:
        if not isinstance(value, list):
            return f"{where}: a list expected, not {type(value).__name__}"
        for i, item in enumerate(value):
            why = mismatch(args[0] if args else Any, item, f"{where}[{i}]")
            if why:
                return why
        return None
    if origin is dict:
        return None if isinstance(value, dict) else f"{where}: an object expected"
    if is_typeddict(shape):
        if not isinstance(value, dict):
            return f"{where}: an object expected, not {type(value).__name__}"
        hints = get_type_hints(shape)
        missing = shape.__required_keys__ - value.keys()
        extra = value.keys() - hints.keys()
        if missing or extra:
            return f"{where}: missing {sorted(missing)}, unknown {sorted(extra)}"
        for key, item in value.items():
            why = mismatch(hints[key], item, f"{where}.{key}")
            if why:
                return why
        return None
    if shape is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(shape, type):
        ok = isinstance(value, shape) and (shape is bool or not isinstance(value, bool))
    else:
        ok = True
    return None if ok else f"{where}: {shape.__name__} expected, not {value!r}"[:300]


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    id: Any
    op: str
    args: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line; ProtocolError says what is wrong."""
    try:
        msg = json.loads(line)
    except RecursionError:
        raise ProtocolError("bad_request", "not a JSON line hypd reads: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("bad_request", f"not a JSON line: {exc}") from None
    except ValueError:  # Python's cap on the digits of an integer (sys.get_int_max_str_digits)
        raise ProtocolError("bad_request", "not a JSON line hypd reads: a number with too many digits") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", "a request must be a JSON object")
    unknown = set(msg) - {"v", "id", "op", "args"}
    if unknown:
        raise ProtocolError("bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    if isinstance(msg.get("v"), bool) or msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {msg.get('v')!r} not spoken; this daemon speaks {PROTOCOL_VERSION}")
    op = msg.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError("bad_request", f"unknown op {op!r}")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "args must be an object")
    decl = OPS[op]
    unknown = set(args) - set(decl)
    if unknown:
        raise ProtocolError("bad_request", f"{op}: unknown argument(s): {', '.join(sorted(unknown))}")
    out = {}
    for name, arg in decl.items():
        if name not in args:
            if arg.required:
                raise ProtocolError("bad_request", f"{op}: missing argument {name!r}")
            out[name] = copy.copy(arg.default)
            continue
        value = args[name]
        kinds = arg.kind if isinstance(arg.kind, tuple) else (arg.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ProtocolError("bad_request", f"{op}: argument {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise ProtocolError("bad_request", f"{op}: argument {name!r} has the wrong type")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ProtocolError("bad_request", f"{op}: argument {name!r} must be a list of strings")
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value < MAX_INT:
            raise ProtocolError("bad_request", f"{op}: argument {name!r} is out of range (a 64-bit integer)")
        out[name] = value
    request_id = msg.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (int, str))):
        raise ProtocolError("bad_request", "id must be a number or a string")
    return Request(request_id, op, out)


def ok(request_id: Any, result: Any) -> bytes:
    return encode({"id": request_id, "ok": True, "result": result})


def ok_list(request_id: Any, items: list[Any], slice_len: int = 500) -> bytes:
    """The same line as ok(request_id, items), encoded a slice at a time: on a thread, the
    event loop runs between slices (one json.dumps holds the interpreter throughout)."""
    head = ok(request_id, None)
    assert head.endswith(b"null}\n")
    parts = (json.dumps(items[i:i + slice_len], separators=(",", ":"), default=str)[1:-1].encode()
             for i in range(0, len(items), slice_len))
    return head[:-6] + b"[" + b",".join(parts) + b"]}\n"


def error(request_id: Any, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def event(topic: str, data: Any) -> bytes:
    return encode({"event": topic, "data": data})


# ------------------------------------------------------------------ peers

def peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


# ------------------------------------------------------------------ clients

class AsyncClient:
    """An asyncio client (the TUI's): requests and an event stream on two connections."""

    def __init__(self, path: Path | None = None) -> None:
        import asyncio

        self.path = path or socket_path()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 0
        self.lock = asyncio.Lock()
        self.hello: dict[str, Any] = {}

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import asyncio

        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_RESPONSE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _no_daemon(self.path, "no socket" if isinstance(exc, FileNotFoundError) else "nobody listening") from None
        self.hello = _check_hello(await reader.readline())
        return reader, writer

    async def connect(self) -> None:
        self.reader, self.writer = await self._open()

    async def call(self, op: str, **args: Any) -> Any:
        async with self.lock:
            if self.writer is None or self.writer.is_closing():
                await self.connect()
            assert self.reader is not None and self.writer is not None
            self.next_id += 1
            try:
                self.writer.write(encode({"id": self.next_id, "op": op, "args": args}))
                await self.writer.drain()
                while True:
                    line = await self.reader.readline()
                    if not line:
                        self._drop()
                        raise DaemonError("no_daemon", "the daemon closed the connection")
                    msg = json.loads(line)
                    if msg.get("id") == self.next_id:
                        return _result(msg)
            except (ConnectionError, OSError) as exc:
                self._drop()
                raise DaemonError("no_daemon", f"lost the daemon: {exc}") from None

    def _drop(self) -> None:
        """Forget a dead connection: the next call opens a new one."""
        if self.writer is not None:
            self.writer.close()
        self.writer = None

    async def events(self, topics: list[str] | None = None, run: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Events on a connection of their own; ends when the daemon goes away. The first
        is {"event": "subscribed"}: from then on nothing is missed, so a client loads its
        state after it."""
        reader, writer = await self._open()
        try:
            writer.write(encode({"id": 0, "op": "subscribe",
                                 "args": {"topics": topics or ["run", "study", "host"], "run": run}}))
            await writer.drain()
            ack = _result(json.loads(await reader.readline()))
            yield {"v": PROTOCOL_VERSION, "event": "subscribed", "data": {**ack, "run": run}}
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):  # the daemon went away (or cut a subscriber too far behind)
                    return
                msg = json.loads(line)
                if "event" in msg:
                    yield msg
        finally:
            writer.close()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
