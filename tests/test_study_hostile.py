"""Hostile study files (issue 11): every one is refused with one line naming the key, the
cap and the way out, or accepted and bounded; and a fuzzer over TOML documents shaped like
study files finds no input that raises anything but a StudyError or expands past a cap.
Pure and fast: no daemon (the end-to-end cases are in tests/test_submit_hostile.py)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypd.search import grid_size, make_suggester
from hypd.study import (
    MAX_COMMAND_BYTES,
    MAX_FORMAT_WIDTH,
    MAX_STUDY_BYTES,
    MAX_TRIALS,
    StudyError,
    StudySpec,
    example_value,
    load_study,
    parse_study,
    render_commands,
)

STUDY = """\
[study]
name = {name}
objective = {{ metric = {metric} }}
algorithm = {algorithm}
{extra}
[params]
{params}
[run]
command = {command}
{run}
{metrics}
"""


def study(**kw: Any) -> str:
    values = {"name": '"s"', "metric": '"loss"', "algorithm": '"grid"', "extra": "",
              "params": 'x = { type = "int", low = 1, high = 3 }', "command": '"echo {x}"', "run": "", "metrics": ""}
    values.update(kw)
    return STUDY.format(**values)


def refusal(text: str) -> str:
    with pytest.raises(StudyError) as err:
        parse_study(text, "s.toml", "/tmp")
    message = str(err.value)
    assert "\n" not in message and message.startswith("s.toml: ")
    return message


@pytest.mark.parametrize("kw, key, says", [
    # a grid of 10**300 points: counted, never made (it hung the daemon at 4.5 GB)
    ({"params": 'x = { type = "float", low = 0, high = 1, step = 1e-300 }'}, "params.x",
     f"over the cap of {MAX_TRIALS}; give x a coarser step"),
    # 10**6 points (7 minutes to submit, then `ls` froze the daemon)
    ({"params": 'x = { type = "int", low = 1, high = 1000 }\ny = { type = "int", low = 1, high = 1000 }'},
     "params.x", "the grid has 1,000,000 points"),
    ({"params": 'x = { type = "int", low = 0, high = 9007199254740992, step = 3 }'}, "params.x", "coarser step"),
    ({"algorithm": '"random"', "extra": "max_trials = 9223372036854775807"}, "study.max_trials",
     "--as NAME"),
    ({"algorithm": '"ax"', "extra": f"max_trials = {MAX_TRIALS + 1}"}, "study.max_trials", "over the cap"),
    ({"command": '"echo {x:>2000000000}"'}, "run.command", f"the cap of {MAX_FORMAT_WIDTH}"),
    ({"command": '"echo {x:.5000f}"'}, "run.command", "width 5000"),
    ({"command": json.dumps("echo " + "a" * (MAX_COMMAND_BYTES + 1))}, "run.command", "put the long part in a script"),
    ({"command": json.dumps("echo " + "{x} " * 200), "params": 'x = { values = ["' + "b" * 400 + '", "c"] }'},
     "run.command", "once filled in"),
    ({"run": "env = { A = " + json.dumps("v" * MAX_COMMAND_BYTES) + " }"}, "run.env", "over the cap"),
    ({"name": '"s\\n"'}, "study.name", "short name"),
    ({"name": '"s\\t"'}, "study.name", "short name"),
    ({"algorithm": '"random"', "params": 'x = { type = "int", low = -9223372036854775808, high = 9223372036854775807 }'},
     "params.x.low", "2**53"),
    ({"algorithm": '"random"', "params": 'x = { type = "float", low = -1e308, high = 1e308 }'},
     "params.x", "too wide"),
    ({"algorithm": '"random"', "params": "x = { type = \"float\", low = 0, high = " + "9" * 400 + " }"},
     "params.x.high", "too large"),
    ({"extra": "seed = -1"}, "study.seed", "from 0 to"),
    ({"algorithm": '"random"', "extra": "max_trials = 100\nreplicates = 9223372036854775807"}, "study.replicates",
     "fewer replicates"),
    ({"extra": "seed = 18446744073709551616"}, "study.seed", "from 0 to"),
    # the objective is a metric nothing reads (the leaderboard stayed empty)
    ({"metric": '"acc"', "metrics": '[metrics]\nregex = { accuracy = "acc ([0-9.]+)" }'},
     "study.objective.metric", "no [metrics] regex reads it (they read accuracy)"),
    ({"metric": '"val loss"'}, "study.objective.metric", "cannot be named on a METRICS line"),
])
def test_hostile_study_is_refused_naming_key_cap_and_way_out(kw: dict[str, str], key: str, says: str) -> None:
    message = refusal(study(**kw))
    assert f": {key}: " in message, message
    assert says in message, message


def test_a_refusal_comes_at_once() -> None:
    start = time.perf_counter()
    refusal(study(params='x = { type = "float", low = 0, high = 1, step = 1e-300 }\n'
                         'y = { type = "int", low = 0, high = 9007199254740992 }'))
    refusal(study(algorithm='"random"', extra="max_trials = 9223372036854775807"))
    assert time.perf_counter() - start < 1.0


def test_objective_from_a_later_stage_is_a_warning_not_a_refusal() -> None:
    """With several stages, a later one may print METRICS from a file the run wrote."""
    text = study(metric='"acc"', metrics='[metrics]\nregex = { accuracy = "acc ([0-9.]+)" }',
                 command='"x"').replace('command = "x"', '[[run.stages]]\nname = "train"\ncommand = "echo {x}"\n'
                                                     '[[run.stages]]\nname = "eval"\ncommand = "cat {run_dir}/m"')
    spec = parse_study(text, "s.toml", "/tmp")
    assert any("'acc': no [metrics] regex reads it" in w for w in spec.warnings)


def test_objective_read_by_a_regex_or_a_metrics_line_is_accepted() -> None:
    parse_study(study(metric='"accuracy"', metrics='[metrics]\nregex = { accuracy = "acc ([0-9.]+)" }'), "s.toml")
    parse_study(study(metric='"val/loss-2"'), "s.toml")


REGEX_ACCURACY = '[metrics]\nregex = { accuracy = "acc ([0-9.]+)", loss = "loss ([0-9.]+)" }'
TWO_STAGES = ('[[run.stages]]\nname = "train"\ncommand = "echo {x}"\n'
              '[[run.stages]]\nname = "eval"\ncommand = "cat {run_dir}/m"')


@pytest.mark.parametrize(("extra", "key", "says"), [
    ('constraints = ["acc >= 0.9"]', "study.constraints", "'acc': no [metrics] regex reads it (they read accuracy, "
                                                          "loss); name one of those as the constraint's metric"),
    ('constraints = ["loss <= 2", "0.5*accuracy + mem <= 3"]', "study.constraints", "'mem': no [metrics] regex"),
    ('early_stop = { metric = "val", min_step = 2 }', "study.early_stop.metric",
     "'val': no [metrics] regex reads it (they read accuracy, loss); name one of those as the early_stop metric"),
])
def test_a_constraint_or_early_stop_metric_nothing_reads_is_refused(extra: str, key: str, says: str) -> None:
    message = refusal(study(extra=extra, metrics=REGEX_ACCURACY))
    assert f": {key}: " in message and says in message, message


def test_an_early_stop_metric_a_metrics_line_cannot_name_is_refused() -> None:
    message = refusal(study(extra='early_stop = { metric = "val loss" }'))
    assert ": study.early_stop.metric: 'val loss' cannot be named on a METRICS line" in message, message


def test_constraint_and_early_stop_metrics_from_a_later_stage_are_warnings_not_refusals() -> None:
    text = study(extra='constraints = ["acc >= 0.9"]\nearly_stop = { metric = "val", min_step = 2 }',
                 metrics=REGEX_ACCURACY, command='"x"').replace('command = "x"', TWO_STAGES)
    spec = parse_study(text, "s.toml", "/tmp")
    assert any(w.startswith("constraint's metric 'acc': no [metrics] regex reads it") for w in spec.warnings)
    assert any(w.startswith("early_stop metric 'val': no [metrics] regex reads it") for w in spec.warnings)


def test_constraint_and_early_stop_metrics_that_can_be_reported_are_accepted() -> None:
    spec = parse_study(study(extra='constraints = ["accuracy >= 0.9"]\nearly_stop = { metric = "loss" }',
                             metrics=REGEX_ACCURACY), "s.toml")  # read by regexes
    assert spec.warnings == ()
    spec = parse_study(study(extra='constraints = ["2*acc + mem <= 1e-3"]\nearly_stop = { metric = "val/loss" }'),
                       "s.toml")  # no regexes: METRICS lines can name them
    assert spec.constraints == ("2*acc + mem <= 1e-3",) and spec.early_stop is not None
    assert spec.warnings == ()


def test_the_largest_grid_under_the_cap_is_accepted_and_expands_lazily() -> None:
    spec = parse_study(study(params='x = { type = "int", low = 1, high = 100 }\ny = { type = "int", low = 1, high = 100 }'),
                       "s.toml")
    assert grid_size(spec) == MAX_TRIALS
    assert len(make_suggester(spec).ask(MAX_TRIALS + 5)) == MAX_TRIALS


def test_name_override_renames_the_study_wherever_its_name_line_is() -> None:
    """`--as NAME`: a stage's `name =` before [study] used to be the one renamed."""
    text = ('[[run.stages]]\nname = "train"\ncommand = "echo {x}"\n' + study(command='"x"').replace(
        'command = "x"\n', ""))
    spec = parse_study(text, "s.toml", "/tmp", name="other")
    assert spec.name == "other" and [s.name for s in spec.stages] == ["train"]
    assert ": --as: " in refusal_with_name(text, "bad name\n")


