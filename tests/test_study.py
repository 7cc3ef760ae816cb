"""Unit tests for hypd.study: parsing and validating study files, durations, rendering
commands, run folder names, grid axes and parameter values. Pure and fast: no daemon."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hypd.study import (
    BUILTIN_PLACEHOLDERS,
    ChoiceParam,
    EarlyStop,
    FixedParam,
    FloatParam,
    IntParam,
    Objective,
    Stage,
    StudyError,
    StudySpec,
    check_value,
    coerce_value,
    complete_params,
    example_value,
    format_duration,
    format_value,
    grid_axes,
    load_study,
    parse_duration,
    parse_study,
    render_commands,
    render_stage,
    run_dir_name,
)

ROOT = Path(__file__).resolve().parents[1]

# The study file from the documentation, verbatim.
EXAMPLE = """\
[study]
name = "quadratic"
objective = { metric = "loss", goal = "minimize" }   # or "maximize"
algorithm = "grid"            # grid | random here; ax | sobol with the Ax issue; ax is the default then
max_trials = 20               # optional for grid (the grid's size)
parallel = 4                  # runs of this study at once
gpus = 1                      # per run; 0 = a CPU slot
timeout = "10m"
retries = 1

[params]
lr = { type = "float", low = 1e-4, high = 1e-1, log = true }
layers = { type = "int", low = 1, high = 4 }
opt = { type = "choice", values = ["adam", "sgd"] }
seed = 0                      # a fixed value

[run]
workdir = "."
env = { PYTHONUNBUFFERED = "1" }
command = "python train.py --lr {lr} --layers {layers} --opt {opt} --seed {seed} --out {run_dir}"

[metrics]                     # optional: pull metrics out of a program's own log
regex = { loss = 'val_loss ([0-9.eE+-]+)' }
"""

STAGES = """\
[study]
name = "staged"
objective = { metric = "acc", goal = "maximize" }
algorithm = "random"
max_trials = 8

[params]
lr = { type = "float", low = 1e-4, high = 1e-1, log = true }
opt = { type = "choice", values = ["adam", "sgd"] }

[run]
[[run.stages]]
name = "train"
command = "python train.py --lr {lr} --opt {opt} --out {run_dir}/model"

[[run.stages]]
name = "avg"
command = "python avg.py {run_dir}/model --tag {stage}"

