"""AxSuggester against the real Ax (1.x) on CPU, driven through hypd's Suggester interface.

Small trial counts: a GP fit is about a second here, and the file should stay well under
two minutes on two cores. Plain functions, no mocks.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hypd.search import AxSuggester, RandomSearch, SearchError, load_suggester, make_suggester
from hypd.study import StudySpec, check_value, parse_study

ROOT = Path(__file__).resolve().parents[1]

# Ax, BoTorch and pandas warn about their own internals (deprecations, winsorizing without
# objective thresholds); none of it is about hypd.
pytestmark = pytest.mark.filterwarnings(
    r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")


def study(params: str, *, algorithm: str = "ax", max_trials: int = 20, seed: int | None = 1,
          objective: str = '{ metric = "loss", goal = "minimize" }', extra: str = "") -> StudySpec:
    seed_line = f"seed = {seed}" if seed is not None else ""
    text = textwrap.dedent("""\
        [study]
        name = "t"
        objective = {objective}
        algorithm = "{algorithm}"
        max_trials = {max_trials}
        {seed_line}
        {extra}
        [params]
        {params}
        [run]
        command = "true"
        """).format(objective=objective, algorithm=algorithm, max_trials=max_trials,
                    seed_line=seed_line, extra=extra, params=textwrap.dedent(params))
    return parse_study(text)


BRANIN_PARAMS = """\
x1 = { type = "float", low = -5.0, high = 10.0 }
x2 = { type = "float", low = 0.0, high = 15.0 }
"""


def branin(p: dict) -> float:
    x1, x2 = p["x1"], p["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)


def node(s: AxSuggester, trial: int) -> str:
    """What made a trial: "design" (hypd's initial design, attached to Ax), or the Ax
    generation node ("Sobol", "MBM")."""
    return s._client._experiment.trials[trial].generator_runs[0]._generation_node_name or "design"


def status(s: AxSuggester, trial: int) -> str:
    return s._client._experiment.trials[trial].status.name


# ---------------------------------------------------------------- import cost


def test_importing_hypd_search_does_not_import_ax_or_torch():
    code = ("import sys, hypd.search, hypd.study\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('ax', 'torch', 'botorch', 'gpytorch', 'pandas'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_make_suggester_kinds():
    assert isinstance(make_suggester(study(BRANIN_PARAMS, algorithm="ax")), AxSuggester)
    sobol = make_suggester(study(BRANIN_PARAMS, algorithm="sobol"))
    assert isinstance(sobol, AxSuggester) and sobol.adaptive
    assert isinstance(make_suggester(study(BRANIN_PARAMS, algorithm="random")), RandomSearch)
    # nothing to search: one configuration, no Ax
    fixed = make_suggester(study("a = 1\nb = \"x\"\n", algorithm="ax"))
    assert isinstance(fixed, RandomSearch)
    assert fixed.ask(2) == [(0, {"a": 1, "b": "x"}), (1, {"a": 1, "b": "x"})]


# ---------------------------------------------------------------- Bayesian optimisation


def test_branin_runs_past_sobol_into_bo():
    s = make_suggester(study(BRANIN_PARAMS, max_trials=12))
    assert s.best() is None
    seen = []
    for _ in range(3):
        batch = s.ask(4)
        assert len(batch) == 4
        for trial, params in batch:
            seen.append(trial)
            assert set(params) == {"x1", "x2"}
            s.complete(trial, {"loss": branin(params), "unrelated": 1.0})
    assert seen == list(range(12))  # Ax's indices, distinct, in order
    assert s.ask(4) == []  # the budget is spent
    nodes = [node(s, t) for t in seen]
    # a continuous space starts as Ax does (hypd/axstrategy.py): the centre, then Sobol
    assert nodes[0] == "CenterOfSearchSpace" and "Sobol" in nodes
    assert nodes[-4:] == ["MBM"] * 4  # the last batch came from the model
    best = s.best()
    assert best is not None and best["trial"] in seen
    assert set(best["params"]) == {"x1", "x2"}
    mean, sem = best["prediction"]["loss"]
    assert best["predicted"] and math.isfinite(mean) and sem is not None and sem >= 0
    assert best["observed"]["loss"] == pytest.approx(branin(best["params"]))
    json.dumps(best)  # JSON-serialisable
    assert min(branin(dict(zip(("x1", "x2"), (p["x1"], p["x2"])))) for p in
               [s._client._experiment.trials[t].arm.parameters for t in seen]) < 15


# ---------------------------------------------------------------- dump / restore


def test_dump_and_restore_continue_the_same_experiment():
    spec = study(BRANIN_PARAMS, max_trials=20)
    s = make_suggester(spec)
    first = s.ask(4)
    for trial, params in first[:3]:
        s.complete(trial, {"loss": branin(params)})
    # trial 3 is still running when the daemon restarts
    state = s.dump()
    assert json.loads(state)["algorithm"] == "ax"

    r = load_suggester(spec, state)
    assert isinstance(r, AxSuggester)
    assert sorted(r._client._experiment.trials) == [0, 1, 2, 3]
    assert status(r, 3) == "RUNNING" and status(r, 0) == "COMPLETED"
    more = r.ask(2)
    assert [t for t, _ in more] == [4, 5]  # no index reused
    assert [node(r, t) for t, _ in more] == ["Sobol", "Sobol"]  # no second centre / start
    old = {tuple(p.values()) for _, p in first}
    assert all(tuple(p.values()) not in old for _, p in more)
    r.complete(3, {"loss": branin(first[3][1])})  # the pending trial ends after the restart
    assert status(r, 3) == "COMPLETED"


def test_sobol_sequence_is_the_same_across_a_restore():
    spec = study(BRANIN_PARAMS, algorithm="sobol", max_trials=20, seed=7)
    straight = make_suggester(spec)
    a = straight.ask(3) + straight.ask(3)

    s = make_suggester(spec)
    b = s.ask(3)
    b += load_suggester(spec, s.dump()).ask(3)
    assert a == b
    assert {node(straight, t) for t, _ in a} == {"Sobol"}


def test_restore_refuses_a_changed_space():
    s = make_suggester(study(BRANIN_PARAMS))
    s.ask(1)
    other = study('x1 = { type = "float", low = -5.0, high = 10.0 }\n'
                  'y = { type = "float", low = 0.0, high = 1.0 }\n')
    with pytest.raises(SearchError, match="parameters changed"):
        load_suggester(other, s.dump())
    with pytest.raises(SearchError):
        load_suggester(study(BRANIN_PARAMS), json.dumps({"algorithm": "random", "next_trial": 0}))


# ---------------------------------------------------------------- hand-given trials, failures


def test_attach_and_budget():
    s = make_suggester(study(BRANIN_PARAMS, algorithm="sobol", max_trials=5))
    t = s.attach({"x1": 1.0, "x2": 2})  # an int for a float parameter is fine
    assert t == 0 and status(s, t) == "RUNNING"
    s.complete(t, {"loss": branin({"x1": 1.0, "x2": 2.0})})
    assert status(s, t) == "COMPLETED"
    batch = s.ask(10)  # attached trials count against max_trials
    assert [i for i, _ in batch] == [1, 2, 3, 4]
    assert s.ask(1) == []
    for bad in ({"x1": 11.0, "x2": 1.0}, {"x1": 1.0}, {"x1": 1.0, "x2": 1.0, "zz": 3},
                {"x1": "a", "x2": 1.0}):
        with pytest.raises(SearchError):
            s.attach(bad)


def test_fail_abandon_and_missing_objective():
    s = make_suggester(study(BRANIN_PARAMS, algorithm="sobol"))
    (a, _), (b, _), (c, pc), (d, _) = s.ask(4)
    s.fail(a)
    s.abandon(b)
    s.complete(c, {"other": 1.0})  # no objective value: Ax cannot complete it
    s.complete(d, {"loss": float("nan")})
    assert [status(s, t) for t in (a, b, c, d)] == ["FAILED", "ABANDONED", "FAILED", "FAILED"]
    # ended trials: later calls are ignored, not errors
    s.complete(a, {"loss": 1.0})
    s.fail(b)
    s.abandon(a)
    assert [status(s, t) for t in (a, b)] == ["FAILED", "ABANDONED"]
    assert s.best() is None
    with pytest.raises(SearchError):
        s.complete(99, {"loss": 1.0})
    assert [t for t, _ in s.ask(2)] == [4, 5]


def test_a_finite_space_is_covered_then_exhausted():
    params = """\
        lr = { values = [0.01, 0.03, 0.1] }
        momentum = { values = [0.0, 0.5, 0.9] }
        epochs = 20
        """
    s = make_suggester(study(params, algorithm="sobol", max_trials=20))
    sizes, seen = [], set()
    for _ in range(4):
        batch = s.ask(4)
        sizes.append(len(batch))
        for trial, p in batch:
            seen.add((p["lr"], p["momentum"]))
            s.complete(trial, {"loss": p["lr"] + p["momentum"]})
    assert sizes == [4, 4, 1, 0]  # the last point, then nothing: no long search for more
    assert len(seen) == 9


def test_parameter_kinds_round_trip():
    params = """\
        lr = { type = "float", low = 1e-5, high = 1e-1, log = true }
        bs = { type = "int", low = 16, high = 512, log = true }
        layers = { type = "int", low = 2, high = 10, step = 2 }
        wd = { type = "float", low = 0.0, high = 0.3, step = 0.1 }
        opt = { values = ["adam", "sgd", "lion"] }
        width = { values = [64, 128, 256] }
        flag = { values = [true, false] }
        mixed = { values = [1, "two", 3.5] }
        seed = 3
        """
    spec = study(params, algorithm="sobol")
    s = make_suggester(spec)
    batch = s.ask(8)
    for _, p in batch:
        assert list(p) == [q.name for q in spec.params]
        for q in spec.params:
            check_value(q, p[q.name])
        assert isinstance(p["lr"], float) and isinstance(p["bs"], int)
        assert p["layers"] in (2, 4, 6, 8, 10) and p["wd"] in (0.0, 0.1, 0.2, 0.3)
        assert isinstance(p["flag"], bool) and p["seed"] == 3
        assert p["mixed"] in (1, "two", 3.5) and type(p["mixed"]) in (int, str, float)
    json.dumps(batch)
    # what Ax proposed can be handed back
    t = s.attach(batch[0][1])
    assert s._client._experiment.trials[t].arm.parameters == \
        s._client._experiment.trials[batch[0][0]].arm.parameters
    with pytest.raises(SearchError):
        s.attach({**batch[0][1], "opt": "rmsprop"})
    with pytest.raises(SearchError):
        s.attach({**batch[0][1], "bs": 32.5})


# ---------------------------------------------------------------- constraints


def test_outcome_and_parameter_constraints():
    params = """\
        warmup = { type = "float", low = 0.0, high = 1.0 }
        decay = { type = "float", low = 0.0, high = 1.0 }
        """
    spec = study(params, max_trials=12,
                 extra='constraints = ["mem <= 5.0"]\nparam_constraints = ["warmup + decay <= 1.0"]')
    s = make_suggester(spec)
    # Sobol, Sobol, then one from the model: with a linear parameter constraint Ax's
    # acquisition optimisation is slow (seconds per point), so only one BO trial here.
    for n in (4, 4, 1):
        for trial, p in s.ask(n):
            assert p["warmup"] + p["decay"] <= 1.0 + 1e-6
            loss = (p["warmup"] - 0.7) ** 2 + (p["decay"] - 0.3) ** 2
            s.complete(trial, {"loss": loss, "mem": 10.0 * p["warmup"]})
    assert node(s, 8) == "MBM"
    best = s.best()
    assert best is not None
    assert best["params"]["warmup"] + best["params"]["decay"] <= 1.0 + 1e-6
    assert set(best["prediction"]) >= {"loss", "mem"}
    # an attached trial outside the linear constraint is refused
    with pytest.raises(SearchError):
        s.attach({"warmup": 0.9, "decay": 0.9})
    with pytest.raises(SearchError, match="Ax cannot take"):
        make_suggester(study(params, extra='param_constraints = ["warmup + nope <= 1.0"]'))


def test_under_noise_best_is_the_models_pick_not_the_luckiest_draw():
    """A bowl under noise as large as much of its signal: Ax's own best point finds the
    model's fit poor (its leave-one-out errors are the noise) and falls back to the best
    observed value, here one lucky draw far from the optimum. best() is the trial the
    model predicts best."""
    s = make_suggester(study('x = { type = "float", low = 0.0, high = 1.0 }', max_trials=60))
    rng = random.Random(0)
    for i in range(30):
        x = i / 29
        s.complete(s.attach({"x": x}), {"loss": (x - 0.6) ** 2 + rng.gauss(0, 0.1)})
    lucky = s.attach({"x": 0.05})  # truly 0.30 above the optimum
    s.complete(lucky, {"loss": -0.3})
    s.ask(1)  # the model, fitted
    best = s.best()
    assert best["trial"] != lucky and abs(best["params"]["x"] - 0.6) < 0.1
    assert best["predicted"] and best["observed"]["loss"] > -0.3


def test_multi_objective_best_is_a_pareto_list():
    spec = study(BRANIN_PARAMS, algorithm="sobol", max_trials=8,
                 objective='[{ metric = "loss" }, { metric = "latency_ms", goal = "minimize" }]')
    s = make_suggester(spec)
    assert s._objective_string() == "-loss, -latency_ms"
    for trial, p in s.ask(8):
        s.complete(trial, {"loss": branin(p), "latency_ms": (p["x1"] + 5.0) * 3.0})
    best = s.best()
    assert best is not None and isinstance(best["pareto"], list) and best["pareto"]
    for entry in best["pareto"]:
        assert set(entry["prediction"]) >= {"loss", "latency_ms"}
        assert set(entry["params"]) == {"x1", "x2"}
    json.dumps(best)


# ---------------------------------------------------------------- early stopping


def curve(final: float, step: int) -> float:
    return final + 10.0 / (step + 1)


def test_early_stopping_stops_the_clearly_worse_curve():
    spec = study(BRANIN_PARAMS, algorithm="sobol", max_trials=20,
                 extra='early_stop = { rule = "percentile", metric = "loss", min_step = 2 }')
    s = make_suggester(spec)
    # Ax's percentile strategy waits for 5 trials COMPLETED with curves
    done = s.ask(5)
    for i, (trial, _) in enumerate(done):
        for step in range(6):
            s.report(trial, step, {"loss": curve(1.0 + i * 0.1, step)})
        s.complete(trial, {"loss": curve(1.0 + i * 0.1, 5)})
    running = [t for t, _ in s.ask(3)]
    good1, good2, bad = running
    for step in range(2):  # below min_step: nothing is stopped yet
        for t, final in ((good1, 1.05), (good2, 1.15), (bad, 50.0)):
            s.report(t, step, {"loss": curve(final, step)})
    assert s.early_stop(running) == []
    s = load_suggester(spec, s.dump())  # a daemon restart mid-study keeps it all
    for step in range(2, 4):
        for t, final in ((good1, 1.05), (good2, 1.15), (bad, 50.0)):
            s.report(t, step, {"loss": curve(final, step)})
    assert s.early_stop(running) == [bad]
    assert status(s, bad) == "EARLY_STOPPED"
    assert s.early_stop(running) == []  # it is no longer running
    # the daemon kills it; whatever it then calls leaves it EARLY_STOPPED, data kept
    s.fail(bad)
    s.complete(bad, {"loss": curve(50.0, 3)})
    assert status(s, bad) == "EARLY_STOPPED"
    df = s._client._experiment.lookup_data(trial_indices=[bad]).full_df
    assert sorted(df["step"]) == [0, 1, 2, 3]
    # the final value of a trial that reported steps sits at its last step
    s.complete(good1, {"loss": 1.05})
    df = s._client._experiment.lookup_data(trial_indices=[good1]).full_df
    assert df["step"].max() == 3 and df.loc[df["step"] == 3, "mean"].item() == 1.05


@pytest.mark.parametrize("early_stop", ['{ rule = "asha", min_step = 1, max_step = 9 }', '{ min_step = 1 }'])
def test_with_hypds_own_rule_ax_learns_the_curves_and_is_told_of_a_stop(early_stop):
    spec = study(BRANIN_PARAMS, algorithm="sobol", max_trials=20, extra=f'early_stop = {early_stop}')
    s = make_suggester(spec)
    assert s._client._maybe_early_stopping_strategy is None  # the rule is hypd's (hypd/asha.py, trend.py)
    trials = [t for t, _ in s.ask(2)]
    for t in trials:
        for step in range(3):
            s.report(t, step, {"loss": curve(1.0 + t, step)})
    assert s.early_stop(trials) == []  # Ax does not judge
    s.stopped(trials[1])
    assert status(s, trials[1]) == "EARLY_STOPPED"
    s = load_suggester(spec, s.dump())
    s.stopped(trials[1])  # told again (after a restart): nothing changes
    assert status(s, trials[1]) == "EARLY_STOPPED"
    assert sorted(s._client._experiment.lookup_data(trial_indices=[trials[1]]).full_df["step"]) == [0, 1, 2]


def test_early_stop_is_off_without_the_setting():
    s = make_suggester(study(BRANIN_PARAMS, algorithm="sobol"))
    trials = [t for t, _ in s.ask(2)]
    s.report(trials[0], 1, {"loss": 3.0})
    assert s.early_stop(trials) == []


def test_an_edited_study_file_takes_effect_on_the_next_call():
    # The daemon swaps in an edited study file (same space) with update_spec.
    plain = study(BRANIN_PARAMS, algorithm="sobol", seed=1)
    edited = study(BRANIN_PARAMS, algorithm="sobol", seed=2, max_trials=3,
                   extra='early_stop = { rule = "percentile", metric = "loss", min_step = 1 }')
    s = make_suggester(plain)
    s.ask(1)
    s.update_spec(edited)
    assert s._client._maybe_early_stopping_strategy is None  # applied under the lock, later
    assert len(s.ask(5)) == 2  # the new budget
    strategy = s._client._maybe_early_stopping_strategy
    assert strategy is not None and strategy.min_progression == 1
    assert s._client._random_seed == 2


def test_what_ax_refuses_is_a_one_line_search_error():
    # (A name no METRICS line can carry, such as "1loss", is refused before Ax: hypd.study.)
    with pytest.raises(SearchError, match="^Ax cannot take this study: [^\n]*$"):
        make_suggester(study(BRANIN_PARAMS, objective='{ metric = "lambda" }'))
    with pytest.raises(SearchError, match="objective"):  # a constraint on the objective itself
        make_suggester(study(BRANIN_PARAMS, extra='constraints = ["loss <= 3.0"]'))


def test_a_trial_told_with_its_replicates_sem_gives_ax_that_noise():
    s = AxSuggester(study(BRANIN_PARAMS, extra="replicates = 3"))
    (a, _), (b, _) = s.ask(2)
    s.complete(a, {"loss": 4.0}, {"loss": 0.5})  # a mean over replicates, with its standard error
    s.complete(b, {"loss": 3.0})  # one replicate completed: no SEM known
    df = s._client._experiment.lookup_data().df.set_index("trial_index")
    assert (df.loc[a, "mean"], df.loc[a, "sem"]) == (4.0, 0.5)
    assert df.loc[b, "mean"] == 3.0 and math.isnan(df.loc[b, "sem"])
    restored = load_suggester(s.spec, s.dump())  # kept across a restart
    assert restored._client._experiment.lookup_data().df.set_index("trial_index").loc[a, "sem"] == 0.5


def test_the_first_trials_try_every_choice_value_twice_before_the_model():
    # Ax's own start (centre + Sobol) may leave a value of a choice untried or tried once,
    # and its model then never goes back there (hypd/axstrategy.py): hypd's design deals
    # every value out before the first model-made trial.
    spec = study("""\
        lr = { type = "float", low = 1e-5, high = 1.0, log = true }
        opt = { values = ["sgd", "rmsprop", "adam", "lamb"] }
        layers = { type = "int", low = 1, high = 8 }
        """, max_trials=30, seed=3)
    s = make_suggester(spec)
    first = s.ask(8)  # 2 per value of the 4-way choice: the whole design, no model yet
    assert [t for t, _ in first] == list(range(8))
    assert {node(s, t) for t, _ in first} == {"design"}
    assert sorted(p["opt"] for _, p in first) == sorted(["sgd", "rmsprop", "adam", "lamb"] * 2)
    assert len({p["layers"] for _, p in first}) == 8  # a range: one trial per slice
    for trial, p in first[:2]:
        s.complete(trial, {"loss": p["layers"] + math.log10(p["lr"]) ** 2})
    after = s.ask(1)  # the design is spent: Ax's own from here
    assert node(s, after[0][0]) == "MBM"