def refusal_with_name(text: str, name: str) -> str:
    with pytest.raises(StudyError) as err:
        parse_study(text, "s.toml", "/tmp", name=name)
    return str(err.value)


def test_a_huge_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text(study() + "#" * MAX_STUDY_BYTES)
    with pytest.raises(StudyError, match=r"over the cap of 262,144 for a study file"):
        load_study(path)
    assert "over the cap" in refusal(study() + "#" * MAX_STUDY_BYTES)


def test_deeply_nested_toml_is_a_study_error() -> None:
    assert "nested too deeply" in refusal("x = " + "[" * 50_000 + "]" * 50_000)


# ---------------------------------------------------------------- fuzzing

def toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf
                                               else repr(value))
    if isinstance(value, (int, str)):
        return toml_str(value) if isinstance(value, str) else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(doc: dict[str, Any]) -> str:
    lines = []
    for table, body in doc.items():
        if not isinstance(body, dict):
            lines.append(f"{toml_str(table)} = {toml_value(body)}")
            continue
        lines.append(f"[{toml_str(table)}]")
        lines.extend(f"{toml_str(k)} = {toml_value(v)}" for k, v in body.items())
    return "\n".join(lines) + "\n"


def text(size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",)), max_size=size)


_NAMES = st.sampled_from(["x", "y", "lr", "n", "s\n", "run_dir", "1a", "", "a b"])
_SCALARS = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.floats(), st.booleans(),
                     text(8), st.sampled_from(["1e-300", "10m", "grid", "{x}", "{x:>99999}"]))
