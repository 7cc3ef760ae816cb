"""hypd.watchproto: commands as JSON lines; the event decoder fed streams split anywhere,
malformed input, the size caps."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.watchproto import (
    MAX_FRAME,
    MAX_HEADER,
    Alive,
    Clean,
    Error,
    EventDecoder,
    Exited,
    Hello,
    LaunchFailed,
    LogBytes,
    Pong,
    Signalled,
    Size,
    Started,
    encode_event,
    encode_kill,
    encode_launch,
    encode_ping,
    encode_unwatch,
    encode_watch,
)

EVENTS = [
    Hello("/home/u/hypd", 8, True, 1, True),
    Hello("/r", None, False, 1),
    Started("s:1", 1234, "98765"),
    Started("s:1", 1234, None),
    LaunchFailed("s:2", "cannot start /bin/sh: No such file"),
    Alive("s:1", 1234, "98765"),
    Signalled("s:1", True),
    Signalled("x", False),
    Pong(),
    Error("unknown op 'x'"),
    Error("bad kill command", "s:1"),
    Size("s:1", 0),
    Size("s:1", 1 << 40),
    LogBytes("s:1", 0, b"hello\n"),
    LogBytes("s:1", 6, b"\n\n{\"ev\":\"pong\"}\n\x00\xff"),  # bytes that look like lines stay bytes
    LogBytes("s:1", 12, b""),
    Exited("s:1", 0, "-", 20),
    Exited("s:1", None, None, 0),
    Exited("s:1", 137, "train", 5),
    Clean("s:1", ()),
    Clean("s:1", (11, 12)),
    Error("\u00e9t\u00e9 \n line", "r\u00fcn"),  # non-ASCII and a newline inside strings
]
STREAM = b"".join(encode_event(ev) for ev in EVENTS)


def decode_all(chunks: list[bytes], decoder: EventDecoder | None = None) -> list[object]:
    decoder = decoder or EventDecoder()
    out: list[object] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


# --------------------------------------------------------------------------- commands

def test_commands_are_single_json_lines() -> None:
    cases = {
        encode_launch("s:1", "/r/ctl", "#!/bin/sh\necho 'hi'\n", 2.5):
            {"op": "launch", "run": "s:1", "ctl": "/r/ctl", "script": "#!/bin/sh\necho 'hi'\n", "grace": 2.5},
        encode_watch("s:1", "/c", 10, 42, "777", 3):
            {"op": "watch", "run": "s:1", "ctl": "/c", "offset": 10, "pid": 42, "start": "777", "grace": 3},
        encode_watch("s:1", "/c", 0):
            {"op": "watch", "run": "s:1", "ctl": "/c", "offset": 0, "pid": None, "start": None, "grace": 10.0},
        encode_kill("s:1", 10.0): {"op": "kill", "run": "s:1", "grace": 10.0},
        encode_unwatch("s:1"): {"op": "unwatch", "run": "s:1"},
        encode_ping(): {"op": "ping"},
    }
    for line, obj in cases.items():
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == obj
        line.decode("ascii")  # non-ASCII is escaped: nothing odd can reach the watcher's line split


def test_a_script_with_non_ascii_survives() -> None:
    script = "echo 'h\u00e9llo \u2603'\n"
    assert json.loads(encode_launch("r", "/c", script, 1))["script"] == script


# --------------------------------------------------------------------------- decoding

def test_round_trip_in_one_chunk() -> None:
    assert decode_all([STREAM]) == EVENTS


def test_round_trip_one_byte_at_a_time() -> None:
    assert decode_all([STREAM[i:i + 1] for i in range(len(STREAM))]) == EVENTS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_decodes_to_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in zip(points, points[1:])]
    assert decode_all(chunks) == EVENTS


_runs = st.text(min_size=1, max_size=12)
_events = st.one_of(
    st.builds(Hello, st.text(max_size=30), st.none() | st.integers(1, 512), st.booleans(), st.integers(0, 9),
              st.booleans()),
    st.builds(Started, _runs, st.integers(1, 1 << 22), st.none() | st.integers(0, 10**12).map(str)),
    st.builds(LaunchFailed, _runs, st.text(max_size=50)),
    st.builds(Alive, _runs, st.integers(1, 1 << 22), st.none() | st.integers(0, 10**12).map(str)),
    st.builds(Signalled, _runs, st.booleans()),
    st.just(Pong()),
    st.builds(Error, st.text(max_size=50), st.none() | _runs),
    st.builds(Size, _runs, st.integers(0, 1 << 50)),
    st.builds(LogBytes, _runs, st.integers(0, 1 << 40), st.binary(max_size=300)),
    st.builds(Exited, _runs, st.none() | st.integers(-1, 255), st.none() | st.text(max_size=10), st.integers(0, 1 << 40)),
    st.builds(Clean, _runs, st.lists(st.integers(1, 1 << 22), max_size=5).map(tuple)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_events, max_size=20), st.data())
def test_any_stream_of_events_split_anywhere_decodes_to_itself(events: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_event(ev) for ev in events)  # type: ignore[arg-type]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    points = [0, *sorted(cuts), len(stream)]
    assert decode_all([stream[a:b] for a, b in zip(points, points[1:])]) == events


def test_a_frame_whose_bytes_are_still_on_the_way_is_held() -> None:
    d = EventDecoder()
    assert d.feed(b'{"ev":"log","run":"r","offset":5,"n":4}\nab') == []
    assert d.feed(b"c") == []
    assert d.feed(b'd{"ev":"pong"}\n') == [LogBytes("r", 5, b"abcd"), Pong()]


def test_blank_lines_are_ignored() -> None:
    assert decode_all([b"\n \n" + encode_event(Pong()) + b"\r\n"]) == [Pong()]


@pytest.mark.parametrize("line, why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"ev"', "not a JSON object"),
    (b'{"no":"ev"}', "unknown event None"),
    (b'{"ev":"bogus"}', "unknown event 'bogus'"),
    (b'{"ev":7}', "unknown event 7"),
    (b'{"ev":"started","run":"r","pid":"12","start":"1"}', "pid is not an integer"),
    (b'{"ev":"started","run":"r","pid":0,"start":"1"}', "pid is not an integer >= 1"),
    (b'{"ev":"started","run":"r","pid":true,"start":"1"}', "pid is not an integer"),
    (b'{"ev":"exit","run":"r","status":"0","stage":"-","size":1}', "status is not an integer"),
    (b'{"ev":"exit","run":"r","status":0,"stage":"-","size":-1}', "size is not an integer >= 0"),
    (b'{"ev":"exit","run":"r","status":0,"stage":"-"}', "size is not an integer"),
    (b'{"ev":"clean","run":"r","ended":[1,"2"]}', "ended is not a list of pids"),
    (b'{"ev":"signalled","run":"r","found":1}', "found is not a boolean"),
    (b'{"ev":"size","run":5,"size":1}', "run is not a string"),
    (b'{"ev":"log","run":"r","offset":-1,"n":1}', "offset is not an integer"),
    (b'{"ev":"log","run":"r","offset":0,"n":1.5}', "n is not an integer"),
    (b'\xff\xfe{"ev":"pong"}', "not JSON"),
    (b"[" * 100000, "longer than"),
])
def test_malformed_lines_become_errors_and_decoding_goes_on(line: bytes, why: str) -> None:
    events = decode_all([line + b"\n" + encode_event(Pong())])
    assert len(events) == 2, events
    assert isinstance(events[0], Error) and why in events[0].why and events[0].why.startswith("undecodable")
    assert events[1] == Pong()


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    d = EventDecoder(max_header=10**7)
    events = d.feed(b"[" * 1_000_000 + b"\n" + encode_event(Pong()))
    assert isinstance(events[0], Error) and events[1] == Pong()


def test_a_string_start_time_may_come_as_an_integer() -> None:
    assert decode_all([b'{"ev":"alive","run":"r","pid":3,"start":1234}\n']) == [Alive("r", 3, "1234")]


def test_a_hello_without_send_logs_means_sizes() -> None:
    assert decode_all([b'{"ev":"hello","root":"/r","nproc":1,"pidfd":false,"version":1}\n']) == [
        Hello("/r", 1, False, 1, False)]


def test_unknown_fields_are_ignored() -> None:
    assert decode_all([b'{"ev":"size","run":"r","size":3,"future":1}\n']) == [Size("r", 3)]


def test_an_overlong_header_is_dropped_up_to_its_newline() -> None:
    d = EventDecoder(max_header=100)
    out = d.feed(b'{"ev":"error","why":"' + b"x" * 150)  # no newline yet, already too long
    assert len(out) == 1 and isinstance(out[0], Error) and "longer than 100" in out[0].why
    assert d.feed(b"x" * 1000) == []  # the rest of that line is skipped...
    assert d.feed(b'"}\n' + encode_event(Size("r", 1))) == [Size("r", 1)]  # ...and it is back in step
    assert d._buf == b""


def test_a_complete_overlong_line_is_an_error() -> None:
    d = EventDecoder(max_header=100)
    out = d.feed(b'{"ev":"error","why":"' + b"x" * 150 + b'"}\n' + encode_event(Pong()))
    assert isinstance(out[0], Error) and out[1:] == [Pong()]


def test_an_overlarge_frame_is_an_error_and_resyncs_at_the_next_newline() -> None:
    header = json.dumps({"ev": "log", "run": "r", "offset": 0, "n": MAX_FRAME + 1}).encode() + b"\n"
    out = decode_all([header + b"raw bytes that are not read as a frame\n" + encode_event(Pong())])
    assert len(out) == 2 and isinstance(out[0], Error) and out[0].run == "r" and "log frame" in out[0].why
    assert out[1] == Pong()


def test_a_frame_at_the_cap_passes() -> None:
    data = bytes(range(256)) * (MAX_FRAME // 256)
    ev = LogBytes("r", 0, data)
    stream = encode_event(ev)
    chunks = [stream[i:i + 1_000_003] for i in range(0, len(stream), 1_000_003)]
    assert decode_all(chunks) == [ev]


def test_the_buffer_does_not_keep_consumed_bytes() -> None:
    d = EventDecoder()
    for _ in range(1000):
        d.feed(encode_event(LogBytes("r", 0, b"x" * 1000)))
    assert d._buf == b""


def test_max_header_is_generous_for_real_events() -> None:
    assert len(encode_event(Error("x" * 1000, "run"))) < MAX_HEADER
