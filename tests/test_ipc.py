"""hypd.ipc: request validation, message encoding, the socket path, peer credentials and
the CLI's exit codes. No daemon."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from hypd.ipc import (
    ERROR_EXIT,
    MAX_LINE,
    OPS,
    PROTOCOL_VERSION,
    TOPICS,
    DaemonError,
    ExitCode,
    ProtocolError,
    Request,
    encode,
    error,
    event,
    ok,
    ok_list,
    parse_request,
    peer_credentials,
    socket_path,
)


def line(msg: Any) -> bytes:
    return json.dumps(msg).encode() + b"\n"


def req(op: str, args: Any = None, **extra: Any) -> bytes:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": 1, "op": op, **extra}
    if args is not None:
        msg["args"] = args
    return line(msg)


def refused(data: bytes, code: str = "bad_request") -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.code == code, info.value.message
    assert info.value.message and str(info.value) == info.value.message
    return info.value


# A valid, complete argument set for every op, and what it parses to.
VALID: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ping": ({}, {}),
    "submit": ({"path": "/s/a.toml", "text": "[study]"}, {"path": "/s/a.toml", "text": "[study]", "as_name": None}),
    "ls": ({}, {"state": None, "study": None, "limit": None, "newest_first": False, "fields": None,
                "archived": False}),
    "info": ({"run": "a:1"}, {"run": "a:1", "reports": 1000}),
    "logs": ({"run": "a:1"}, {"run": "a:1", "offset": 0, "limit": 1 << 20, "tail": None}),
    "metrics": ({"run": "a:1"}, {"run": "a:1", "since": 0, "limit": 10_000}),
    "kill": ({"target": "a"}, {"target": "a"}),
    "retry": ({"target": "a:3"}, {"target": "a:3", "state": None, "prepare": False}),
    "pause": ({"study": "a"}, {"study": "a"}),
    "resume": ({"study": "a"}, {"study": "a"}),
    "leaderboard": ({"study": "a"}, {"study": "a", "limit": None, "runs": False}),
    "best": ({"study": "a"}, {"study": "a"}),
    "suggest": ({"study": "a", "params": {"lr": 0.1}}, {"study": "a", "params": {"lr": 0.1}}),
    "studies": ({}, {"archived": False}),
    "export": ({"study": "a"}, {"study": "a", "reports": False, "after": None, "limit": 5000}),
    "hosts": ({}, {}),
    "stop": ({}, {"kill_runs": False}),
    "hosts_add": ({"name": "g", "target": "u@h"}, {"name": "g", "target": "u@h", "options": {}}),
    "hosts_rm": ({"name": "g"}, {"name": "g"}),
    "hosts_drain": ({"name": "g"}, {"name": "g", "undo": False}),
    "subscribe": ({}, {"topics": ["run", "study", "host"], "run": None}),
    "extend": ({"study": "a", "trials": 20}, {"study": "a", "trials": 20}),
    "archive": ({"study": "a"}, {"study": "a", "undo": False}),
    "rm": ({"study": "a"}, {"study": "a", "files": False}),
    "pull": ({"run": "a:1"}, {"run": "a:1"}),
}

# Every argument given explicitly, with a value of its declared type.
FULL: dict[str, dict[str, Any]] = {
    "submit": {"path": "p", "text": "t", "as_name": "b"},
    "ls": {"state": "running", "study": "a", "limit": 5, "newest_first": True, "fields": ["name", "state"],
           "archived": True},
    "studies": {"archived": True},
    "archive": {"study": "a", "undo": True},
    "rm": {"study": "a", "files": True},
    "info": {"run": "a:1", "reports": 10},
    "logs": {"run": "a:1", "offset": 100, "limit": 10, "tail": 50},
    "metrics": {"run": "a:1", "since": 4, "limit": 100},
    "retry": {"target": "a", "state": "failed", "prepare": True},
    "leaderboard": {"study": "a", "limit": 3, "runs": True},
    "export": {"study": "a", "reports": True, "after": "3:7", "limit": 100},
    "stop": {"kill_runs": True},
    "subscribe": {"topics": ["log"], "run": "a:2"},
}


def test_valid_covers_every_op() -> None:
    assert set(VALID) == set(OPS)
    assert set(FULL) <= set(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_with_required_args_and_defaults(op: str) -> None:
    args, parsed = VALID[op]
    assert parse_request(req(op, args)) == Request(1, op, parsed)


@pytest.mark.parametrize("op", sorted(FULL))
def test_every_argument_given(op: str) -> None:
    assert parse_request(req(op, FULL[op])) == Request(1, op, FULL[op])


@pytest.mark.parametrize("op", [op for op, (args, _) in VALID.items() if not args])
def test_args_may_be_left_out(op: str) -> None:
    assert parse_request(line({"v": 1, "op": op})).op == op


def test_optional_arguments_accept_null() -> None:
    r = parse_request(req("ls", {"state": None, "study": None, "limit": None, "fields": None}))
    assert r.args == {"state": None, "study": None, "limit": None, "newest_first": False, "fields": None,
                      "archived": False}
    assert parse_request(req("submit", {"path": "p", "text": "t", "as_name": None})).args["as_name"] is None


def test_defaults_are_not_shared_between_requests() -> None:
    # A handler that changed its request's list would change the default of every later
    # request (checked by identity, so that this test itself changes nothing).
    a = parse_request(req("subscribe"))
    b = parse_request(req("subscribe"))
    assert a.args["topics"] == b.args["topics"] == ["run", "study", "host"]
    assert a.args["topics"] is not b.args["topics"]
    assert a.args["topics"] is not OPS["subscribe"]["topics"].default


@pytest.mark.parametrize("request_id", [None, 0, 7, -3, 2**40, "abc", ""])
def test_ids(request_id: Any) -> None:
    msg: dict[str, Any] = {"v": 1, "op": "ping"}
    if request_id is not None:
        msg["id"] = request_id
    assert parse_request(line(msg)).id == request_id


def test_no_trailing_newline_and_extra_whitespace() -> None:
    assert parse_request(b'  {"v":1,"op":"ping","id":1}  ').op == "ping"
    assert parse_request(b'{"v":1,"op":"ping"}\r\n').op == "ping"


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("data", [b"", b"\n", b"{", b"not json", b"{'v': 1}", b"\xff\xfe", b'{"v":1,}',
                                  b'{"v":1,"op":"ping"} {"v":1,"op":"ping"}'])
def test_not_json(data: bytes) -> None:
    assert "not a JSON line" in refused(data).message


@pytest.mark.parametrize("data", [b"[]", b"1", b'"ping"', b"null", b"true", b'[{"v":1,"op":"ping"}]', b"NaN"])
def test_not_an_object(data: bytes) -> None:
    assert "JSON object" in refused(data).message


@pytest.mark.parametrize("field", ["version", "ID", "extra", "arg", "ops"])
def test_unknown_field(field: str) -> None:
    assert field in refused(line({"v": 1, "op": "ping", field: 1})).message


@pytest.mark.parametrize("v", [None, 0, 2, -1, "1", [1], {"v": 1}])
def test_wrong_version(v: Any) -> None:
    msg: dict[str, Any] = {"op": "ping"}
    if v is not None:
        msg["v"] = v
    refused(line(msg), "version")


def test_missing_version() -> None:
    refused(line({"op": "ping", "id": 1}), "version")


def test_version_is_checked_before_the_op() -> None:
    refused(line({"v": 2, "op": "no-such-op"}), "version")


def test_boolean_version_is_refused() -> None:
    refused(line({"v": True, "op": "ping"}), "version")


@pytest.mark.parametrize("op", ["", "PING", "nope", "lss", "subscribe ", None, 1])
def test_unknown_op(op: Any) -> None:
    msg: dict[str, Any] = {"v": 1, "id": 1}
    if op is not None:
        msg["op"] = op
    assert "unknown op" in refused(line(msg)).message


@pytest.mark.parametrize("op", [["ls"], {"op": "ls"}])
def test_unhashable_op(op: Any) -> None:
    refused(line({"v": 1, "id": 1, "op": op}))


@pytest.mark.parametrize("args", [[], "x", 1, None, True, ["run", "a:1"]])
def test_args_not_an_object(args: Any) -> None:
    assert "args must be an object" in refused(line({"v": 1, "op": "info", "args": args})).message


@pytest.mark.parametrize("op", sorted(OPS))
def test_unknown_argument(op: str) -> None:
    args = {**VALID[op][0], "bogus": 1}
    e = refused(req(op, args))
    assert f"{op}: unknown argument(s): bogus" in e.message


def test_unknown_arguments_are_all_named() -> None:
    assert "unknown argument(s): a, b" in refused(req("ping", {"b": 1, "a": 2})).message


REQUIRED = [(op, name) for op, decl in OPS.items() for name, arg in decl.items() if arg.required]


def test_required_arguments() -> None:
    assert sorted(REQUIRED) == sorted([
        ("submit", "path"), ("submit", "text"), ("info", "run"), ("logs", "run"), ("metrics", "run"),
        ("kill", "target"), ("retry", "target"), ("pause", "study"), ("resume", "study"),
        ("leaderboard", "study"), ("best", "study"), ("suggest", "study"), ("suggest", "params"),
        ("hosts_add", "name"), ("hosts_add", "target"), ("hosts_rm", "name"), ("hosts_drain", "name"),
        ("extend", "study"), ("extend", "trials"), ("archive", "study"), ("rm", "study"), ("pull", "run"), ("export", "study")])


@pytest.mark.parametrize("op, name", REQUIRED)
def test_missing_required_argument(op: str, name: str) -> None:
    args = {k: v for k, v in VALID[op][0].items() if k != name}
    assert f"{op}: missing argument {name!r}" in refused(req(op, args)).message


@pytest.mark.parametrize("op, name", REQUIRED)
def test_required_argument_is_not_nullable(op: str, name: str) -> None:
    args = {**VALID[op][0], name: None}
    assert "wrong type" in refused(req(op, args)).message


WRONG_TYPES = [
    ("ls", "limit", True),  # bool where int
    ("ls", "limit", False),
    ("ls", "limit", "5"),
    ("ls", "limit", 5.0),
    ("ls", "limit", [5]),
    ("ls", "state", 1),
    ("ls", "state", True),
    ("ls", "study", ["a"]),
    ("logs", "offset", True),
    ("logs", "offset", None),  # not optional: it has a number default
    ("logs", "offset", 1.5),
    ("logs", "limit", "10"),
    ("info", "run", 1),
    ("info", "run", {"run": "a:1"}),
    ("submit", "path", ["p"]),
    ("submit", "as_name", 3),
    ("suggest", "params", ["lr", 0.1]),
    ("suggest", "params", "lr=0.1"),
    ("stop", "kill_runs", 1),  # int where bool
    ("stop", "kill_runs", "yes"),
    ("stop", "kill_runs", None),
    ("subscribe", "topics", "run"),  # str where list
    ("subscribe", "topics", {"run": True}),
    ("subscribe", "topics", None),
    ("subscribe", "run", 3),
    ("leaderboard", "limit", True),
    ("retry", "state", ["failed"]),
]


@pytest.mark.parametrize("op, name, value", WRONG_TYPES)
def test_wrong_type(op: str, name: str, value: Any) -> None:
    args = {**VALID[op][0], name: value}
    assert f"{op}: argument {name!r} has the wrong type" in refused(req(op, args)).message


@pytest.mark.parametrize("topics", [[["run"]], [{"t": "run"}]])
def test_subscribe_topics_must_be_strings(topics: list[Any]) -> None:
    refused(req("subscribe", {"topics": topics}))


def test_topics() -> None:
    assert TOPICS == ("run", "study", "host", "log")


@pytest.mark.parametrize("request_id", [True, False, 1.5, [1], {"id": 1}])
def test_bad_id_types(request_id: Any) -> None:
    assert "id must be" in refused(line({"v": 1, "op": "ping", "id": request_id})).message


def test_errors_are_reported_in_a_stable_order() -> None:
    # Unknown fields before the version, version before the op, op before the args.
    assert "unknown field" in refused(line({"v": 9, "op": "x", "zz": 1})).message
    refused(line({"v": 9, "op": "x", "args": 1}), "version")
    assert "unknown op" in refused(line({"v": 1, "op": "x", "args": 1})).message


# ------------------------------------------------------------------ encoding

def test_encode_is_one_compact_line_with_the_version() -> None:
    data = encode({"a": 1, "b": "x y"})
    assert data == b'{"v":1,"a":1,"b":"x y"}\n'
    assert data.count(b"\n") == 1
    assert encode({"text": "two\nlines"}).count(b"\n") == 1


def test_encode_falls_back_to_str() -> None:
    assert json.loads(encode({"path": Path("/a/b")})) == {"v": 1, "path": "/a/b"}


@pytest.mark.parametrize("request_id", [None, 1, "x"])
@pytest.mark.parametrize("result", [None, 0, "s", [1, 2], {"a": [1, {"b": None}]}, "ünï ✓"])
def test_ok_round_trip(request_id: Any, result: Any) -> None:
    assert json.loads(ok(request_id, result)) == {"v": 1, "id": request_id, "ok": True, "result": result}


def test_error_round_trip() -> None:
    assert json.loads(error(3, "not_found", "no run a:9")) == {
        "v": 1, "id": 3, "ok": False, "error": {"code": "not_found", "message": "no run a:9"}}


def test_event_round_trip() -> None:
    assert json.loads(event("run", {"name": "a:1", "state": "running"})) == {
        "v": 1, "event": "run", "data": {"name": "a:1", "state": "running"}}


def test_a_client_request_parses_back() -> None:
    data = encode({"id": 4, "op": "logs", "args": {"run": "a:1", "offset": 3}})
    assert parse_request(data) == Request(4, "logs", {"run": "a:1", "offset": 3, "limit": 1 << 20, "tail": None})


def test_max_line() -> None:
    assert MAX_LINE == 1 << 20


# ------------------------------------------------------------------ socket path, peer

def test_socket_path_short_home(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path / "run" / "hypd.sock"


def test_socket_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPD_HOME", str(tmp_path / "h"))
    assert socket_path() == tmp_path / "h" / "run" / "hypd.sock"


def test_socket_path_long_home() -> None:
    home = Path("/tmp") / ("x" * 120) / "home"
    path = socket_path(home)
    assert path.name == "hypd.sock"
    assert path.parent.parent == Path("/tmp")
    prefix = f"hypd-{os.getuid()}-"
    assert path.parent.name.startswith(prefix)
    digest = path.parent.name[len(prefix):]
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)
    assert len(os.fsencode(path)) < 100
    assert socket_path(home) == path  # stable
    assert socket_path(Path(str(home) + "2")) != path  # one per home


@pytest.mark.parametrize("extra", range(40, 110, 7))
def test_socket_path_always_fits(extra: int) -> None:
    home = Path("/tmp/" + "d" * extra)
    path = socket_path(home)
    assert len(os.fsencode(path)) < 100
    if len(os.fsencode(home / "run" / "hypd.sock")) < 100:
        assert path == home / "run" / "hypd.sock"
    else:
        assert str(path).startswith(f"/tmp/hypd-{os.getuid()}-")


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="Linux only")
def test_peer_credentials_on_a_socketpair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert peer_credentials(a) == (os.getpid(), os.getuid())
        assert peer_credentials(b) == (os.getpid(), os.getuid())
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ exit codes

def test_exit_codes_are_stable() -> None:
    assert {e.name: int(e) for e in ExitCode} == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "NO_DAEMON": 3, "NOT_FOUND": 4, "INVALID": 5, "CONFLICT": 6,
        "PROTOCOL": 7}


@pytest.mark.parametrize("code, exit_code", [
    ("error", 1), ("bad_request", 7), ("too_large", 7), ("version", 7), ("not_found", 4), ("invalid", 5),
    ("conflict", 6), ("denied", 1), ("something_new", 1),
])
def test_daemon_error_exit_codes(code: str, exit_code: int) -> None:
    assert DaemonError(code, "m").exit_code == exit_code
    assert ERROR_EXIT.get(code, ExitCode.ERROR) == exit_code


def test_a_long_list_encoded_in_slices_is_the_same_line() -> None:
    items = [{"n": i, "x": [1.5, float("inf")], "s": "é\n"} for i in range(1234)]
    for part in (items, items[:1], []):
        assert ok_list(7, part, slice_len=100) == ok(7, part)
