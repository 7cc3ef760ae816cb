"""The Bayesian search's first trials (hypd/design.py): pure, property-based."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from hypd.axstrategy import MAX_INITIAL_TRIALS, initial_trials
from hypd.design import initial_design, value_at
from hypd.study import ChoiceParam, FloatParam, IntParam, Param, _discrete_values


@st.composite
def params(draw) -> Param:
    kind = draw(st.sampled_from(["float", "logfloat", "stepfloat", "int", "logint", "choice"]))
    name = "p"
    if kind == "choice":
        values = draw(st.lists(st.integers(-5, 50), min_size=1, max_size=12, unique=True))
        return ChoiceParam(name, tuple(values), ordered=False)
    if kind in ("int", "logint"):
        low = draw(st.integers(1, 1000))
        high = low + draw(st.integers(0, 5000))
        if kind == "logint":
            return IntParam(name, low, high, True, 1)
        return IntParam(name, low, high, False, draw(st.integers(1, 7)))
    low = draw(st.floats(1e-6, 1e3, allow_nan=False))
    high = low * draw(st.floats(1.0, 1e4)) + draw(st.floats(0.0, 10.0))
    if kind == "logfloat":
        return FloatParam(name, low, high, True, None)
    if kind == "stepfloat":
        step = (high - low) / draw(st.integers(1, 50)) if high > low else 1.0
        return FloatParam(name, low, high, False, step)
    return FloatParam(name, low, high, False, None)


@settings(max_examples=300, deadline=None)
@given(params(), st.floats(0.0, 1.0))
def test_value_at_is_a_value_of_the_parameter(param: Param, u: float) -> None:
    value = value_at(param, u)
    discrete = _discrete_values(param)
    if discrete is not None:
        assert value in discrete  # exactly the values Ax is given for a stepped range or a choice
    else:
        assert param.low <= value <= param.high  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**32))
def test_a_range_gets_one_point_in_each_slice(n: int, dims: int, seed: int) -> None:
    space = [FloatParam(f"x{i}", 0.0, 1.0, False, None) for i in range(dims)]
    design = initial_design(space, n, seed)
    assert len(design) == n
    for p in space:
        assert sorted(int(point[p.name] * n) for point in design) == list(range(n))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(3, 12), min_size=1, max_size=3), st.integers(0, 2**32))
def test_every_choice_value_is_drawn_evenly_in_the_initial_design(sizes: list[int], seed: int) -> None:
    space = [ChoiceParam(f"c{i}", tuple(range(k)), ordered=False) for i, k in enumerate(sizes)]
    space.append(FloatParam("lr", 1e-5, 1.0, True, None))
    n = initial_trials(sizes)
    design = initial_design(space, n, seed)
    assert len(design) == n
    for p, k in zip(space, sizes):
        counts = Counter(point[p.name] for point in design)
        if 2 * k <= MAX_INITIAL_TRIALS:  # room for every value twice: each gets two or more
            assert set(counts) == set(range(k)) and min(counts.values()) >= 2
        assert max(counts.values()) - min(counts.get(v, 0) for v in range(k)) <= 1


def test_the_design_is_the_same_for_a_seed_and_differs_across_seeds() -> None:
    space = [FloatParam("x", 0.0, 1.0, False, None), IntParam("n", 1, 9, False, 1)]
    assert initial_design(space, 6, 3) == initial_design(space, 6, 3)
    assert initial_design(space, 6, 3) != initial_design(space, 6, 4)
