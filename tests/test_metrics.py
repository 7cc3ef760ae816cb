"""hypd.metrics: METRICS lines, regular-expression metrics, splitting output into lines,
reading a log's lines by offset, folding the objective. Pure."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypd.metrics import (
    MAX_METRICS,
    MAX_NAME,
    MAX_STEP,
    METRICS_PREFIX,
    LineBatch,
    MetricsReader,
    Report,
    fold_objective,
    read_lines,
    split_lines,
)

NAN = float("nan")
INF = float("inf")


def values(report: Report | None) -> dict[str, float] | None:
    return None if report is None else dict(report.values)


# ------------------------------------------------------------------ METRICS lines

def test_prefix() -> None:
    assert METRICS_PREFIX == "METRICS:"


@pytest.mark.parametrize("line, expected", [
    ("METRICS: loss=0.31 acc=0.88", {"loss": 0.31, "acc": 0.88}),
    ("METRICS:loss=1", {"loss": 1.0}),
    ("   METRICS: loss=2", {"loss": 2.0}),
    ("\tMETRICS: loss=2\t acc=3  ", {"loss": 2.0, "acc": 3.0}),
    ("METRICS: loss=2\r", {"loss": 2.0}),
    ("METRICS: loss=1e-3 big=1E5 neg=-2 plus=+3 dot=.5 int=7", {"loss": 1e-3, "big": 1e5, "neg": -2.0,
                                                               "plus": 3.0, "dot": 0.5, "int": 7.0}),
    ("METRICS: train/loss=1 val.acc=2 a-b=3 _x=4 K9=5", {"train/loss": 1.0, "val.acc": 2.0, "a-b": 3.0,
                                                         "_x": 4.0, "K9": 5.0}),
    ("METRICS: loss=1 junk acc=2", {"loss": 1.0, "acc": 2.0}),
    ("METRICS: loss=abc acc=0.5", {"acc": 0.5}),  # non-numeric values skipped
    ("METRICS: loss=0.5, acc=0.7", {"acc": 0.7}),  # "0.5," is not a number
    ("METRICS: loss==1 acc=2", {"acc": 2.0}),
    ("METRICS: 9lives=1 ok=2", {"lives": 1.0, "ok": 2.0}),  # a key starts at a letter
    ("METRICS: loss=1 loss=2", {"loss": 2.0}),  # the last one wins
    ("METRICS: loss=1 =3 acc=", {"loss": 1.0}),
])
def test_metrics_line_values(line: str, expected: dict[str, float]) -> None:
    assert values(MetricsReader().line(line)) == expected


@pytest.mark.parametrize("line", [
    "",
    "   ",
    "loss=0.3",  # no prefix
    "epoch 3 METRICS: loss=0.3",  # prefix not at the start
    "metrics: loss=0.3",  # case matters
    "METRICS:",
    "METRICS: nothing here",
    "METRICS: loss=abc",
    "METRICS: step=3",  # a step alone is no report
    "METRICS: step=3 junk",
])
def test_lines_without_a_report(line: str) -> None:
    r = MetricsReader(next_step=4)
    assert r.line(line) is None
    assert r.next_step == 4  # nothing consumed


def test_nan_and_inf_are_values() -> None:
    v = values(MetricsReader().line("METRICS: a=nan b=inf c=-inf d=NaN e=Infinity"))
    assert v is not None and set(v) == {"a", "b", "c", "d", "e"}
    assert math.isnan(v["a"]) and math.isnan(v["d"])
    assert v["b"] == INF and v["c"] == -INF and v["e"] == INF


def test_explicit_steps() -> None:
    r = MetricsReader()
    assert r.line("METRICS: loss=1 step=5") == Report(5, {"loss": 1.0})
    assert r.next_step == 6
    assert r.line("METRICS: step=7 loss=2") == Report(7, {"loss": 2.0})  # step may come first
    assert r.line("METRICS: loss=3 step=2") == Report(2, {"loss": 3.0})  # an earlier step is kept
    assert r.next_step == 8  # ... and does not move the counter back
    assert r.line("METRICS: loss=4 step=3.0 step=1e1") == Report(10, {"loss": 4.0})  # integral floats
    assert r.refused == 0 and r.last_refusal is None


def test_step_not_a_number_is_ignored() -> None:
    r = MetricsReader()
    assert r.line("METRICS: loss=1 step=abc") == Report(0, {"loss": 1.0})


@pytest.mark.parametrize("raw, why", [
    ("nan", "not a finite integer"), ("inf", "not a finite integer"), ("-inf", "not a finite integer"),
    ("1e400", "not a finite integer"), ("3.9", "not a finite integer"), ("-1", "outside 0..2**63-1"),
    ("9223372036854775808", "outside 0..2**63-1"),  # 2**63: one past SQLite's INTEGER
    ("1e19", "outside 0..2**63-1"), ("99999999999999999999999999", "outside 0..2**63-1"),
])
@pytest.mark.parametrize("regex", [False, True])
def test_a_step_that_is_no_store_integer_refuses_the_line(raw: str, why: str, regex: bool) -> None:
    # A step SQLite cannot store (or that is no step at all) refuses that line only: the
    # reader counts it, says why, and goes on with the next line as if it was not there.
    if regex:
        r = MetricsReader({"step": r"iter (\S+)", "loss": r"loss (\S+)"}, next_step=3)
        line = f"iter {raw} loss 1"
    else:
        r = MetricsReader(next_step=3)
        line = f"METRICS: loss=1 step={raw}"
    assert r.line(line) is None
    assert r.refused == 1
    assert r.last_refusal is not None and why in r.last_refusal and "\n" not in r.last_refusal
    assert r.next_step == 3
    assert r.line("METRICS: loss=2") == Report(3, {"loss": 2.0})
    assert r.refused == 1


def test_the_largest_step_is_kept_and_then_implicit_steps_are_refused() -> None:
    r = MetricsReader()
    assert r.line(f"METRICS: loss=1 step={MAX_STEP}") == Report(MAX_STEP, {"loss": 1.0})
    assert r.line(f"METRICS: loss=1 step={float(2**62)}") == Report(2**62, {"loss": 1.0})
    assert r.line("METRICS: loss=2") is None  # the next implicit step would be 2**63
    assert r.refused == 1 and "implicit" in (r.last_refusal or "")
    assert r.line("METRICS: loss=3 step=0") == Report(0, {"loss": 3.0})  # explicit ones still go


def test_the_last_step_given_wins() -> None:
    r = MetricsReader()
    assert r.line("METRICS: loss=1 step=nan step=5") == Report(5, {"loss": 1.0})
    assert r.line("METRICS: loss=1 step=5 step=-1") is None
    assert r.line("METRICS: loss=1 step=5 step=abc") == Report(5, {"loss": 1.0})  # a non-number is ignored


def test_a_bad_step_alone_is_no_report_and_no_refusal() -> None:
    r = MetricsReader()
    assert r.line("METRICS: step=nan") is None
    assert r.refused == 0


def test_metric_names_and_counts_are_bounded() -> None:
    r = MetricsReader()
    long = "n" * (MAX_NAME + 1)
    ok = "n" * MAX_NAME
    assert r.line(f"METRICS: {long}=1 {ok}=2 loss=3") == Report(0, {ok: 2.0, "loss": 3.0})
    assert r.line(f"METRICS: {long}=1") is None
    many = " ".join(f"m{i}=1" for i in range(MAX_METRICS + 50))
    report = r.line(f"METRICS: {many} step=7 m0=5")
    assert report is not None and report.step == 7
    assert list(report.values) == [f"m{i}" for i in range(MAX_METRICS)]  # the first ones win
    assert report.values["m0"] == 5.0  # a name already kept still takes its last value
    assert r.refused == 0


def test_a_batch_with_bad_lines_keeps_every_other_report() -> None:
    # The daemon reads a batch of lines and stores its reports in one transaction: lines
    # a store could not take are refused here, one by one, and the rest all get through.
    import json
    import sqlite3

    lines = ["METRICS: loss=1", f"METRICS: loss=2 step={2**63}", "METRICS: loss=3 step=nan",
             "METRICS: loss=4 acc=inf", "noise \ufffd\x00", "METRICS: loss=5 step=-3",
             "METRICS: loss=nan", "METRICS: loss=6 step=9", "METRICS: loss=7"]
    r = MetricsReader()
    reports = [rep for line in lines if (rep := r.line(line)) is not None]
    assert [(rep.step, rep.values["loss"]) for rep in reports if not math.isnan(rep.values["loss"])] == [
        (0, 1.0), (1, 4.0), (9, 6.0), (10, 7.0)]
    assert len(reports) == 5 and r.refused == 3
    with sqlite3.connect(":memory:") as db:  # what the store does with them
        db.execute("CREATE TABLE reports (seq INTEGER PRIMARY KEY, step INTEGER NOT NULL, data TEXT)")
        db.executemany("INSERT INTO reports VALUES (?,?,?)",
                       [(i, rep.step, json.dumps(dict(rep.values))) for i, rep in enumerate(reports)])
        assert db.execute("SELECT COUNT(*) FROM reports").fetchone() == (5,)


def test_implicit_steps_count_from_next_step() -> None:
    r = MetricsReader(next_step=10)
    assert [r.line(f"METRICS: loss={i}").step for i in range(3)] == [10, 11, 12]  # type: ignore[union-attr]
    assert r.next_step == 13
    assert r.line("METRICS: loss=0 step=20").step == 20  # type: ignore[union-attr]
    assert r.line("METRICS: loss=0").step == 21  # type: ignore[union-attr]


def test_implicit_steps_default_from_zero() -> None:
    r = MetricsReader()
    assert [r.line("METRICS: x=1").step for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]


# ------------------------------------------------------------------ regular expressions

def test_regex_metrics_group_one() -> None:
    r = MetricsReader({"loss": r"loss[:=]\s*(\S+)", "acc": r"accuracy (\d+\.\d+)%"})
    assert r.line("epoch 1 loss: 0.25 accuracy 91.5% done") == Report(0, {"loss": 0.25, "acc": 91.5})
    assert r.line("epoch 2 loss=0.2") == Report(1, {"loss": 0.2})
    assert r.line("nothing to see") is None
    assert r.next_step == 2


def test_regex_uses_group_one_only() -> None:
    r = MetricsReader({"loss": r"(loss)=(\S+)"})
    assert r.line("loss=0.5") is None  # group 1 is "loss": not a number
    r = MetricsReader({"loss": r"l=(\S+) (\S+)"})
    assert r.line("l=0.5 9") == Report(0, {"loss": 0.5})


def test_regex_non_numeric_match_is_skipped() -> None:
    r = MetricsReader({"loss": r"loss (\S+)", "acc": r"acc (\S+)"})
    assert r.line("loss n/a acc 0.5") == Report(0, {"acc": 0.5})
    assert r.line("loss n/a") is None


def test_regex_first_match_in_the_line() -> None:
    r = MetricsReader({"loss": r"loss (\S+)"})
    assert r.line("loss 1 loss 2") == Report(0, {"loss": 1.0})


def test_regex_step() -> None:
    r = MetricsReader({"step": r"iter (\d+)", "loss": r"loss (\S+)"})
    assert r.line("iter 100 loss 0.5") == Report(100, {"loss": 0.5})
    assert r.line("iter 200") is None  # a step alone is no report
    assert r.line("loss 0.4") == Report(101, {"loss": 0.4})
    assert r.next_step == 102


def test_regex_searches_the_unstripped_line() -> None:
    r = MetricsReader({"loss": r"^\s+loss (\S+)"})
    assert r.line("   loss 3") == Report(0, {"loss": 3.0})


def test_metrics_lines_win_over_regexes() -> None:
    r = MetricsReader({"loss": r"loss=(\S+)", "other": r"other=(\S+)"})
    # A METRICS line is read as one; the regexes are not applied to it.
    assert r.line("METRICS: acc=0.9 other=7 loss=1") == Report(0, {"acc": 0.9, "other": 7.0, "loss": 1.0})
    assert r.line("METRICS: acc=0.8") == Report(1, {"acc": 0.8})
    assert r.line("METRICS: nothing") is None
    # A plain line goes to the regexes.
    assert r.line("x loss=2 other=3") == Report(2, {"loss": 2.0, "other": 3.0})


def test_without_regexes_plain_lines_are_ignored() -> None:
    assert MetricsReader().line("loss=3") is None
    assert MetricsReader({}).line("loss=3") is None


def test_bad_regex_is_refused_up_front() -> None:
    import re

    with pytest.raises(re.error):
        MetricsReader({"loss": "("})


def test_regex_with_group_that_did_not_match() -> None:
    r = MetricsReader({"loss": r"loss(?:=(\S+))?"})
    assert r.line("loss unknown") is None


# ------------------------------------------------------------------ split_lines

@pytest.mark.parametrize("data, lines, used", [
    (b"", [], 0),
    (b"partial", [], 0),
    (b"a\n", ["a"], 2),
    (b"a\nb\n", ["a", "b"], 4),
    (b"a\nb\npart", ["a", "b"], 4),
    (b"\n\n", ["", ""], 2),
    (b"a\r\nb\r\n", ["a", "b"], 6),
    (b"10%\r50%\r100%\n", ["100%"], 13),
    (b"10%\r50%\r100%\r\n", ["100%"], 14),
    (b"10%\r50%\rMETRICS: loss=1\nnext\r", ["METRICS: loss=1"], 24),
    (b"\rtext\n", ["text"], 6),
    (b"text\r\r\n", ["text"], 7),
    (b"  indented \n", ["  indented "], 12),
    ("héllo ✓\n".encode(), ["héllo ✓"], len("héllo ✓\n".encode())),
])
def test_split_lines(data: bytes, lines: list[str], used: int) -> None:
    assert split_lines(data) == (lines, used)


def test_split_lines_invalid_utf8_is_replaced() -> None:
    lines, used = split_lines(b"ok \xff\xfe end\nMETRICS: loss=1\n")
    assert lines == ["ok \ufffd\ufffd end", "METRICS: loss=1"]
    assert used == 26


def test_split_lines_leaves_a_cut_multibyte_char_for_the_next_read() -> None:
    data = "a\nb✓\n".encode()
    cut = data[:-2]  # inside ✓
    lines, used = split_lines(cut)
    assert (lines, used) == (["a"], 2)
    assert split_lines(data[used:]) == (["b✓"], len(data) - 2)


def test_split_lines_byte_by_byte_matches_all_at_once() -> None:
    data = "one\ntwo ✓\r\n3%\r99%\nMETRICS: a=1\nlast".encode()
    buf, got = b"", []
    for i in range(len(data)):
        buf += data[i:i + 1]
        lines, used = split_lines(buf)
        got += lines
        buf = buf[used:]
    assert got == split_lines(data)[0] == ["one", "two ✓", "99%", "METRICS: a=1"]
    assert buf == b"last"


# ------------------------------------------------------------------ read_lines

class Log:
    """A log file in memory that read_lines reads by offset; it may grow, and it may give
    short reads. Counts what was read."""

    def __init__(self, data: bytes = b"", most: int | None = None) -> None:
        self.data = data
        self.most = most
        self.calls = 0
        self.bytes_read = 0

    def read(self, offset: int, n: int) -> bytes:
        assert offset >= 0 and n >= 1
        self.calls += 1
        got = self.data[offset:offset + min(n, self.most or n)]
        self.bytes_read += len(got)
        return got


def drain(log: Log, offset: int = 0, *, final: bool = False, **kw: int) -> tuple[list[str], int, int, int]:
    """Call read_lines again while it makes progress: (lines, end, refused, calls)."""
    lines: list[str] = []
    refused = calls = 0
    while True:
        batch = read_lines(log.read, offset, final=final, **kw)
        calls += 1
        assert batch.end >= offset
        lines += batch.lines
        refused += batch.refused
        if batch.end == offset and not batch.capped:
            return lines, offset, refused, calls
        offset = batch.end


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 64, 1 << 20])
@pytest.mark.parametrize("data, final, lines, end", [
    (b"", False, [], 0),
    (b"", True, [], 0),
    (b"partial", False, [], 0),
    (b"partial", True, ["partial"], 7),
    (b"a\nb\npart", False, ["a", "b"], 4),
    (b"a\nb\npart", True, ["a", "b", "part"], 8),
    (b"a\nb\n", True, ["a", "b"], 4),
    (b"\n\n", False, ["", ""], 2),
    (b"a\r\nb\r\n", False, ["a", "b"], 6),
    (b"10%\r50%\r100%\n", False, ["100%"], 13),
    (b"10%\r50%\rMETRICS: loss=1\nnext\r", False, ["METRICS: loss=1"], 24),
    (b"10%\r50%\rMETRICS: loss=1\nnext\r", True, ["METRICS: loss=1", "next"], 29),
    (b"done\n10%\r50%", True, ["done", "50%"], 12),  # a final progress bar: its last state
    (b"done\n10%\r50%\r", True, ["done", "50%"], 13),
    ("héllo ✓\nmore ✓".encode(), True, ["héllo ✓", "more ✓"], len("héllo ✓\nmore ✓".encode())),
])
def test_read_lines_in_any_chunk_size(chunk: int, data: bytes, final: bool, lines: list[str], end: int) -> None:
    assert drain(Log(data), final=final, chunk=chunk)[:3] == (lines, end, 0)
    assert drain(Log(data, most=1), final=final, chunk=chunk)[:3] == (lines, end, 0)  # short reads


def test_read_lines_returns_a_line_batch() -> None:
    batch = read_lines(Log(b"a\nb").read, 0, final=False)
    assert batch == LineBatch(["a"], 2, 0, False)


@pytest.mark.parametrize("chunk", [1, 3, 10, 11, 12, 100])
def test_a_line_exactly_at_the_limit_is_kept_one_byte_more_is_refused(chunk: int) -> None:
    at, over = b"x" * 10, b"y" * 11
    data = b"a\n" + at + b"\n" + over + b"\nb\n" + at + b"\r\n" + over
    lines, end, refused, _ = drain(Log(data), chunk=chunk, max_line=10)
    assert lines == ["a", "x" * 10, "b"]  # "x"*10 + "\r" is 11 bytes: refused
    # The unterminated last line is already too long: refused, and skipped as far as it goes.
    assert (end, refused) == (len(data), 3)
    assert drain(Log(data), final=True, chunk=chunk, max_line=10)[:3] == (lines, len(data), 3)
    data = data[:-1]  # "y"*10, unterminated: it may still grow
    assert drain(Log(data), chunk=chunk, max_line=10)[:3] == (lines, len(data) - 10, 2)
    assert drain(Log(data), final=True, chunk=chunk, max_line=10)[:3] == (lines + ["y" * 10], len(data), 2)


@pytest.mark.parametrize("chunk, max_chunks", [(7, 1), (7, 8), (1000, 1), (1 << 20, 8)])
def test_a_long_line_across_many_chunks_is_skipped_whole(chunk: int, max_chunks: int) -> None:
    long = b"METRICS: loss=1 " + b"z" * 5000 + b" acc=2"
    data = b"METRICS: loss=0\n" + long + b"\nMETRICS: loss=9\n" + long + b"\n" + long + b"\nend\n"
    lines, end, refused, calls = drain(Log(data), chunk=chunk, max_line=100, max_chunks=max_chunks)
    assert lines == ["METRICS: loss=0", "METRICS: loss=9", "end"]
    assert (end, refused) == (len(data), 3)


def test_an_overlong_line_still_being_written_is_skipped_as_it_grows() -> None:
    # The offset is where the next call starts, after a restart too: an offset that does
    # not follow a newline is inside a refused line, which goes on being skipped.
    log = Log(b"ok\n" + b"w" * 50)
    b1 = read_lines(log.read, 0, final=False, chunk=8, max_line=20)
    assert (b1.lines, b1.end, b1.refused) == (["ok"], 53, 1)
    log.data += b"w" * 30
    b2 = read_lines(log.read, b1.end, final=False, chunk=8, max_line=20)
    assert (b2.lines, b2.end, b2.refused) == ([], 83, 0)  # still the same refused line
    log.data += b"w\r10%\nMETRICS: loss=1\npart"
    b3 = read_lines(log.read, b2.end, final=False, chunk=8, max_line=20)
    assert (b3.lines, b3.refused) == (["METRICS: loss=1"], 0)
    assert log.data[b3.end:] == b"part"
    b4 = read_lines(log.read, b3.end, final=True, chunk=8, max_line=20)
    assert (b4.lines, b4.end, b4.refused) == (["part"], len(log.data), 0)


def test_a_final_overlong_unterminated_line_is_refused() -> None:
    data = b"a\n" + b"q" * 30
    assert drain(Log(data), final=True, chunk=4, max_line=29)[:3] == (["a"], len(data), 1)
    assert drain(Log(data), final=True, chunk=4, max_line=30)[:3] == (["a", "q" * 30], len(data), 0)


def test_binary_garbage_never_raises() -> None:
    import random

    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(200_000))
    for chunk, max_line in [(1 << 20, 1 << 20), (97, 300), (4096, 64)]:
        lines, end, refused, _ = drain(Log(data), final=True, chunk=chunk, max_line=max_line)
        assert end == len(data)
        pieces = data.split(b"\n")
        kept = [p for p in pieces if len(p) <= max_line]
        assert (len(lines), refused) == (len(kept), len(pieces) - len(kept))
        assert lines == [p.decode("utf-8", errors="replace").rstrip("\r").rsplit("\r", 1)[-1] for p in kept]
        assert all(isinstance(line, str) and "\n" not in line for line in lines)


def test_many_lines() -> None:
    data = b"".join(b"METRICS: loss=%d\n" % i for i in range(100_000))
    lines, end, refused, calls = drain(Log(data), chunk=4096, max_chunks=8)
    assert lines == [f"METRICS: loss={i}" for i in range(100_000)]
    assert (end, refused) == (len(data), 0)
    assert calls >= len(data) // (8 * 4096)


def test_one_call_reads_at_most_max_chunks_once_it_has_progress() -> None:
    data = b"".join(b"line %04d\n" % i for i in range(1000))  # 10 bytes a line
    log = Log(data)
    batch = read_lines(log.read, 0, final=True, chunk=25, max_chunks=2)
    assert batch.capped and log.calls == 2 and log.bytes_read == 50
    assert batch.lines == ["line 0000", "line 0001", "line 0002", "line 0003", "line 0004"]
    assert batch.end == 50
    # Not final while capped: the last partial line waits for the next call.
    batch = read_lines(log.read, 0, final=True, chunk=23, max_chunks=1)
    assert batch.capped and batch.lines == ["line 0000", "line 0001"] and batch.end == 20


def test_the_cap_never_stops_a_call_before_its_first_line() -> None:
    data = b"x" * 95 + b"\nnext\n"
    log = Log(data)
    batch = read_lines(log.read, 0, final=False, chunk=10, max_line=100, max_chunks=1)
    assert batch.lines == ["x" * 95] and batch.end == 96 and log.calls == 10
    # ... and a refused line being skipped is progress: the call stops at the cap.
    log = Log(b"y" * 1000 + b"\nnext\n")
    batch = read_lines(log.read, 0, final=False, chunk=10, max_line=50, max_chunks=2)
    assert (batch.lines, batch.refused, batch.capped) == ([], 1, True)
    assert batch.end == log.bytes_read and log.bytes_read <= 50 + 2 * 10 + 10


def test_one_call_reads_a_bounded_amount() -> None:
    data = (b"z" * 3000 + b"\n" + b"METRICS: a=1\n" * 300) * 20
    chunk, max_line, max_chunks = 64, 1000, 4
    offset = 0
    while True:
        log = Log(data)
        batch = read_lines(log.read, offset, final=True, chunk=chunk, max_line=max_line, max_chunks=max_chunks)
        assert log.bytes_read <= max(max_chunks * chunk, max_line + 2 * chunk) + 1
        if batch.end == offset:
            break
        offset = batch.end
    assert offset == len(data)


@pytest.mark.parametrize("kw", [{"chunk": 0}, {"max_chunks": 0}, {"max_line": -1}])
def test_read_lines_bad_arguments(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        read_lines(Log(b"a\n").read, 0, final=False, **kw)
    with pytest.raises(ValueError):
        read_lines(Log(b"a\n").read, -1, final=False)


def test_split_lines_is_read_lines_over_one_buffer() -> None:
    data = "one\ntwo ✓\r\n3%\r99%\nMETRICS: a=1\n\xff\xfe\nlast".encode("utf-8", "surrogateescape")
    lines, used = split_lines(data)
    batch = read_lines(Log(data).read, 0, final=False)
    assert (lines, used) == (batch.lines, batch.end)


# A log: normal lines, METRICS lines and overlong lines; the last may be unterminated.
_TEXT = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=12)
_LINE = st.one_of(
    st.tuples(st.just("normal"), _TEXT),
    st.tuples(st.just("metrics"), st.builds(lambda v, s: f"METRICS: loss={v} step={s}",
                                            st.floats(allow_nan=False, width=32), st.integers(0, 99))),
    st.tuples(st.just("long"), st.integers(1, 200)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(_LINE, max_size=25), terminated=st.booleans(), chunk=st.integers(1, 40),
       max_chunks=st.integers(1, 5), growth=st.lists(st.integers(1, 120), min_size=1, max_size=8),
       data=st.data())
def test_property_every_normal_line_once_every_overlong_line_refused_once(
        entries: list[tuple[str, object]], terminated: bool, chunk: int, max_chunks: int,
        growth: list[int], data: st.DataObject) -> None:
    longest = max([len(str(v).encode()) for kind, v in entries if kind != "long"] + [0])
    max_line = data.draw(st.integers(max(longest, 1), longest + 40), label="max_line")
    raw, expected, overlong = [], [], 0
    for kind, v in entries:
        if kind == "long":
            raw.append(b"L" * (max_line + int(v)))  # type: ignore[call-overload]
            overlong += 1
        else:
            raw.append(str(v).encode())
            expected.append(str(v))
    text = b"\n".join(raw) + (b"\n" if terminated and raw else b"")
    # The log grows while it is read; the run ends (final) once it is all there.
    log = Log(most=data.draw(st.sampled_from([None, 1, 7]), label="most"))
    offset, lines, refused = 0, [], 0
    sizes = iter(growth)
    while len(log.data) < len(text):
        log.data = text[:len(log.data) + next(sizes, len(text))]
        got, offset, n, _ = drain(log, offset, chunk=chunk, max_line=max_line, max_chunks=max_chunks)
        lines += got
        refused += n
    got, offset, n, _ = drain(log, offset, final=True, chunk=chunk, max_line=max_line, max_chunks=max_chunks)
    lines += got
    refused += n
    if not terminated and raw and entries[-1][0] != "long" and raw[-1] == b"":
        expected.pop()  # an empty unterminated last line is no line at all
    assert lines == expected
    assert refused == overlong
    assert offset == len(text)


# ------------------------------------------------------------------ fold_objective

@pytest.mark.parametrize("current, new, minimize, use, expected", [
    (None, 3.0, True, "best", 3.0),
    (None, 3.0, False, "last", 3.0),
    (2.0, 3.0, True, "best", 2.0),
    (2.0, 1.0, True, "best", 1.0),
    (2.0, 3.0, False, "best", 3.0),
    (2.0, 1.0, False, "best", 2.0),
    (2.0, 3.0, True, "last", 3.0),
    (2.0, 1.0, False, "last", 1.0),
    (NAN, 3.0, True, "best", 3.0),
    (NAN, 3.0, False, "best", 3.0),
    (2.0, NAN, True, "best", 2.0),
    (2.0, NAN, False, "best", 2.0),
    (2.0, -INF, True, "best", -INF),
    (2.0, INF, False, "best", INF),
    (-INF, 0.0, True, "best", -INF),
])
def test_fold_objective(current: float | None, new: float, minimize: bool, use: str, expected: float) -> None:
    assert fold_objective(current, new, minimize, use) == expected


@pytest.mark.parametrize("current", [None, 1.0, NAN])
@pytest.mark.parametrize("minimize", [True, False])
def test_fold_objective_last_takes_nan_too(current: float | None, minimize: bool) -> None:
    assert math.isnan(fold_objective(current, NAN, minimize, "last"))


def test_fold_objective_nan_first_stays_nan_until_a_number() -> None:
    assert math.isnan(fold_objective(None, NAN, True, "best"))
    assert fold_objective(fold_objective(None, NAN, True, "best"), 5.0, True, "best") == 5.0


def test_fold_objective_sequence() -> None:
    seq = [5.0, 3.0, NAN, 4.0, 1.0, 2.0]
    best_min = best_max = last = None
    for v in seq:
        best_min = fold_objective(best_min, v, True, "best")
        best_max = fold_objective(best_max, v, False, "best")
        last = fold_objective(last, v, True, "last")
    assert (best_min, best_max, last) == (1.0, 5.0, 2.0)
