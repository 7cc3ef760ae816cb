"""hypd.metrics: METRICS lines, regular-expression metrics, splitting output into lines,
folding the objective. Pure."""

from __future__ import annotations

import math

import pytest

from hypd.metrics import METRICS_PREFIX, MetricsReader, Report, fold_objective, split_lines

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
    assert r.line("METRICS: loss=4 step=3.9") == Report(3, {"loss": 4.0})


def test_step_not_a_number_is_ignored() -> None:
    r = MetricsReader()
    assert r.line("METRICS: loss=1 step=abc") == Report(0, {"loss": 1.0})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_step_is_ignored(raw: str) -> None:
    # A run printing `step=nan` must not crash the daemon's log reader: the step is
    # ignored and the report numbered implicitly.
    r = MetricsReader(next_step=3)
    assert r.line(f"METRICS: loss=1 step={raw}") == Report(3, {"loss": 1.0})


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