_NUMBERS = st.one_of(st.integers(1, 5), st.integers(-(1 << 64), 1 << 64), st.floats(), st.sampled_from([1e-300, 0, 1, 1e308, -1e308]))
_PARAM = st.one_of(
    _SCALARS,
    st.fixed_dictionaries({"type": st.sampled_from(["float", "int", "choice", "fixed", "bogus"])},
                          optional={"low": _NUMBERS, "high": _NUMBERS, "step": _NUMBERS, "log": st.booleans(),
                                    "values": st.lists(_SCALARS, max_size=4), "value": _SCALARS,
                                    "ordered": _SCALARS}),
)
_COMMANDS = st.one_of(
    text(30),
    st.builds(lambda a, f, b: f"{a}{{{f}}}{b}", text(5), st.sampled_from(
        ["x", "x:>9", "x:.3f", "x!r", "x[0]", "x.real", "run_dir", "x:{y}", "y:>2000000000", "", "x:,", "x:%"]),
        text(5)),
)
_STUDY_SECTION = st.fixed_dictionaries(
    {"name": st.sampled_from(["s", "s", "s", "a.b-c", "s\n", "-x", "x" * 65, "é", ""]),
     "objective": st.one_of(st.just("loss"), text(10), st.just("loss"), st.just({"metric": "loss", "goal": "maximize"}),
                            st.lists(st.just({"metric": "a"}), max_size=2))},
    optional={"algorithm": st.sampled_from(["grid", "random", "sobol", "ax", "nope"]),
              "max_trials": _NUMBERS, "parallel": _NUMBERS, "gpus": _NUMBERS, "timeout": _SCALARS,
              "retries": _NUMBERS, "priority": _NUMBERS, "seed": _NUMBERS, "gpu_mem": _SCALARS,
              "early_stop": st.just({"metric": "loss", "min_step": 2})})
