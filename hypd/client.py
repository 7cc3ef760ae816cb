"""The client side of the socket protocol (hypd/ipc.py declares it): where the daemon
listens, the blocking client the CLI uses, and the CLI's exit codes.

Apart from hypd/ipc.py so that the CLI imports only this: the declared shapes of replies
and events (TypedDicts) cost `typing` and more at every `hypd ls`. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
from enum import IntEnum
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # requests; responses may be larger (a long `ls`)
MAX_RESPONSE = 1 << 31


class ExitCode(IntEnum):
    """The CLI's exit status for each error code; stable, so scripts can rely on them."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NO_DAEMON = 3
    NOT_FOUND = 4
    INVALID = 5  # a study file or a value refused
    CONFLICT = 6  # e.g. a study of that name with another space
    PROTOCOL = 7


ERROR_EXIT = {
    "error": ExitCode.ERROR,
    "no_daemon": ExitCode.NO_DAEMON,
    "bad_request": ExitCode.PROTOCOL,
    "too_large": ExitCode.PROTOCOL,
    "version": ExitCode.PROTOCOL,
    "not_found": ExitCode.NOT_FOUND,
    "invalid": ExitCode.INVALID,
    "conflict": ExitCode.CONFLICT,
    "denied": ExitCode.ERROR,
    "busy": ExitCode.ERROR,  # the daemon is still loading its studies at start: try again shortly
}


def encode(msg: Mapping[str, Any]) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, **msg}, separators=(",", ":"), default=str).encode() + b"\n"


# ------------------------------------------------------------------ paths

def hypd_home() -> Path:
    return Path(os.environ.get("HYPD_HOME") or Path.home() / ".hypd").expanduser().absolute()


def socket_path(home: Path | None = None) -> Path:
    """Where the daemon listens: $HYPD_HOME/run/hypd.sock, in a 0700 folder. A home too
    deep for a socket path (108 bytes) gets a 0700 folder under /tmp named by its hash."""
    home = home or hypd_home()
    path = home / "run" / "hypd.sock"
    if len(os.fsencode(path)) < 100:
        return path
    import hashlib

    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path(f"/tmp/hypd-{os.getuid()}-{digest}") / "hypd.sock"


# ------------------------------------------------------------------ clients