[[run.stages]]
name = "test"
command = "python test.py {run_dir}/model --run {run} --trial {trial}"
"""

# A small valid study assembled from parts, so a refusal case changes one part only.
STUDY = 'name = "q"\nobjective = { metric = "loss", goal = "minimize" }\nalgorithm = "random"'
PARAMS = ('lr = { type = "float", low = 1e-4, high = 1e-1, log = true }\n'
          'layers = { type = "int", low = 1, high = 4 }\n'
          'opt = { type = "choice", values = ["adam", "sgd"] }')
RUN = 'command = "python train.py --lr {lr} --layers {layers} --opt {opt} --out {run_dir}"'
STAGE_RUN = ('[[run.stages]]\nname = "train"\ncommand = "python train.py --lr {lr} --opt {opt}"\n'
             '[[run.stages]]\nname = "test"\ncommand = "python test.py {run_dir}"')


def doc(study: str | None = STUDY, params: str | None = PARAMS, run: str | None = RUN,
        extra: str = "") -> str:
    parts = []
    if study is not None:
        parts.append(f"[study]\n{study}\n")
    if params is not None:
        parts.append(f"[params]\n{params}\n")
    if run is not None:
        parts.append(f"[run]\n{run}\n")
    if extra:
        parts.append(extra + "\n")
    return "\n".join(parts)


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> StudySpec:
    spec, read = load_study(write(tmp_path, text))
    assert read == text
    return spec


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message and len(message.splitlines()) == 1, message
    assert str(path) in message
    assert info.value.source == str(path)
    return message


def quick_spec(**overrides) -> StudySpec:
    """A spec parsed from parts (no file): the small random study."""
    return parse_study(doc(**overrides), "inline.toml", base_dir="/tmp")


# ---------------------------------------------------------------- the documented example


def test_example_file_parses(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    assert spec.name == "quadratic"
    assert spec.objectives == (Objective("loss", "minimize", "last"),)
    assert spec.objective.minimize
    assert spec.algorithm == "grid"
    assert spec.max_trials == 20
    assert (spec.parallel, spec.gpus, spec.retries, spec.priority) == (4, 1, 1, 1)
    assert spec.timeout == 600.0
    assert spec.seed is None
    assert spec.params == (
        FloatParam("lr", 1e-4, 1e-1, log=True),
        IntParam("layers", 1, 4),
        ChoiceParam("opt", ("adam", "sgd"), ordered=False),
        FixedParam("seed", 0),
    )
    assert [p.name for p in spec.searched] == ["lr", "layers", "opt"]
    assert spec.fixed_values() == {"seed": 0}
    assert spec.param("opt") == ChoiceParam("opt", ("adam", "sgd"))
    with pytest.raises(KeyError):
        spec.param("nope")
    assert spec.workdir == str(tmp_path.resolve())
    assert spec.output_dir is None
    assert dict(spec.env) == {"PYTHONUNBUFFERED": "1"}
    assert spec.stages == (Stage("main", "python train.py --lr {lr} --layers {layers} --opt {opt} "
                                         "--seed {seed} --out {run_dir}"),)
    assert dict(spec.metrics_regex) == {"loss": "val_loss ([0-9.eE+-]+)"}
    assert spec.source == str(tmp_path / "study.toml")


def test_example_grid_sizes_continuous_lr_to_max_trials_and_warns(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    axes = grid_axes(spec.params, spec.max_trials)
    # 4 layers x 2 opts x 1 seed = 8 discrete points; 20 // 8 -> 2 points along lr, both ends
    assert axes == [[1e-4, 1e-1], [1, 2, 3, 4], ["adam", "sgd"], [0]]
    assert math.prod(len(a) for a in axes) <= spec.max_trials
    assert len(spec.warnings) == 1
    warning = spec.warnings[0]
    assert "lr" in warning and "max_trials = 20" in warning and "2 points" in warning


def test_example_as_maximize_and_random(tmp_path):
    text = EXAMPLE.replace('goal = "minimize"', 'goal = "maximize"').replace(
        'algorithm = "grid"', 'algorithm = "random"')
    spec = load(tmp_path, text)
    assert spec.objective.goal == "maximize" and not spec.objective.minimize
    assert spec.objective.better(2.0, 1.0) and not spec.objective.better(1.0, 2.0)
    assert spec.algorithm == "random"
    assert spec.warnings == ()


def test_example_renders(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    params = complete_params(spec, {"lr": 0.001, "layers": 2, "opt": "sgd"})
    assert params == {"lr": 0.001, "layers": 2, "opt": "sgd", "seed": 0}
    [(stage, line)] = render_commands(spec, params, run_dir="/runs/quadratic/0007", run_no=7, trial=3)
    assert stage == "main"
    assert line == "python train.py --lr 0.001 --layers 2 --opt sgd --seed 0 --out /runs/quadratic/0007"


def test_defaults_without_algorithm_or_max_trials(tmp_path):
    spec = load(tmp_path, doc(study='name = "q"\nobjective = "loss"'))
    assert spec.algorithm == "ax"
    assert spec.max_trials == 20
    assert (spec.parallel, spec.gpus, spec.retries, spec.priority) == (1, 0, 0, 1)
    assert spec.timeout is None
    assert spec.objective == Objective("loss", "minimize", "last")
    assert spec.metrics_regex == {}
    assert dict(spec.env) == {}
    assert spec.early_stop is None
    assert spec.constraints == () and spec.param_constraints == ()
    assert spec.ask_ahead == 1


def test_ask_ahead_may_be_switched_off(tmp_path):
    assert load(tmp_path, doc(study=STUDY + "\nask_ahead = 0")).ask_ahead == 0
    assert load(tmp_path, doc(study=STUDY + "\nask_ahead = 2")).ask_ahead == 2


def test_grid_max_trials_optional_without_continuous_range(tmp_path):
    params = 'layers = { type = "int", low = 1, high = 3 }\nopt = { values = ["a", "b"] }'
    spec = load(tmp_path, doc(study='name = "g"\nobjective = "loss"\nalgorithm = "grid"',
                              params=params, run='command = "run {layers} {opt}"'))
    assert spec.max_trials is None
    assert spec.warnings == ()
    assert grid_axes(spec.params, None) == [[1, 2, 3], ["a", "b"]]


def test_grid_larger_than_max_trials_warns(tmp_path):
    params = 'layers = { type = "int", low = 1, high = 10 }'
    spec = load(tmp_path, doc(study='name = "g"\nobjective = "loss"\nalgorithm = "grid"\nmax_trials = 4',
                              params=params, run='command = "run {layers}"'))
    assert spec.max_trials == 4
    assert any("10 points" in w and "first 4" in w for w in spec.warnings)


def test_stages_form(tmp_path):
    spec = load(tmp_path, STAGES)
    assert [s.name for s in spec.stages] == ["train", "avg", "test"]
    assert spec.objective.goal == "maximize"
    # trial=5 as stored (the search's index, from 0) is trial 6 as shown, like runs, from 1.
    cmds = render_commands(spec, {"lr": 0.01, "opt": "adam"}, run_dir="/r/0001", run_no=1, trial=5)
    assert cmds == [
        ("train", "python train.py --lr 0.01 --opt adam --out /r/0001/model"),
        ("avg", "python avg.py /r/0001/model --tag avg"),
        ("test", "python test.py /r/0001/model --run staged:1 --trial 6"),
    ]


def test_stage_names_default(tmp_path):
    run = '[[run.stages]]\ncommand = "a {lr}"\n[[run.stages]]\ncommand = "b {opt}"'
    spec = load(tmp_path, doc(run=run))
    assert [s.name for s in spec.stages] == ["stage1", "stage2"]


def test_workdir_output_dir_env_and_extras(tmp_path):
    (tmp_path / "proj").mkdir()
    run = ('workdir = "proj"\noutput_dir = "out"\nenv = { A = "x", N = 3, F = 0.5 }\n' + RUN)
    study = STUDY + ('\nseed = 7\npriority = 3\nconstraints = "lr <= 0.05"\n'
                     'param_constraints = ["layers <= 3"]\nearly_stop = { min_step = 2 }')
    spec = load(tmp_path, doc(study=study, run=run))
    assert spec.workdir == str((tmp_path / "proj").resolve())
    assert spec.output_dir == str((tmp_path / "proj" / "out").resolve())
    assert dict(spec.env) == {"A": "x", "N": "3", "F": "0.5"}
    assert spec.seed == 7 and spec.priority == 3
    assert spec.constraints == ("lr <= 0.05",)
    assert spec.param_constraints == ("layers <= 3",)
    assert spec.early_stop is not None
    assert spec.early_stop == EarlyStop("loss", 2, rule="trend")  # hypd's own rule is the default


def test_early_stop_asha(tmp_path):
    study = STUDY + '\nearly_stop = { rule = "asha", min_step = 1, max_step = 81 }'
    es = load(tmp_path, doc(study=study)).early_stop
    assert es == EarlyStop("loss", 1, rule="asha", max_step=81, eta=3, minimize=True)
    study = ('name = "q"\nobjective = { metric = "acc", goal = "maximize" }\n'
             'early_stop = { rule = "asha", min_step = 2, max_step = 30, eta = 2 }')
    es = load(tmp_path, doc(study=study)).early_stop
    assert es == EarlyStop("acc", 2, rule="asha", max_step=30, eta=2, minimize=False)
    study = STUDY + '\nearly_stop = { rule = "asha", min_step = 1, max_step = 81, guard = false }'
    assert load(tmp_path, doc(study=study)).early_stop == EarlyStop("loss", 1, rule="asha", max_step=81, guard=False)
    study = STUDY.replace('"random"', '"sobol"') + '\nearly_stop = { rule = "percentile", min_step = 3 }'
    assert load(tmp_path, doc(study=study)).early_stop == EarlyStop("loss", 3, rule="percentile")


def test_objective_forms(tmp_path):
    spec = load(tmp_path, doc(study='name = "q"\nobjective = [ "loss", { metric = "acc", goal = "maximize", use = "best" } ]'))
    assert spec.objectives == (Objective("loss"), Objective("acc", "maximize", "best"))
    assert spec.objective.metric == "loss"


def test_param_forms(tmp_path):
    params = ('a = { type = "float", low = 0, high = 1, step = 0.25 }\n'
              'b = { type = "int", low = 2.0, high = 10, step = 2 }\n'
              'c = { values = [1, 2, 4] }\n'
              'd = { values = ["x"] }\n'
              'e = { value = "fixed" }\n'
              'f = { type = "fixed", value = 1.5 }\n'
              'g = true\n'
              'h = { values = [1, "two"], ordered = false }\n'
              'i = { type = "int", low = 1, high = 1024, log = true }')
    spec = load(tmp_path, doc(params=params, run='command = "run {a} {b} {c} {d} {e} {f} {g} {h} {i}"'))
    assert spec.params == (
        FloatParam("a", 0.0, 1.0, False, 0.25),
        IntParam("b", 2, 10, False, 2),
        ChoiceParam("c", (1, 2, 4), ordered=True),
        FixedParam("d", "x"),
        FixedParam("e", "fixed"),
        FixedParam("f", 1.5),
        FixedParam("g", True),
        ChoiceParam("h", (1, "two"), ordered=False),
        IntParam("i", 1, 1024, log=True),
    )
    assert isinstance(spec.param("a").low, float)
    assert isinstance(spec.param("b").low, int)


def test_no_varying_parameter_warns(tmp_path):
    spec = load(tmp_path, doc(params="x = 1", run='command = "run {x}"'))
    assert any("no parameter varies" in w for w in spec.warnings)


def test_parse_study_default_base_dir_is_cwd():
    spec = parse_study(doc(), "<study>")
    assert spec.workdir == str(Path.cwd().resolve())
    assert spec.source == "<study>"


# ---------------------------------------------------------------- refusals

REFUSALS = [
    # (id, text, key that must appear, fix hint that must appear)
    ("bad-toml", "[study\nname = 1\n", "line 1", "not valid TOML"),
    ("bad-toml-value", doc(study='name = "q"\nobjective = ', ), "line", "not valid TOML"),
    ("unknown-top", doc(extra="[search]\nx = 1"), "search", "known keys here: metrics, params, prepare, run, study"),
    ("unknown-study", doc(study=STUDY + "\nmax_trial = 5"), "study.max_trial", "known keys here"),
    ("unknown-run", doc(run=RUN + '\ncmd = "x"'), "run.cmd", "known keys here"),
    ("unknown-float-param", doc(params='lr = { type = "float", low = 0.1, high = 1, lg = true }'),
     "params.lr.lg", "known keys here"),
    ("unknown-choice-param", doc(params='opt = { values = ["a", "b"], default = "a" }', run='command = "x {opt}"'),
     "params.opt.default", "known keys here"),
    ("unknown-fixed-param", doc(params='s = { type = "fixed", value = 1, low = 0 }', run='command = "x {s}"'),
     "params.s.low", "known keys here"),
    ("unknown-stage", doc(run='[[run.stages]]\nname = "a"\ncommand = "x {lr}"\n[[run.stages]]\nname = "b"\ncmd = "y"'),
     "run.stages[1].cmd", "known keys here"),
    ("unknown-objective", doc(study='name = "q"\nobjective = { metric = "loss", direction = "min" }'),
     "study.objective.direction", "known keys here"),
    ("unknown-metrics", doc(extra="[metrics]\npattern = 'x'"), "metrics.pattern", "known keys here"),
    ("unknown-early-stop", doc(study=STUDY + "\nearly_stop = { patience = 3 }"),
     "study.early_stop.patience", "known keys here"),
    ("missing-study", doc(study=None), "[study]", "add a [study] section"),
    ("study-not-table", 'study = "x"\n' + doc(study=None), "study", "[study]"),
    ("missing-name", doc(study='objective = "loss"'), "study.name", "letters, digits"),
    ("bad-name", doc(study='name = "a/b"\nobjective = "loss"'), "study.name", "letters, digits"),
    ("long-name", doc(study=f'name = "{"n" * 65}"\nobjective = "loss"'), "study.name", "short name"),
    ("missing-objective", doc(study='name = "q"'), "study.objective", 'objective = { metric = "loss"'),
    ("empty-objective", doc(study='name = "q"\nobjective = []'), "study.objective", "name at least one metric"),
    ("objective-no-metric", doc(study='name = "q"\nobjective = { goal = "minimize" }'),
     "study.objective.metric", 'metric = "loss"'),
    ("objective-twice", doc(study='name = "q"\nobjective = ["loss", "loss"]'), "study.objective", "named twice"),
    ("objective-bad-use", doc(study='name = "q"\nobjective = { metric = "l", use = "mean" }'),
     "study.objective.use", '"last" or "best"'),
    ("bad-goal", doc(study='name = "q"\nobjective = { metric = "loss", goal = "min" }'),
     "study.objective.goal", '"minimize" or "maximize"'),
    ("bad-algorithm", doc(study='name = "q"\nobjective = "loss"\nalgorithm = "tpe"'),
     "study.algorithm", "ax, sobol, random, grid"),
    ("negative-parallel", doc(study=STUDY + "\nparallel = -1"), "study.parallel", "at least 1"),
    ("zero-parallel", doc(study=STUDY + "\nparallel = 0"), "study.parallel", "at least 1"),
    ("negative-gpus", doc(study=STUDY + "\ngpus = -1"), "study.gpus", "at least 0"),
    ("zero-max-trials", doc(study=STUDY + "\nmax_trials = 0"), "study.max_trials", "at least 1"),
    ("float-retries", doc(study=STUDY + "\nretries = 1.5"), "study.retries", "whole number"),
    ("string-parallel", doc(study=STUDY + '\nparallel = "4"'), "study.parallel", "whole number"),
    ("missing-params", doc(params=None), "[params]", "add a [params] section"),
    ("params-not-table", "params = 3\n" + doc(params=None), "params", "[params]"),
    ("missing-run", doc(run=None), "[run]", "add a [run] section"),
    ("missing-command", doc(run='workdir = "."'), "run.command", 'command = "python train.py'),
    ("empty-command", doc(run='command = "  "'), "run.command", "non-empty string"),
    ("empty-stages", doc(run="stages = []"), "run.stages", "[[run.stages]]"),
    ("stage-no-command", doc(run='[[run.stages]]\nname = "a"'), "run.stages[0].command", "command line"),
    ("stage-bad-name", doc(run='[[run.stages]]\nname = "a b"\ncommand = "x"'), "run.stages[0].name", "letters"),
    ("float-low-eq-high", doc(params='lr = { type = "float", low = 0.5, high = 0.5 }', run='command = "x {lr}"'),
     "params.lr", "swap them"),
    ("float-low-gt-high", doc(params='lr = { type = "float", low = 1.0, high = 0.5 }', run='command = "x {lr}"'),
     "params.lr", "swap them"),
    ("int-low-gt-high", doc(params='n = { type = "int", low = 5, high = 2 }', run='command = "x {n}"'),
     "params.n", "swap them"),
    ("int-low-eq-high", doc(params='n = { type = "int", low = 3, high = 3 }', run='command = "x {n}"'),
     "params.n", "fixed value"),
    ("log-low-zero", doc(params='lr = { type = "float", low = 0.0, high = 1.0, log = true }', run='command = "x {lr}"'),
     "params.lr.low", "low > 0"),
    ("log-low-negative", doc(params='n = { type = "int", low = -1, high = 8, log = true }', run='command = "x {n}"'),
     "params.n.low", "low > 0"),
    ("log-not-bool", doc(params='lr = { type = "float", low = 0.1, high = 1.0, log = 1 }', run='command = "x {lr}"'),
     "params.lr.log", "true or false"),
    ("step-and-log", doc(params='lr = { type = "float", low = 0.1, high = 1.0, log = true, step = 0.1 }',
                         run='command = "x {lr}"'), "params.lr.step", "drop one"),
    ("step-too-big", doc(params='n = { type = "int", low = 1, high = 4, step = 5 }', run='command = "x {n}"'),
     "params.n.step", "(0, high - low]"),
    ("step-zero", doc(params='x = { type = "float", low = 0, high = 1, step = 0 }', run='command = "x {x}"'),
     "params.x.step", "(0, high - low]"),
    ("int-fractional-bound", doc(params='n = { type = "int", low = 1.5, high = 4 }', run='command = "x {n}"'),
     "params.n.low", "whole number"),
    ("missing-low", doc(params='x = { type = "float", high = 1 }', run='command = "x {x}"'),
     "params.x.low", "low = <number>"),
    ("string-bound", doc(params='x = { type = "float", low = "0", high = 1 }', run='command = "x {x}"'),
     "params.x.low", "must be a number"),
    ("bool-bound", doc(params='x = { type = "float", low = true, high = 2 }', run='command = "x {x}"'),
     "params.x.low", "must be a number"),
    ("inf-bound", doc(params='x = { type = "float", low = 0, high = inf }', run='command = "x {x}"'),
     "params.x.high", "finite"),
    ("nan-bound", doc(params='x = { type = "float", low = nan, high = 1 }', run='command = "x {x}"'),
     "params.x.low", "finite"),
    ("unknown-type", doc(params='x = { type = "uniform", low = 0, high = 1 }', run='command = "x {x}"'),
     "params.x.type", '"float", "int", "choice" or "fixed"'),
    ("missing-type", doc(params='x = { low = 0, high = 1 }', run='command = "x {x}"'),
     "params.x.type", '"float", "int", "choice" or "fixed"'),
    ("empty-choice", doc(params='x = { values = [] }', run='command = "x {x}"'), "params.x.values", "non-empty list"),
    ("duplicate-choice", doc(params='x = { values = ["a", "a"] }', run='command = "x {x}"'),
     "params.x.values", "listed twice"),
    ("table-choice", doc(params='x = { values = [{ a = 1 }, 2] }', run='command = "x {x}"'),
     "params.x.values", "strings, numbers or booleans"),
    ("ordered-not-bool", doc(params='x = { values = [1, 2], ordered = "yes" }', run='command = "x {x}"'),
     "params.x.ordered", "true or false"),
    ("fixed-no-value", doc(params='x = { type = "fixed" }', run='command = "x {x}"'), "params.x.value", "value ="),
    ("list-param", doc(params='x = [1, 2]', run='command = "x {x}"'), "params.x", 'type = "float"'),
    ("param-name-not-identifier", doc(params='"learning-rate" = 0.1', run='command = "x"'),
     "params.learning-rate", "identifiers"),
    ("grid-continuous-no-max-trials",
     doc(study='name = "g"\nobjective = "loss"\nalgorithm = "grid"'), "params.lr", "step = ..."),
    ("grid-continuous-no-max-trials-hint",
     doc(study='name = "g"\nobjective = "loss"\nalgorithm = "grid"'), "params.lr", "max_trials"),
    ("placeholder-unknown", doc(run='command = "python train.py --lr {lrr}"'), "run.command", "{lrr}"),
    ("placeholder-unknown-lists-known", doc(run='command = "python train.py --lr {lrr}"'),
     "run.command", "known: layers, lr, opt, prepare_dir, replicate, run, run_dir, run_no, stage, study, trial"),
    ("placeholder-unknown-in-stage",
     doc(run='[[run.stages]]\nname = "a"\ncommand = "x {lr}"\n[[run.stages]]\nname = "b"\ncommand = "y {nope}"'),
     "run.stages[1].command", "{nope} has no parameter"),
    ("placeholder-empty", doc(run='command = "python train.py {} {lr}"'), "run.command", "name a parameter"),
    ("placeholder-positional", doc(run='command = "python train.py {0}"'), "run.command", "{0} has no parameter"),
    ("brace-unclosed", doc(run='command = "python train.py --lr {lr"'), "run.command", "{{ and }}"),
    ("brace-unopened", doc(run='command = "python train.py --lr lr}"'), "run.command", "{{ and }}"),
    ("brace-unopened-stage", doc(run='[[run.stages]]\nname = "a"\ncommand = "awk {print}}"'),
     "run.stages[0].command", "{{ and }}"),
    ("bool-parallel", doc(study=STUDY + "\nparallel = true"), "study.parallel", "whole number"),
    ("bool-gpus", doc(study=STUDY + "\ngpus = false"), "study.gpus", "whole number"),
    ("bool-max-trials", doc(study=STUDY + "\nmax_trials = true"), "study.max_trials", "whole number"),
    ("bool-retries", doc(study=STUDY + "\nretries = true"), "study.retries", "whole number"),
    ("bool-priority", doc(study=STUDY + "\npriority = true"), "study.priority", "whole number"),
    ("bool-seed", doc(study=STUDY + "\nseed = true"), "study.seed", "whole number"),
    ("bool-min-step", doc(study=STUDY + "\nearly_stop = { min_step = true }"),
     "study.early_stop.min_step", "whole number"),
    ("bool-int-param-low", doc(params='n = { type = "int", low = true, high = 4 }', run='command = "x {n}"'),
     "params.n.low", "must be a number"),
    ("timeout-unit", doc(study=STUDY + '\ntimeout = "10x"'), "study.timeout", "e.g. '90s'"),
    ("timeout-unit-first", doc(study=STUDY + '\ntimeout = "m10"'), "study.timeout", "e.g. '90s'"),
    ("timeout-trailing-number", doc(study=STUDY + '\ntimeout = "5m30"'), "study.timeout", "e.g. '90s'"),
    ("timeout-negative", doc(study=STUDY + '\ntimeout = "-5"'), "study.timeout", "positive"),
    ("timeout-zero", doc(study=STUDY + "\ntimeout = 0"), "study.timeout", "positive"),
    ("timeout-zero-string", doc(study=STUDY + '\ntimeout = "0s"'), "study.timeout", "positive"),
    ("bad-regex", doc(extra="[metrics]\nregex = { loss = 'val_loss ([0-9.' }"),
     "metrics.regex.loss", "bad regular expression"),
    ("regex-no-group", doc(extra="[metrics]\nregex = { loss = 'val_loss [0-9.]+' }"),
     "metrics.regex.loss", "capturing group"),
    ("regex-not-string", doc(extra="[metrics]\nregex = { loss = 1 }"), "metrics.regex.loss", "regular expression"),
    ("regex-not-table", doc(extra="[metrics]\nregex = 'x (1)'"), "metrics.regex", "table of metric"),
    ("duplicate-stages",
     doc(run='[[run.stages]]\nname = "a"\ncommand = "x {lr}"\n[[run.stages]]\nname = "a"\ncommand = "y"'),
     "run.stages", "same name"),
    ("command-and-stages", doc(run=RUN + '\n[[run.stages]]\nname = "a"\ncommand = "x"'), "run", "not both"),
    ("reserved-run-dir", doc(params=PARAMS + "\nrun_dir = 1"), "params.run_dir", "rename the parameter"),
    ("reserved-trial", doc(params=PARAMS + '\ntrial = { values = [1, 2] }'), "params.trial", "reserved"),
    ("reserved-stage", doc(params=PARAMS + '\nstage = "x"'), "params.stage", "reserved"),
    ("env-name-digit", doc(run=RUN + '\nenv = { 1X = "1" }'), "run.env.1X", "environment variable name"),
    ("env-name-dash", doc(run=RUN + '\nenv = { A-B = "1" }'), "run.env.A-B", "environment variable name"),
    ("env-name-space", doc(run=RUN + '\nenv = { "A B" = "1" }'), "run.env.A B", "environment variable name"),
    ("env-bool-value", doc(run=RUN + "\nenv = { A = true }"), "run.env.A", "string or number"),
    ("env-not-table", doc(run=RUN + '\nenv = "A=1"'), "run.env", "env = {"),
    ("workdir-not-string", doc(run=RUN + "\nworkdir = 3"), "run.workdir", "must be a string"),
    ("constraints-not-strings", doc(study=STUDY + "\nconstraints = [1]"), "study.constraints", "list of strings"),
    ("early-stop-rule", doc(study=STUDY + '\nearly_stop = { rule = "hyperband" }'), "study.early_stop.rule",
     '"trend", "asha" or "percentile"'),
    ("asha-guard-not-bool", doc(study=STUDY + '\nearly_stop = { rule = "asha", min_step = 1, max_step = 9, guard = 1 }'),
     "study.early_stop.guard", "true or false"),
    ("percentile-grid", doc(study=STUDY + '\nearly_stop = { rule = "percentile" }'),
     "study.early_stop.rule", 'needs algorithm "ax" or "sobol"'),
    ("trend-guard", doc(study=STUDY + '\nearly_stop = { min_step = 1, guard = false }'), "study.early_stop.guard",
     "unknown key"),
    ("asha-no-max-step", doc(study=STUDY + '\nearly_stop = { rule = "asha", min_step = 1 }'), "study.early_stop",
     "needs min_step and max_step"),
    ("asha-max-below-min", doc(study=STUDY + '\nearly_stop = { rule = "asha", min_step = 9, max_step = 3 }'),
     "study.early_stop.max_step", "above min_step (9)"),
    ("asha-eta-1", doc(study=STUDY + '\nearly_stop = { rule = "asha", min_step = 1, max_step = 9, eta = 1 }'),
     "study.early_stop.eta", "at least 2"),
    ("asha-min-step-0", doc(study=STUDY + '\nearly_stop = { rule = "asha", min_step = 0, max_step = 9 }'),
     "study.early_stop.min_step", "at least 1"),
    ("ask-ahead-negative", doc(study=STUDY + "\nask_ahead = -1"), "study.ask_ahead", "at least 0"),
    ("trend-eta", doc(study=STUDY + '\nearly_stop = { min_step = 1, eta = 3 }'), "study.early_stop.eta",
     "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "hint"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusal_is_one_line_with_path_key_and_hint(tmp_path, text, key, hint):
    message = refusal(tmp_path, text)
    assert key in message
    assert hint in message


def test_refusal_fields(tmp_path):
    path = write(tmp_path, doc(study=STUDY + "\nparallel = -1"))
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert info.value.key == "study.parallel"
    assert str(info.value).startswith(f"{path}: study.parallel: ")
    assert isinstance(info.value, ValueError)


def test_refusal_unreadable_and_not_utf8(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(StudyError) as info:
        load_study(missing)
    assert str(missing) in str(info.value) and "cannot read" in str(info.value)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[study]\n")
    with pytest.raises(StudyError) as info:
        load_study(binary)
    assert "UTF-8" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    doc(study=STUDY + '\n"max\\ntrials" = 1'),
    doc(run=RUN + '\nenv = { "A\\nB" = "1" }'),
    doc(params=PARAMS + '\n"a\\nb" = 1'),
], ids=["study-key", "env-name", "param-name"])
def test_refusal_one_line_even_for_keys_with_newlines(tmp_path, text):
    refusal(tmp_path, text)


@pytest.mark.parametrize("value", ["true", '""', '"   "'])
def test_timeout_refusal_always_has_hint(tmp_path, value):
    message = refusal(tmp_path, doc(study=STUDY + f"\ntimeout = {value}"))
    assert "study.timeout" in message
    assert "e.g." in message


@pytest.mark.parametrize("command", [
    "python train.py --lr {lr:.2q}",       # a format spec no float takes
    "python train.py --lr {lr!z}",         # an unknown conversion
    "python train.py --lr {lr[0]}",        # indexing a float
    "python train.py --lr {lr:{layers}}",  # a nested placeholder
], ids=["bad-spec", "bad-conversion", "index", "nested"])
def test_unfillable_placeholder_refused_at_load(tmp_path, command):
    message = refusal(tmp_path, doc(run=f'command = "{command}"'))
    assert "run.command" in message


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90.0),
    ("10m", 600.0),
    ("1h30m", 5400.0),
    ("1h 30m", 5400.0),
    ("2.5h", 9000.0),
    (30, 30.0),
    (2.5, 2.5),
    ("45", 45.0),
    ("1.5", 1.5),
    ("1d", 86400.0),
    ("1d2h", 93600.0),
    ("1m30s", 90.0),
    (" 10m ", 600.0),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(("value", "seconds"), [("500ms", 0.5), ("1s500ms", 1.5), ("0.5ms", 0.0005)])
def test_parse_duration_milliseconds(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "   ", "10x", "-5", "-5m", 0, 0.0, -1, True, False, "m10", "5m30",
                                   "h", "1.2.3s", "10 minutes", None, [10], "0s", "0"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "infinity", float("nan"), float("inf")])
def test_parse_duration_rejects_non_finite(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("seconds", "text"), [
    (5, "5s"), (59.6, "1m"), (90, "1m30s"), (600, "10m"), (3600, "1h"), (5400, "1h30m"), (3661, "1h01m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# ---------------------------------------------------------------- rendering

NASTY = [
    "a b; rm -rf ~",
    "it's",
    'say "hi"',
    "$HOME",
    "$(touch pwned)",
    "`touch pwned`",
    "a\\b",
    "x > pwned",
    "*",
    "-rf",
    "",
    "line1\nline2",
    "a|touch pwned",
    "é ü",
]


def nasty_spec(command: str) -> StudySpec:
    values = json.dumps(NASTY)
    return parse_study(doc(params=f"opt = {{ values = {values} }}\nlr = {{ type = \"float\", low = 0.0, high = 1.0 }}",
                           run=f"command = {json.dumps(command)}"), "nasty.toml", base_dir="/tmp")


@pytest.mark.parametrize("value", NASTY)
def test_rendered_value_is_one_shell_word(value):
    spec = nasty_spec("prog --opt {opt} --lr {lr} --out {run_dir}")
    [(_, line)] = render_commands(spec, {"opt": value, "lr": 0.5}, run_dir="/runs/my study/0001")
    assert shlex.split(line) == ["prog", "--opt", value, "--lr", "0.5", "--out", "/runs/my study/0001"]


ARGV_PROGRAM = "import json, sys; print(json.dumps(sys.argv[1:]))"


def run_sh(line: str, cwd: Path) -> list[str]:
    result = subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=20,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rendered_command_runs_with_values_as_single_arguments(tmp_path):
    template = f"{shlex.quote(sys.executable)} -c '{ARGV_PROGRAM}' {{opt}} --lr={{lr}} {{run_dir}}"
    spec = nasty_spec(template)
    for value in NASTY:
        if value == "a b; rm -rf ~":
            value = "a b; touch pwned"  # never run an rm, even quoted
        line = render_stage(spec.stages[0].command, {"opt": value, "lr": 0.25, "run_dir": str(tmp_path / "r d")})
        assert run_sh(line, tmp_path) == [value, "--lr=0.25", str(tmp_path / "r d")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the shell ran something it should not have"


@pytest.mark.parametrize("quote", ["'", '"'], ids=["single", "double"])
def test_placeholder_inside_template_quotes_is_safe_or_refused(tmp_path, quote):
    template = f"{shlex.quote(sys.executable)} -c '{ARGV_PROGRAM}' {quote}{{opt}}{quote}"
    try:
        spec = nasty_spec(template)
    except StudyError:
        return  # refusing a quoted placeholder at load is an acceptable fix
    for value in ["a b; touch pwned", "$(touch pwned)"]:
        line = render_stage(spec.stages[0].command, {"opt": value})
        assert run_sh(line, tmp_path) == [value]
    assert not (tmp_path / "pwned").exists()


def test_builtin_placeholders(tmp_path):
    spec = load(tmp_path, doc(run='command = "x {run} {study} {trial} {run_no} {stage} {run_dir} {replicate}"'))
    [(stage, line)] = render_commands(spec, {"lr": 0.01, "layers": 2, "opt": "adam"},
                                      run_dir="/r/q/0003", run_no=3, trial=9, replicate=2)
    assert stage == "main"
    assert shlex.split(line) == ["x", "q:3", "q", "10", "3", "main", "/r/q/0003", "2"]  # trial 9 stored is 10 shown
    [(_, line)] = render_commands(spec, {"lr": 0.01, "layers": 2, "opt": "adam"},
                                  run_dir="/r", run="q:3#retry", run_no=3, trial=9)
    assert shlex.split(line)[1] == "q:3#retry"
    assert set(BUILTIN_PLACEHOLDERS) == {"run_dir", "run", "run_no", "trial", "replicate", "study", "stage", "prepare_dir"}


def test_stages_see_same_placeholders(tmp_path):
    run = "\n".join(
        f'[[run.stages]]\nname = "{name}"\ncommand = "{name} {{lr}} {{opt}} {{run}} {{study}} {{trial}} '
        f'{{run_no}} {{stage}} {{run_dir}}"'
        for name in ("train", "avg", "test"))
    spec = load(tmp_path, doc(run=run))
    cmds = render_commands(spec, {"lr": 0.5, "layers": 1, "opt": "sgd"}, run_dir="/d", run_no=2, trial=4)
    assert [c[0] for c in cmds] == ["train", "avg", "test"]
    for name, line in cmds:
        assert shlex.split(line) == [name, "0.5", "sgd", "q:2", "q", "5", "2", name, "/d"]


@pytest.mark.parametrize(("template", "values", "expected"), [
    ("x {lr:.2e}", {"lr": 0.00123}, "x 1.23e-03"),
    ("x {lr:.3f}", {"lr": 0.5}, "x 0.500"),
    ("x {n:03d}", {"n": 7}, "x 007"),
    ("x {opt:>6}", {"opt": "ab"}, "x '    ab'"),
    ("awk '{{print $1}}' {opt}", {"opt": "f"}, "awk '{print $1}' f"),
    ("x {{lr}} {lr}", {"lr": 0.1}, "x {lr} 0.1"),
    ("x {{{lr}}}", {"lr": 0.1}, "x {0.1}"),
    ("--lr={lr}", {"lr": 1e-5}, "--lr=1e-05"),
    ("{lr} {n} {b} {f}", {"lr": 1.0, "n": 3, "b": True, "f": 123456789.0}, "1.0 3 true 123456789.0"),
    ("{b}", {"b": False}, "false"),
    ("{lr}", {"lr": 0.1 + 0.2}, "0.3"),
    ("{lr}", {"lr": 1e20}, "1e+20"),
    ("{opt}", {"opt": ""}, "''"),
])
def test_render_stage(template, values, expected):
    assert render_stage(template, values) == expected


def test_render_conversion_stays_one_word():
    assert shlex.split(render_stage("x {opt!r} {opt!s}", {"opt": "a b"})) == ["x", "'a b'", "a b"]


def test_format_spec_and_braces_pass_validation(tmp_path):
    spec = load(tmp_path, doc(run="command = \"awk '{{print}}' --lr {lr:.2e} --n {layers:02d} {opt}\""))
    [(_, line)] = render_commands(spec, {"lr": 0.001, "layers": 3, "opt": "adam"}, run_dir="/r")
    assert line == "awk '{print}' --lr 1.00e-03 --n 03 adam"


@pytest.mark.parametrize(("value", "text"), [
    (True, "true"), (False, "false"), (1.0, "1.0"), (-2.0, "-2.0"), (0.0, "0.0"), (0.001, "0.001"),
    (1e-5, "1e-05"), (0.000123456789, "0.000123457"), (3, "3"), ("s", "s"), (1e20, "1e+20"),
])
def test_format_value(value, text):
    assert format_value(value) == text


# ---------------------------------------------------------------- run folder names

def test_run_dir_name_readable_and_varying_only(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    name = run_dir_name(7, {"lr": 0.001, "layers": 2, "opt": "adam", "seed": 0}, spec)
    assert name == "0007_lr=0.001_layers=2_opt=adam"
    assert "seed" not in name


@pytest.mark.parametrize("value", ["a/b", "a b", "../..", "x\\y", "a:b*c?", "é", "a\nb", "", "-x", "a" * 100])
def test_run_dir_name_filesystem_safe(tmp_path, value):
    spec = parse_study(doc(params=f"opt = {{ values = [{json.dumps(value)}, \"z\"] }}\nseed = 1",
                           run='command = "x {opt}"'), "s.toml", base_dir="/tmp")
    name = run_dir_name(12, {"opt": value, "seed": 1}, spec)
    assert name.startswith("0012_opt=")
    assert "/" not in name and "\\" not in name and "\0" not in name and " " not in name
    assert name not in (".", "..") and len(name) <= 200
    assert name.isascii() and name.isprintable()
    assert "seed" not in name
    folder = tmp_path / name
    folder.mkdir()
    assert folder.parent == tmp_path


def test_run_dir_name_padding_and_long():
    params = "\n".join(f'p{i} = {{ values = ["{"v" * 40}", "w"] }}' for i in range(20))
    spec = parse_study(doc(params=params, run='command = "x"'), "s.toml", base_dir="/tmp")
    values = {f"p{i}": "v" * 40 for i in range(20)}
    name = run_dir_name(123456, values, spec)
    assert name.startswith("123456_p0=")
    assert len(name) <= 200
    assert run_dir_name(0, {}, spec) == "0000"


# ---------------------------------------------------------------- grid axes

@pytest.mark.parametrize(("param", "axis"), [
    (IntParam("n", 1, 10, step=3), [1, 4, 7, 10]),
    (IntParam("n", 1, 10, step=4), [1, 5, 9]),
    (IntParam("n", -2, 2), [-2, -1, 0, 1, 2]),
    (IntParam("n", 1, 8, log=True), [1, 2, 3, 4, 5, 6, 7, 8]),
    (FloatParam("x", 0.0, 1.0, step=0.25), [0.0, 0.25, 0.5, 0.75, 1.0]),
    (FloatParam("x", 0.0, 0.3, step=0.1), [0.0, 0.1, 0.2, 0.3]),
    (FloatParam("x", 0.0, 1.0, step=0.3), [0.0, 0.3, 0.6, 0.9]),
    (ChoiceParam("c", ("a", "b", "c")), ["a", "b", "c"]),
    (FixedParam("s", 42), [42]),
])
def test_grid_axis_discrete(param, axis):
    assert grid_axes((param,), None) == [axis]
    assert grid_axes((param,), 3) == [axis]  # max_trials never trims a discrete axis


@pytest.mark.parametrize(("param", "n", "axis"), [
    (FloatParam("x", 0.0, 1.0), 5, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (FloatParam("x", -1.0, 1.0), 3, [-1.0, 0.0, 1.0]),
    (FloatParam("lr", 1e-4, 1e-1, log=True), 4, [1e-4, 1e-3, 1e-2, 1e-1]),
    (FloatParam("lr", 1e-6, 1.0, log=True), 7, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
    (FloatParam("x", 0.0, 1.0), 1, [0.0, 1.0]),  # at least both ends
])
def test_grid_axis_continuous_sized_by_max_trials(param, n, axis):
    [got] = grid_axes((param,), n)
    assert got == pytest.approx(axis, rel=1e-9, abs=1e-12)
    assert got[0] == param.low and got[-1] == param.high


def test_grid_axes_continuous_share_the_budget():
    params = (FloatParam("a", 0.0, 1.0), ChoiceParam("c", ("x", "y")), FloatParam("b", 1.0, 100.0, log=True))
    axes = grid_axes(params, 50)  # 50 / 2 = 25 -> 5 per continuous range
    assert [len(a) for a in axes] == [5, 2, 5]
    assert axes[2] == pytest.approx([1.0, 3.16228, 10.0, 31.6228, 100.0], rel=1e-5)
    three = tuple(FloatParam(n, 0.0, 1.0) for n in "xyz")
    assert [len(a) for a in grid_axes(three, 27)] == [3, 3, 3]
    assert [len(a) for a in grid_axes(three, 26)] == [2, 2, 2]


def test_grid_axes_continuous_needs_max_trials():
    with pytest.raises(ValueError):
        grid_axes((FloatParam("x", 0.0, 1.0),), None)


def test_grid_continuous_points_stay_in_bounds():
    param = FloatParam("x", 1.0000001, 2.0)
    [axis] = grid_axes((param,), 3)
    assert all(param.low <= v <= param.high for v in axis), axis


# ---------------------------------------------------------------- values

@pytest.mark.parametrize(("param", "raw", "value"), [
    (FloatParam("lr", 1e-4, 1e-1), "0.01", 0.01),
    (FloatParam("lr", 1e-4, 1e-1), "1e-3", 0.001),
    (FloatParam("x", 0.0, 10.0), "3", 3.0),
    (IntParam("n", 1, 4), "3", 3),
    (IntParam("n", -4, 4), "-2", -2),
    (ChoiceParam("opt", ("adam", "sgd")), "sgd", "sgd"),
    (ChoiceParam("c", (1, 2, 4)), "2", 2),
    (ChoiceParam("c", (1, 2, 4)), "2.0", 2),
    (ChoiceParam("c", (0.5, 1.0)), "1", 1.0),
    (ChoiceParam("c", (0.5, 1.0)), "0.50", 0.5),
    (ChoiceParam("c", ("1", 1)), "1", "1"),
    (ChoiceParam("flag", (True, False)), "True", True),
    (FixedParam("seed", 0), "0", 0),
    (FixedParam("mode", "fast"), "fast", "fast"),
])
def test_coerce_value(param, raw, value):
    got = coerce_value(param, raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("param", "raw"), [
    (FloatParam("lr", 1e-4, 1e-1), "abc"),
    (IntParam("n", 1, 4), "2.5"),
    (IntParam("n", 1, 4), "two"),
    (ChoiceParam("opt", ("adam", "sgd")), "rmsprop"),
    (ChoiceParam("c", (1, 2)), "x"),
    (FixedParam("seed", 0), "1"),
])
def test_coerce_value_rejects(param, raw):
    with pytest.raises(ValueError):
        coerce_value(param, raw)


@pytest.mark.parametrize(("param", "raw", "value"), [
    (ChoiceParam("flag", (True, False)), "true", True),
    (ChoiceParam("flag", (True, False)), "false", False),
    (FixedParam("flag", True), "true", True),
])
def test_coerce_value_bool_as_rendered(param, raw, value):
    assert coerce_value(param, raw) is value


def test_complete_params(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    got = complete_params(spec, {"opt": "sgd", "layers": 4, "lr": 0.05})
    assert got == {"lr": 0.05, "layers": 4, "opt": "sgd", "seed": 0}
    assert list(got) == ["lr", "layers", "opt", "seed"]  # the study's order
    assert complete_params(spec, {"opt": "sgd", "layers": 4, "lr": 0.05, "seed": 0})["seed"] == 0


@pytest.mark.parametrize(("given", "words"), [
    ({"lr": 0.05, "layers": 4, "opt": "sgd", "dropout": 0.1}, "unknown parameter 'dropout'"),
    ({"lr": 0.05, "layers": 4}, "missing a value for parameter 'opt'"),
    ({"lr": 0.5, "layers": 4, "opt": "sgd"}, "outside"),
    ({"lr": 0.05, "layers": 0, "opt": "sgd"}, "outside"),
    ({"lr": 0.05, "layers": 4, "opt": "rmsprop"}, "not one of"),
    ({"lr": 0.05, "layers": 4, "opt": "sgd", "seed": 1}, "fixed at 0"),
])
def test_complete_params_rejects(tmp_path, given, words):
    spec = load(tmp_path, EXAMPLE)
    with pytest.raises(ValueError) as info:
        complete_params(spec, given)
    assert words in str(info.value)


@pytest.mark.parametrize(("param", "value"), [
    (FixedParam("s", 3), 3),
    (ChoiceParam("c", ("x", "y", "z")), "y"),  # the middle choice, not the first
    (ChoiceParam("c", ("b", "a")), "a"),
    (IntParam("n", 1, 4), 2),
    (IntParam("n", 1, 5), 3),
    (IntParam("n", 1, 100, log=True), 10),
    (FloatParam("x", 0.0, 1.0), 0.5),
    (FloatParam("x", 0.0, 1.0, step=0.3), 0.6),
    (FloatParam("lr", 1e-4, 1e-1, log=True), 0.00316),
    (FloatParam("x", -3.0, 1.0), -1.0),
])
def test_example_value(param, value):
    got = example_value(param)
    assert got == pytest.approx(value)
    assert type(got) is type(value)
    check_value(param, got)


def test_example_value_stays_in_bounds_for_narrow_range():
    param = FloatParam("x", 1.0001, 1.0002)
    check_value(param, example_value(param))


def test_example_values_complete_the_example_study(tmp_path):
    spec = load(tmp_path, EXAMPLE)
    values = complete_params(spec, {p.name: example_value(p) for p in spec.searched})
    [(_, line)] = render_commands(spec, values, run_dir="/r")
    assert line == "python train.py --lr 0.00316 --layers 2 --opt sgd --seed 0 --out /r"


@pytest.mark.parametrize(("param", "good", "bad"), [
    (FloatParam("x", 0.0, 1.0), [0.0, 0.5, 1.0], [-0.1, 1.1, float("nan")]),
    (IntParam("n", 1, 4), [1, 4], [0, 5]),
    (ChoiceParam("c", ("a", "b")), ["a", "b"], ["c", None]),
    (FixedParam("s", 0), [0], [1]),
])
def test_check_value(param, good, bad):
    for v in good:
        check_value(param, v)
    for v in bad:
        with pytest.raises(ValueError):
            check_value(param, v)


# ---------------------------------------------------------------- bundled example studies

BUNDLED = sorted((ROOT / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", BUNDLED or [pytest.param(None, marks=pytest.mark.skip(reason="no studies/*.toml yet"))],
                         ids=[p.name for p in BUNDLED] or ["none"])
def test_bundled_study_loads(path):
    spec, text = load_study(path)
    assert text and spec.name
    assert all("\n" not in w for w in spec.warnings)
    values = complete_params(spec, {p.name: example_value(p) for p in spec.searched})
    commands = render_commands(spec, values, run_dir="/tmp/hypd-run", run_no=1, trial=1)
    assert [name for name, _ in commands] == [s.name for s in spec.stages]
    for _, line in commands:
        shlex.split(line)


def test_prepare_section(tmp_path):
    spec = load(tmp_path, doc(extra='[prepare]\ncommand = "python fetch.py"\nfiles = ["fetch.py"]\n'))
    assert spec.prepare is not None and (spec.prepare.command, spec.prepare.files) == ("python fetch.py", ("fetch.py",))
    assert load(tmp_path, doc()).prepare is None
    for extra, key in (('[prepare]\nfiles = ["a"]\n', "prepare.command"),
                       ('[prepare]\ncommand = "x"\nfiles = ["../a"]\n', "prepare.files"),
                       ('[prepare]\ncommand = "x"\nwhen = 1\n', "prepare.when")):
        assert key in refusal(tmp_path, doc(extra=extra))