_DOCUMENTS = st.fixed_dictionaries(
    {"study": _STUDY_SECTION,
     "params": st.dictionaries(_NAMES, _PARAM, max_size=3),
     "run": st.fixed_dictionaries({"command": _COMMANDS},
                                  optional={"workdir": text(5), "env": st.dictionaries(
                                      text(3), _SCALARS, max_size=2),
                                      "files": st.lists(text(4), max_size=2)})},
    optional={"metrics": st.fixed_dictionaries({"regex": st.dictionaries(
        st.sampled_from(["loss", "acc"]), st.sampled_from(["loss ([0-9.]+)", "(", "x"]), max_size=2)})})


def check_spec(spec: StudySpec) -> None:
    """What an accepted spec promises: its expansion stays under the caps."""
    assert spec.max_trials is None or 1 <= spec.max_trials <= MAX_TRIALS
    if spec.algorithm == "grid":
        assert grid_size(spec) <= MAX_TRIALS
    params = {p.name: example_value(p) for p in spec.params}
    for _, command in render_commands(spec, params, run_dir="/r", run="s:1", run_no=1, trial=0):
        assert len(command.encode(errors="surrogatepass")) <= MAX_COMMAND_BYTES


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
def test_fuzzed_study_documents_parse_or_give_one_line(doc: dict[str, Any]) -> None:
    text = toml_document(doc)
    try:
        spec = parse_study(text, "f.toml", "/tmp")
    except StudyError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.toml")
        return
    check_spec(spec)


@settings(max_examples=300, deadline=None)
@given(text(200))
def test_fuzzed_text_parses_or_gives_one_line(text: str) -> None:
    try:
        spec = parse_study(text, "f.toml", "/tmp")
    except StudyError as exc:
        assert "\n" not in str(exc)
        return
    check_spec(spec)


_VALID = {"study": {"name": "s", "objective": "loss", "algorithm": "grid", "max_trials": 50},
          "params": {"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
                     "n": {"type": "int", "low": 1, "high": 4}, "opt": {"values": ["a", "b c"]}},
          "run": {"command": "echo {x} {n:>3} {opt} {run_dir}", "env": {"A": "1"}}}
_SLOTS = [("study", k) for k in ("name", "objective", "algorithm", "max_trials", "parallel", "seed", "timeout")] + [
    ("params", "x"), ("params", "n"), ("params", "opt"), ("run", "command"), ("run", "env")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_SLOTS), st.one_of(_NUMBERS, _SCALARS, _PARAM, _COMMANDS)),
                min_size=1, max_size=3))
def test_fuzzed_changes_to_a_valid_study_parse_or_give_one_line(changes: list[tuple[tuple[str, str], Any]]) -> None:
    doc = json.loads(json.dumps(_VALID))
    for (table, key), value in changes:
        doc[table][key] = value
    test_fuzzed_study_documents_parse_or_give_one_line.hypothesis.inner_test(doc)  # type: ignore[attr-defined]


def test_a_stored_study_is_loaded_again_without_the_caps() -> None:
    """A study accepted before the caps (it may have runs) still loads; only a submit is capped."""
    text = study(algorithm='"random"', extra=f"max_trials = {MAX_TRIALS * 2}\nseed = -5", metric='"acc"',
                 metrics='[metrics]\nregex = { accuracy = "acc ([0-9.]+)" }')
    assert "study.seed" in refusal(text)
    spec = parse_study(text, "s.toml", "/tmp", capped=False)
    assert spec.max_trials == MAX_TRIALS * 2 and spec.seed == -5
