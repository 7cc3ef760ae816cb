"""Unit tests for the grid and random parts of hypd.search (Ax is tested elsewhere)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from hypd.search import (
    GridSearch,
    RandomSearch,
    SearchError,
    grid_size,
    load_suggester,
    make_suggester,
    sample_value,
)
from hypd.study import (
    ChoiceParam,
    FixedParam,
    FloatParam,
    IntParam,
    StudySpec,
    check_value,
    grid_axes,
    parse_study,
)


def study(params: str, algorithm: str = "random", extra: str = "", name: str = "s") -> StudySpec:
    names = [line.split("=", 1)[0].strip() for line in params.splitlines() if line.strip()]
    command = "run " + " ".join(f"{{{n}}}" for n in names)
    text = (f'[study]\nname = "{name}"\nobjective = "loss"\nalgorithm = "{algorithm}"\n{extra}\n'
            f"[params]\n{params}\n[run]\ncommand = {json.dumps(command)}\n")
    return parse_study(text, "test.toml", base_dir="/tmp")


MIXED = ('lr = { type = "float", low = 1e-4, high = 1e-1, log = true }\n'
         'layers = { type = "int", low = 1, high = 4 }\n'
         'opt = { type = "choice", values = ["adam", "sgd"] }\n'
         'seed = 0')

DISCRETE = ('a = { type = "int", low = 1, high = 3 }\n'
            'b = { values = ["x", "y"] }\n'
            'c = { type = "float", low = 0.0, high = 1.0, step = 0.5 }\n'
            'fixed = "f"')


def keys(trials):
    return [tuple(sorted(p.items())) for _, p in trials]


# ---------------------------------------------------------------- make / load

def test_make_suggester_kinds():
    grid = make_suggester(study(DISCRETE, "grid"))
    rand = make_suggester(study(MIXED, "random"))
    assert isinstance(grid, GridSearch) and not grid.adaptive
    assert isinstance(rand, RandomSearch) and not rand.adaptive


@pytest.mark.parametrize("state", [None, ""])
def test_load_suggester_fresh(state):
    spec = study(MIXED, "random")
    restored = load_suggester(spec, state)
    assert isinstance(restored, RandomSearch)
    assert restored.ask(3) == make_suggester(spec).ask(3)


# ---------------------------------------------------------------- grid

def test_grid_enumerates_full_product_once_in_order():
    spec = study(DISCRETE, "grid")
    assert spec.max_trials is None
    grid = make_suggester(spec)
    trials = grid.ask(1000)
    axes = [[1, 2, 3], ["x", "y"], [0.0, 0.5, 1.0], ["f"]]
    assert grid_axes(spec.params, None) == axes
    expected = [dict(zip(["a", "b", "c", "fixed"], combo)) for combo in itertools.product(*axes)]
    assert [p for _, p in trials] == expected  # the last parameter varies fastest
    assert [t for t, _ in trials] == list(range(18))
    assert len(set(keys(trials))) == 18 == grid.size() == grid_size(spec)
    assert grid.ask(5) == []


def test_grid_in_chunks_equals_all_at_once():
    spec = study(DISCRETE, "grid")
    whole = make_suggester(spec).ask(100)
    grid = make_suggester(spec)
    chunks = []
    while batch := grid.ask(4):
        assert len(batch) <= 4
        chunks.extend(batch)
    assert chunks == whole
    assert grid.ask(0) == []


def test_grid_stops_at_max_trials():
    spec = study(DISCRETE, "grid", extra="max_trials = 5")
    grid = make_suggester(spec)
    trials = grid.ask(100)
    assert len(trials) == 5
    assert trials == make_suggester(study(DISCRETE, "grid")).ask(5)
    assert grid.ask(1) == []


def test_grid_with_continuous_range_sized_by_max_trials():
    spec = study(MIXED, "grid", extra="max_trials = 20")
    grid = make_suggester(spec)
    trials = grid.ask(100)
    assert len(trials) == grid.size() == 16 <= spec.max_trials
    assert sorted({p["lr"] for _, p in trials}) == [1e-4, 1e-1]
    assert {p["seed"] for _, p in trials} == {0}
    assert [p["lr"] for _, p in trials[:8]] == [1e-4] * 8  # first parameter varies slowest


def test_grid_dump_and_resume():
    spec = study(DISCRETE, "grid")
    whole = make_suggester(spec).ask(100)
    grid = make_suggester(spec)
    first = grid.ask(7)
    state = grid.dump()
    assert json.loads(state)["algorithm"] == "grid"
    resumed = load_suggester(spec, state)
    assert isinstance(resumed, GridSearch)
    rest = resumed.ask(100)
    assert first + rest == whole


def test_a_grid_given_more_values_proposes_only_its_new_points():
    grid = make_suggester(study('lr = { values = [0.1, 0.2] }\nb = { values = ["x", "y"] }', "grid"))
    first = grid.ask(100)
    grid.update_spec(study('lr = { values = [0.1, 0.2, 0.3] }\nb = { values = ["x", "y"] }', "grid"))
    more = grid.extend([p for _, p in first])
    assert [(t, p) for t, p in more] == [(4, {"lr": 0.3, "b": "x"}), (5, {"lr": 0.3, "b": "y"})]
    assert grid.extend([p for _, p in first + more]) == []  # nothing twice
    resumed = load_suggester(grid.spec, grid.dump())
    assert resumed.ask(10) == [] and resumed.extend([p for _, p in first + more]) == []


def test_a_grid_given_a_larger_max_trials_proposes_the_points_it_adds():
    grid = make_suggester(study('x = { type = "float", low = 0.0, high = 1.0 }', "grid", extra="max_trials = 2"))
    first = grid.ask(100)
    assert [p["x"] for _, p in first] == [0.0, 1.0]
    grid.update_spec(study('x = { type = "float", low = 0.0, high = 1.0 }', "grid", extra="max_trials = 3"))
    assert grid.extend([p for _, p in first]) == [(2, {"x": 0.5})]  # 0 and 1 are kept, not run again


def test_a_random_study_with_a_larger_max_trials_goes_on_with_its_sequence():
    spec = study(MIXED, "random", extra="max_trials = 6")
    whole = make_suggester(spec).ask(6)
    rs = make_suggester(study(MIXED, "random", extra="max_trials = 4"))
    first = rs.ask(10)
    rs.update_spec(spec)
    assert first + rs.extend([p for _, p in first]) == whole


# ---------------------------------------------------------------- random

def test_random_values_inside_space():
    params = (MIXED + '\n'
              'x = { type = "float", low = -2.0, high = 3.0 }\n'
              'k = { type = "int", low = 1, high = 1024, log = true }\n'
              's = { type = "int", low = 0, high = 20, step = 5 }\n'
              'q = { type = "float", low = 0.0, high = 1.0, step = 0.25 }\n'
              'n = { values = [1, 2.5, true, "z"] }')
    spec = study(params, extra="max_trials = 300")
    trials = make_suggester(spec).ask(1000)
    assert len(trials) == 300
    for _, p in trials:
        assert list(p) == [q.name for q in spec.params]
        for param in spec.params:
            check_value(param, p[param.name])
        assert type(p["layers"]) is int and type(p["k"]) is int and type(p["s"]) is int
        assert type(p["lr"]) is float and type(p["x"]) is float
        assert p["s"] % 5 == 0
        assert p["q"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert p["opt"] in ("adam", "sgd")
        assert p["seed"] == 0
    seen = {name: {p[name] for _, p in trials} for name in ("layers", "opt", "s", "q")}
    assert seen["layers"] == {1, 2, 3, 4}
    assert seen["opt"] == {"adam", "sgd"}
    assert seen["s"] == {0, 5, 10, 15, 20}
    assert seen["q"] == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert {repr(p["n"]) for _, p in trials} == {"1", "2.5", "True", "'z'"}  # True and 1 both drawn


def test_random_log_uniform():
    spec = study('lr = { type = "float", low = 1e-4, high = 1e-1, log = true }', extra="max_trials = 2000")
    lrs = [p["lr"] for _, p in make_suggester(spec).ask(2000)]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    # log-uniform: about half below the geometric middle (uniform would put ~3% there)
    below = sum(v < math.sqrt(1e-4 * 1e-1) for v in lrs) / len(lrs)
    assert 0.4 < below < 0.6
    decades = [sum(10.0 ** -(d + 1) <= v < 10.0 ** -d for v in lrs) for d in (1, 2, 3)]
    assert all(500 < count < 830 for count in decades), decades


def test_random_int_log_favours_small_values():
    spec = study('k = { type = "int", low = 1, high = 1000, log = true }', extra="max_trials = 1000")
    ks = [p["k"] for _, p in make_suggester(spec).ask(1000)]
    assert all(1 <= k <= 1000 and type(k) is int for k in ks)
    assert 0.35 < sum(k <= 31 for k in ks) / len(ks) < 0.65


def test_random_same_seed_same_sequence():
    a = make_suggester(study(MIXED, extra="seed = 11"))
    b = make_suggester(study(MIXED, extra="seed = 11", name="other"))
    c = make_suggester(study(MIXED, extra="seed = 12"))
    ta, tb, tc = a.ask(10), b.ask(10), c.ask(10)
    assert ta == tb  # the seed, not the name, decides
    assert ta != tc
    assert len(set(keys(ta))) == 10


def test_random_without_seed_depends_on_name_only():
    assert make_suggester(study(MIXED, name="n1")).ask(5) == make_suggester(study(MIXED, name="n1")).ask(5)
    assert make_suggester(study(MIXED, name="n1")).ask(5) != make_suggester(study(MIXED, name="n2")).ask(5)


def test_random_default_budget_and_chunks():
    spec = study(MIXED)
    assert spec.max_trials == 20
    rand = make_suggester(spec)
    chunks = rand.ask(3) + rand.ask(7) + rand.ask(100)
    assert [t for t, _ in chunks] == list(range(20))
    assert chunks == make_suggester(spec).ask(100)
    assert rand.ask(1) == []


def test_random_dump_load_continues_without_repeats():
    spec = study(MIXED, extra="max_trials = 50")
    whole = make_suggester(spec).ask(50)
    rand = make_suggester(spec)
    first = rand.ask(10)
    state = rand.dump()
    assert json.loads(state) == {"algorithm": "random", "next_trial": 10, "next_point": 10, "attached": []}
    resumed = load_suggester(spec, state)
    assert isinstance(resumed, RandomSearch)
    second = resumed.ask(15)
    again = load_suggester(spec, resumed.dump()).ask(100)
    combined = first + second + again
    assert combined == whole
    assert [t for t, _ in combined] == list(range(50))
    assert len(set(keys(combined))) == 50


@pytest.mark.parametrize(("param", "bad"), [
    (FloatParam("x", 0.0, 0.3, step=0.1), "above high: 3 * 0.1 = 0.30000000000000004"),
    (FloatParam("x", 0.1 * (1 - 1e-14), 0.1, log=True), "exp(log(0.1)) > 0.1"),
])
def test_random_float_stays_in_bounds(param, bad):
    for seed in range(300):
        value = sample_value(param, random.Random(seed))
        assert param.low <= value <= param.high, (bad, value)


def test_random_stepped_float_is_on_the_grid_values():
    param = FloatParam("x", 0.0, 1.0, step=0.25)
    values = {sample_value(param, random.Random(seed)) for seed in range(200)}
    assert values == {0.0, 0.25, 0.5, 0.75, 1.0}


@pytest.mark.parametrize(("param", "allowed"), [
    (FixedParam("s", 3), {3}),
    (ChoiceParam("c", ("a", "b")), {"a", "b"}),
    (IntParam("n", 2, 4), {2, 3, 4}),
    (IntParam("n", 1, 9, step=4), {1, 5, 9}),
    (IntParam("n", 1, 3, log=True), {1, 2, 3}),
])
def test_sample_value_discrete(param, allowed):
    rng = random.Random(0)
    values = [sample_value(param, rng) for _ in range(300)]
    assert set(values) == allowed


# ---------------------------------------------------------------- attach

@pytest.mark.parametrize("algorithm", ["grid", "random"])
def test_attach_takes_next_trial_number(algorithm):
    spec = study(DISCRETE, algorithm, extra="max_trials = 10")
    fresh = make_suggester(spec).ask(10)
    s = make_suggester(spec)
    assert [t for t, _ in s.ask(2)] == [0, 1]
    assert s.attach({"a": 2, "b": "y", "c": 0.5}) == 2
    assert s.attach({"a": 3, "b": "x", "c": 1.0, "fixed": "f"}) == 3
    nxt = s.ask(1)
    assert nxt == [(4, fresh[2][1])]  # the search's own sequence is not skipped
    state = json.loads(s.dump())
    assert state["attached"] == [2, 3] and state["next_trial"] == 5 and state["next_point"] == 3
    resumed = load_suggester(spec, s.dump())
    assert resumed.attach({"a": 1, "b": "x", "c": 0.0}) == 5
    assert resumed.ask(1) == [(6, fresh[3][1])]


@pytest.mark.parametrize(("given", "words"), [
    ({"lr": 0.01, "layers": 2, "opt": "adam", "dropout": 0.5}, "unknown parameter"),
    ({"lr": 0.5, "layers": 2, "opt": "adam"}, "outside"),
    ({"lr": 1e-5, "layers": 2, "opt": "adam"}, "outside"),
    ({"lr": 0.01, "layers": 9, "opt": "adam"}, "outside"),
    ({"lr": 0.01, "layers": 2, "opt": "rmsprop"}, "not one of"),
    ({"lr": 0.01, "layers": 2}, "missing"),
    ({"lr": 0.01, "layers": 2, "opt": "adam", "seed": 1}, "fixed"),
    ({"lr": float("nan"), "layers": 2, "opt": "adam"}, "outside"),
])
@pytest.mark.parametrize("algorithm", ["grid", "random"])
def test_attach_validates(algorithm, given, words):
    s = make_suggester(study(MIXED, algorithm, extra="max_trials = 20"))
    with pytest.raises(SearchError) as info:
        s.attach(given)
    assert words in str(info.value)
    assert s.attach({"lr": 0.01, "layers": 2, "opt": "adam"}) == 0  # a refusal takes no number


@pytest.mark.parametrize("given", [
    {"lr": "0.01", "layers": 2, "opt": "adam"},   # a string for a float: TypeError today
    {"lr": 0.01, "layers": 2.5, "opt": "adam"},   # not a whole number
    {"lr": 0.01, "layers": True, "opt": "adam"},  # a bool is not an int here
], ids=["str-for-float", "fraction-for-int", "bool-for-int"])
def test_attach_rejects_wrong_types(given):
    s = make_suggester(study(MIXED, extra="max_trials = 20"))
    with pytest.raises(SearchError):
        s.attach(given)


def test_attach_rejects_value_off_the_step():
    s = make_suggester(study('n = { type = "int", low = 1, high = 5, step = 2 }'))
    with pytest.raises(SearchError):
        s.attach({"n": 2})