class DaemonError(Exception):
    """An error reply from the daemon, or no daemon at all."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def exit_code(self) -> ExitCode:
        return ERROR_EXIT.get(self.code, ExitCode.ERROR)


def _no_daemon(path: Path, why: str) -> DaemonError:
    return DaemonError("no_daemon", f"no hypd daemon is running ({why} at {path}); start one with `hypd serve` "
                                    "(or `hypd serve --detach`)")


def _check_hello(line: bytes) -> dict[str, Any]:
    try:
        hello = json.loads(line)
    except json.JSONDecodeError:
        raise DaemonError("version", "the socket did not greet as a hypd daemon") from None
    if not isinstance(hello, dict) or hello.get("hello") != "hypd":
        message = hello.get("error", {}).get("message") if isinstance(hello, dict) else None
        raise DaemonError("denied", message or "the socket did not greet as a hypd daemon")
    if hello.get("v") != PROTOCOL_VERSION:
        raise DaemonError("version", f"the daemon speaks protocol {hello.get('v')}, this client {PROTOCOL_VERSION}; "
                                     "restart the daemon with this version of hypd")
    return hello


def _result(msg: Mapping[str, Any]) -> Any:
    if msg.get("ok"):
        return msg.get("result")
    err = msg.get("error") or {}
    raise DaemonError(err.get("code", "error"), err.get("message", "unknown error"))


REPORTS_PAGE = 10_000  # reports asked for per request (`Client.reports`)


class Rows(list):  # type: ignore[type-arg]
    """Plain dicts in a list, as the daemon sent them; `.to_pandas()` makes a pandas
    DataFrame of them, nested dicts (a run's params and metrics) as `params.lr`,
    `metrics.loss` columns. pandas is imported only then."""

    def to_pandas(self) -> Any:
        try:
            import pandas
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pandas.DataFrame([_flat(row) for row in self])


def _flat(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Client:
    """A blocking client: one request at a time. The CLI's, and the one for notebooks and
    scripts:

        from hypd.client import Client
        c = Client()                          # the daemon of $HYPD_HOME (or ~/.hypd)
        c.studies()                           # each study's progress, as dicts
        runs = c.runs(study="quadratic")      # every run, oldest first
        runs.to_pandas()                      # a DataFrame (params.lr, metrics.loss, ...)
        c.reports("quadratic:3").to_pandas()  # every report of a run: run, step, at, loss...
        c.reports("quadratic")                # ... or of every run of a study

    Reads reconnect once when the daemon was restarted meanwhile. Standard library only
    (pandas on `to_pandas()`): it never imports Ax, torch or Textual.
    """

    def __init__(self, path: Path | None = None, timeout: float | None = 30.0) -> None:
        self.path = path or socket_path()
        self.timeout = timeout
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise _no_daemon(self.path, "no socket" if isinstance(exc, FileNotFoundError) else "nobody listening") from None
        except PermissionError:
            self.sock.close()
            raise DaemonError("denied", f"permission denied on {self.path}: the daemon belongs to another user") from None
        self.file = self.sock.makefile("rb")
        self.next_id = 0
        self.hello = _check_hello(self._readline())

    def _readline(self) -> bytes:
        line = self.file.readline(MAX_RESPONSE)
        if not line:
            raise DaemonError("error", "the daemon closed the connection")
        return line

    def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        line = encode({"id": self.next_id, "op": op, "args": args})
        if len(line) > MAX_LINE:
            raise DaemonError("too_large", f"{op}: the request is {len(line):,} bytes, over the daemon's limit of "
                                           f"{MAX_LINE:,}")
        try:
            self.sock.sendall(line)
        except OSError as exc:  # the daemon hung up mid-request: say so, with its reason if it gave one
            try:
                reason = json.loads(self._readline()).get("error", {}).get("message")
            except (DaemonError, OSError, ValueError, AttributeError):
                reason = None
            raise DaemonError("error", reason or f"the daemon closed the connection during {op} ({exc})") from None
        while True:
            msg = json.loads(self._readline())
            if msg.get("id") == self.next_id:
                return _result(msg)

    def subscribe(self, topics: list[str], run: str | None = None) -> Iterator[dict[str, Any]]:
        """Events as they come, until the daemon goes away."""
        self.sock.settimeout(None)
        self.call("subscribe", topics=topics, run=run)
        while True:
            line = self.file.readline(MAX_RESPONSE)
            if not line.endswith(b"\n"):  # the daemon went away (or cut a subscriber too far behind)
                return
            msg = json.loads(line)
            if "event" in msg:
                yield msg

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    # ------------------------------------------------------------ reads, as plain dicts

    def _read(self, op: str, **args: Any) -> Any:
        """A read-only request; once more on a new connection if the old one was cut (a
        daemon restarted since this client connected)."""
        try:
            return self.call(op, **args)
        except (DaemonError, OSError) as exc:
            if isinstance(exc, DaemonError) and "closed the connection" not in exc.message:
                raise
            self.close()
            self._connect()
            return self.call(op, **args)

    def studies(self, archived: bool = False) -> Rows:
        """Each study's progress (hypd.ipc.StudySummary); archived ones too if asked."""
        return Rows(self._read("studies", archived=archived))

    def study(self, name: str) -> dict[str, Any]:
        for summary in self.studies(archived=True):
            if summary["name"] == name:
                return summary  # type: ignore[no-any-return]
        raise DaemonError("not_found", f"no study {name!r}")

    def runs(self, study: str | None = None, state: str | None = None, archived: bool = False,
             limit: int | None = None) -> Rows:
        """Runs (hypd.ipc.Run), oldest first; all of them unless `limit` (then the newest)."""
        rows = self._read("ls", state=state, study=study, limit=limit, newest_first=limit is not None,
                          archived=archived)
        return Rows(reversed(rows) if limit is not None else rows)

    def run(self, name: str) -> dict[str, Any]:
        """One run (hypd.ipc.Run), e.g. run("quadratic:3")."""
        return self._read("info", run=name, reports=0)["run"]  # type: ignore[no-any-return]

    def reports(self, target: str) -> Rows:
        """Every report of a run ("study:N") or of each run of a study, one dict each:
        run, step, at (a Unix time), then a key per metric."""
        names = [target] if ":" in target else [r["name"] for r in self.runs(study=target, archived=True)]
        out = Rows()
        for name in names:
            since = 0
            while True:
                page = self._read("metrics", run=name, since=since, limit=REPORTS_PAGE)
                if not page["reports"]:  # (a page may be shorter than asked for: the daemon caps it)
                    break
                out.extend({"run": name, "step": r["step"], "at": r["at"], **r["values"]} for r in page["reports"])
                since = page["next"]
        return out

    def export(self, study: str, reports: bool = False) -> Rows:
        """The study's tidy table, as `hypd export` writes it: a row per run (its fields,
        `param_*` columns, the final value of every metric) or, with reports, a row per
        report; fetched a page at a time (`.to_pandas()` for a DataFrame)."""
        from hypd import export

        header, pages = export.table(self._read, study, reports)
        return Rows(dict(zip(header, row)) for page in pages for row in page)

    def leaderboard(self, study: str, limit: int | None = None) -> Rows:
        """The study's best run of each trial, best first."""
        return Rows(self._read("leaderboard", study=study, limit=limit)["runs"])

    def best(self, study: str) -> dict[str, Any]:
        """The observed best run and the model's predicted best (Ax)."""
        return self._read("best", study=study)  # type: ignore[no-any-return]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
