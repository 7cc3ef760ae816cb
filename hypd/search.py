"""Search algorithms behind one interface, so the daemon's scheduler does not care which.

A `Suggester` proposes trials (`ask`), learns outcomes (`complete`, `fail`, `abandon`,
`report`), and serialises its whole state (`dump`) so a study resumes after a restart.
The daemon calls every method off the event loop (in a worker thread), one call at a
time per study, and stores `dump()` after each change.

Trial numbers are the suggester's: the daemon stores trials under the numbers it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hypd.axstrategy import generation_strategy, initial_trials
from hypd.design import initial_design, value_at
from hypd.study import (
    ChoiceParam,
    FloatParam,
    IntParam,
    Param,
    StudySpec,
    axis_size,
    complete_params,
    grid_axes,
)


class SearchError(ValueError):
    """A request the search cannot honour (a bad hand-given trial, a changed space)."""


class Suggester(ABC):
    """The search side of a study."""

    #: False when every trial is known up front (grid, random): the daemon then queues
    #: them all as pending runs at submit; True when trials are asked for as slots free.
    adaptive: bool = False

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    @abstractmethod
    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to n new trials as (trial number, full parameters); fewer, or none, when the
        space or the budget is exhausted."""

    @abstractmethod
    def attach(self, params: Mapping[str, Any]) -> int:
        """Register a hand-given trial (`hypd suggest`); returns its trial number.
        Raises SearchError if the values are outside the space."""

    def budget(self) -> int:
        """How many trials the search proposes in all (a grid without max_trials: its size)."""
        return self.spec.max_trials if self.spec.max_trials is not None else 1 << 62

    def update_spec(self, spec: StudySpec) -> None:
        """Take an edited study file whose search space is unchanged (a new max_trials,
        seed, early_stop, ...); the next calls follow it."""
        self.spec = spec

    def extend(self, existing: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        """(A search that is not adaptive, resubmitted with more values or a larger
        max_trials.) The trials it has not proposed yet; `existing`: the parameters of the
        study's trials so far."""
        return []

    def report(self, trial: int, step: int, values: Mapping[str, float]) -> None:
        """An intermediate report of a running trial (for early stopping)."""

    def complete(self, trial: int, values: Mapping[str, float], sems: Mapping[str, float] | None = None) -> None:
        """The trial's final values (the objective's result and other metrics); with
        replicates, their means, and in `sems` the standard error of each mean."""

    def fail(self, trial: int) -> None:
        """The trial failed: a bad configuration, it should inform the search."""

    def abandon(self, trial: int) -> None:
        """The trial ended without a verdict (killed, or lost with its host)."""

    def withdraw(self, trial: int) -> None:
        """A trial proposed and never run, taken back (the daemon asked ahead and asked
        again with more data): the search forgets it, and it does not count against
        max_trials. Default: abandoned."""
        self.abandon(trial)

    def early_stop(self, running: list[int]) -> list[int]:
        """Of these running trials, the ones to stop now. Default: none."""
        return []

    def stopped(self, trial: int) -> None:
        """The trial was stopped early by hypd's own rule (trend or ASHA); its reports stand."""

    def best(self) -> dict[str, Any] | None:
        """The model's predicted best parameters, with predictions, if it has a model."""
        return None

    @abstractmethod
    def dump(self) -> str:
        """The whole state as a string; `load_suggester(spec, dump())` gives it back."""

    @abstractmethod
    def _restore(self, state: Mapping[str, Any]) -> None: ...


def _stable_seed(spec: StudySpec) -> int:
    if spec.seed is not None:
        return spec.seed
    return int.from_bytes(hashlib.sha256(spec.name.encode()).digest()[:4], "big")


def sample_value(param: Param, rng: random.Random) -> Any:
    """One uniformly drawn value (log-uniform on a log scale)."""
    return value_at(param, rng.random())


class _Enumerated(Suggester):
    """Trials numbered 0, 1, 2, ...; hand-given trials take the next number too."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__(spec)
        self.next_trial = 0
        self.next_point = 0  # index into the algorithm's own sequence
        self.attached: list[int] = []

    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        out = []
        while len(out) < n and self.next_trial < self.budget():
            params = self.point(self.next_point)
            if params is None:
                break
            out.append((self.next_trial, params))
            self.next_point += 1
            self.next_trial += 1
        return out

    def attach(self, params: Mapping[str, Any]) -> int:
        try:
            full = complete_params(self.spec, params)
        except ValueError as exc:
            raise SearchError(str(exc)) from None
        del full  # validated; the daemon stores the parameters with the trial
        trial = self.next_trial
        self.next_trial += 1
        self.attached.append(trial)
        return trial

    def point(self, index: int) -> dict[str, Any] | None:
        raise NotImplementedError

    def extend(self, existing: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        return self.ask(max(0, self.budget() - self.next_trial))  # the sequence goes on where it was

    def dump(self) -> str:
        return json.dumps({"algorithm": self.spec.algorithm, "next_trial": self.next_trial,
                           "next_point": self.next_point, "attached": self.attached})

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.next_trial = int(state["next_trial"])
        self.next_point = int(state["next_point"])
        self.attached = list(state.get("attached", []))


class GridSearch(_Enumerated):
    """Every combination, in order (the last parameter varies fastest)."""

    def __init__(self, spec: StudySpec) -> None:
        super().__init__(spec)
        self.axes = grid_axes(spec.params, spec.max_trials)

    def update_spec(self, spec: StudySpec) -> None:
        super().update_spec(spec)
        self.axes = grid_axes(spec.params, spec.max_trials)

    def extend(self, existing: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        """The grid's points (as its file now says: new values, a larger max_trials) that
        no trial has yet, in grid order and within max_trials; a point is a trial once."""
        seen = {_point_key(p) for p in existing}
        out = []
        for index in range(self.size()):
            if self.next_trial >= self.budget():
                break
            params = self.point(index)
            if params is None or _point_key(params) in seen:
                continue
            seen.add(_point_key(params))
            out.append((self.next_trial, params))
            self.next_trial += 1
        self.next_point = self.size()
        return out

    def size(self) -> int:
        return math.prod(len(a) for a in self.axes)

    def point(self, index: int) -> dict[str, Any] | None:
        if index >= self.size():
            return None
        values = []
        for axis in reversed(self.axes):
            index, i = divmod(index, len(axis))
            values.append(axis[i])
        return {p.name: v for p, v in zip(self.spec.params, reversed(values))}


def _point_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class RandomSearch(_Enumerated):
    """Independent uniform draws; point i depends only on the seed and i, so a restart
    continues the same sequence."""

    def point(self, index: int) -> dict[str, Any] | None:
        rng = random.Random(f"{_stable_seed(self.spec)}:{index}")
        return {p.name: sample_value(p, rng) for p in self.spec.params}


# ---------------------------------------------------------------- Ax

_AX: Any = None  # the lazily imported Ax names (a SimpleNamespace), see _ax()


def _ax() -> Any:
    """Import Ax (and with it torch) on first use and quiet its logging. Nothing else in
    hypd imports Ax: `import hypd.search` stays cheap for the CLI and the pure core."""
    global _AX
    if _AX is None:
        import logging
        import types

        # The one INFO line Ax logs while being imported (before any level can be set):
        # filter it on its logger, which Ax then finds already made.
        logging.getLogger("ax.storage.sqa_store.with_db_settings_base").addFilter(
            lambda record: record.levelno >= logging.WARNING)
        from ax import ChoiceParameterConfig, Client, RangeParameterConfig  # noqa: TID251
        from ax.core.map_metric import MapMetric  # noqa: TID251
        from ax.core.trial_status import TrialStatus  # noqa: TID251
        from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy  # noqa: TID251
        from ax.exceptions.core import (  # noqa: TID251
            AxError,
            DataRequiredError,
            OptimizationComplete,
        )
        from ax.exceptions.generation_strategy import MaxParallelismReachedException  # noqa: TID251

        logging.getLogger("ax").setLevel(logging.WARNING)
        _AX = types.SimpleNamespace(
            Client=Client, RangeParameterConfig=RangeParameterConfig,
            ChoiceParameterConfig=ChoiceParameterConfig, MapMetric=MapMetric,
            TrialStatus=TrialStatus, PercentileEarlyStoppingStrategy=PercentileEarlyStoppingStrategy,
            AxError=AxError,
            # ask() answers "none now" (an empty list) on these rather than raising:
            no_trials_now=(DataRequiredError, OptimizationComplete, MaxParallelismReachedException),
        )
        _quiet_ax_loggers()
    return _AX


def _quiet_ax_loggers() -> None:
    """Ax gives each of its module loggers its own INFO level (so the "ax" logger's level
    alone does not hold them back) and creates more as it imports lazily: lift every one
    below WARNING up to WARNING. Cheap; run after each call that may import more of Ax."""
    import logging

    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if (name == "ax" or name.startswith("ax.")) and isinstance(lg, logging.Logger):
            if lg.level < logging.WARNING:
                lg.setLevel(logging.WARNING)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An Ax error message (often several lines) as one short line."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (JSON-serialisable)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


# More points than this on a stepped range and the range stays continuous in Ax (a choice
# parameter with thousands of values helps no one); the value is rounded onto the step.
_MAX_STEP_CHOICES = 1000


class _AxParam:
    """How one searched parameter looks to Ax: its config, and the value maps both ways."""

    def __init__(self, param: Param) -> None:
        self.param = param
        self.name = param.name
        self.decode: dict[Any, Any] = {}  # Ax's choice value -> ours (choices only)
        self.encode: list[tuple[Any, Any]] = []  # (ours, Ax's) for choices
        self.round_to: tuple[float, float] | None = None  # (low, step) when rounded here
        self.size: int | None = None  # how many values Ax can propose; None: a continuum
        ax = _ax()
        if isinstance(param, ChoiceParam):
            values = list(param.values)
            if all(isinstance(v, bool) for v in values):
                kind, ax_values = "bool", values
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                kind, ax_values = "int", values
            elif (all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
                  and len({float(v) for v in values}) == len(values)):
                kind, ax_values = "float", [float(v) for v in values]
            elif all(isinstance(v, str) for v in values):
                kind, ax_values = "str", values
            else:  # mixed kinds: Ax wants one type; JSON text keeps 1, 1.0, "1", true apart
                kind, ax_values = "str", [json.dumps(v) for v in values]
            self.size = len(values)
            self.decode = dict(zip(ax_values, values))
            self.encode = list(zip(values, ax_values))
            self.config = ax.ChoiceParameterConfig(
                name=param.name, values=ax_values, parameter_type=kind, is_ordered=param.ordered)
        elif isinstance(param, IntParam):
            count = (param.high - param.low) // param.step + 1
            self.size = count
            if param.step > 1 and count <= _MAX_STEP_CHOICES:
                values = list(range(param.low, param.high + 1, param.step))
                self.config = ax.ChoiceParameterConfig(
                    name=param.name, values=values, parameter_type="int", is_ordered=True)
            else:
                if param.step > 1:
                    self.round_to = (param.low, param.step)
                self.config = ax.RangeParameterConfig(
                    name=param.name, bounds=(param.low, param.high), parameter_type="int",
                    scaling="log" if param.log else "linear")
        elif isinstance(param, FloatParam):
            stepped = param.step is not None and (axis_size(param) or 0) <= _MAX_STEP_CHOICES
            values = grid_axes((param,), None)[0] if stepped else None
            if values is not None and len(values) <= _MAX_STEP_CHOICES:
                self.size = len(values)
                self.config = ax.ChoiceParameterConfig(
                    name=param.name, values=[float(v) for v in values], parameter_type="float",
                    is_ordered=True)
            else:
                if param.step is not None:
                    self.round_to = (param.low, param.step)
                self.config = ax.RangeParameterConfig(
                    name=param.name, bounds=(float(param.low), float(param.high)),
                    parameter_type="float", scaling="log" if param.log else "linear")
        else:  # pragma: no cover - fixed parameters never reach Ax
            raise TypeError(param)

    def from_ax(self, value: Any) -> Any:
        value = _plain(value)
        p = self.param
        if isinstance(p, ChoiceParam):
            return self.decode[value]
        if self.round_to is not None:  # onto the step, at most the last point of the grid
            low, step = self.round_to
            index = min(round((value - low) / step), int((p.high - low) / step + 1e-9))  # type: ignore[union-attr]
            value = round(low + index * step, 12) if isinstance(p, FloatParam) else int(low + index * step)
        if isinstance(p, FloatParam):
            value = float(value)
        elif isinstance(p, IntParam):
            value = int(round(value))
        # Ax's untransform (log scale) may land a hair outside the bounds
        return min(max(value, p.low), p.high)  # type: ignore[union-attr]

    def to_ax(self, value: Any) -> Any:
        p = self.param
        if isinstance(p, ChoiceParam):
            for ours, theirs in self.encode:  # same type first: True must not match 1
                if type(ours) is type(value) and ours == value:
                    return theirs
            for ours, theirs in self.encode:
                if ours == value:
                    return theirs
            raise SearchError(f"{p.name}: {value!r} is not one of {list(p.values)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SearchError(f"{p.name}: {value!r} is not a number")
        if isinstance(p, IntParam):
            if float(value) != int(value):
                raise SearchError(f"{p.name}: {value!r} is not a whole number")
            return int(value)
        return float(value)


class _AxSpace:
    """The study's searched parameters as Ax sees them, and whole parameter sets translated
    both ways. Fixed parameters never reach Ax: they are added back on the way out."""

    def __init__(self, searched: tuple[Param, ...]) -> None:
        self.params = [_AxParam(p) for p in searched]
        self.by_name = {p.name: p for p in self.params}
        sizes = [p.size for p in self.params]
        # How many distinct points Ax can propose; None: a continuum.
        self.size = math.prod(sizes) if None not in sizes else None  # type: ignore[arg-type]

    def configs(self) -> list[Any]:
        return [p.config for p in self.params]

    def continuous(self) -> bool:
        """Every parameter is a continuous range in Ax (no int, no choice)."""
        return all(p.size is None and isinstance(p.param, FloatParam) for p in self.params)

    def unordered_choice_sizes(self) -> list[int]:
        """How many values each unordered choice of 3 or more values has (what Ax one-hot
        encodes; a two-valued choice is one 0/1 input either way)."""
        return [len(p.param.values) for p in self.params
                if isinstance(p.param, ChoiceParam) and not p.param.ordered and len(p.param.values) > 2]

    def to_ax(self, full: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full, validated parameters as Ax's parameterisation."""
        return {p.name: p.to_ax(full[p.name]) for p in self.params}

    def from_ax(self, spec: StudySpec, ax_params: Mapping[str, Any]) -> dict[str, Any]:
        """Ax's parameterisation as the trial's full parameters, in the study's order."""
        values = {name: self.by_name[name].from_ax(v) for name, v in ax_params.items()
                  if name in self.by_name}
        values.update(spec.fixed_values())
        return {p.name: values[p.name] for p in spec.params}


def _ax_objective(spec: StudySpec) -> str:
    """The study's objectives in Ax's syntax: "-loss, accuracy" (a minus to minimise)."""
    return ", ".join(("-" if o.minimize else "") + o.metric for o in spec.objectives)


def _new_ax_client(spec: StudySpec, space: _AxSpace) -> Any:
    """An ax.Client set up for the study: its experiment, objectives and generation
    strategy (early stopping is attached separately, as a restored client needs it too)."""
    ax = _ax()
    client = ax.Client(random_seed=spec.seed)
    try:
        client.configure_experiment(
            parameters=space.configs(),
            parameter_constraints=list(spec.param_constraints) or None,
            name=spec.name,
        )
        client.configure_optimization(
            objective=_ax_objective(spec),
            outcome_constraints=list(spec.constraints) or None,
        )
    except (ax.AxError, ValueError, TypeError) as exc:
        raise SearchError(f"Ax cannot take this study: {_one_line(exc)}") from None
    if spec.algorithm == "sobol":
        # Ax's "random_search" strategy is one Sobol node with no way out: no model.
        client.configure_generation_strategy(
            method="random_search", initialization_random_seed=spec.seed,
            initialize_with_center=False)
    else:
        client.set_generation_strategy(generation_strategy(
            spec.seed, space.unordered_choice_sizes(), continuous=space.continuous()))
    return client


def _attach_early_stopping(client: Any, spec: StudySpec) -> None:
    """Give the early-stopping metric a direction and attach the strategy (it is not
    part of Ax's snapshot, so this runs after a restore too)."""
    es = spec.early_stop
    if es is None:
        return
    ax = _ax()
    metric = es.metric
    lower_is_better = True  # a metric that is neither objective nor constraint: a loss
    objective = next((o for o in spec.objectives if o.metric == metric), None)
    if objective is not None:
        lower_is_better = objective.minimize
    else:
        config = client._experiment.optimization_config
        for oc in getattr(config, "outcome_constraints", []) or []:
            if list(oc.metric_names) == [metric]:
                lower_is_better = oc.op == oc.op.__class__.LEQ
    if metric not in client._experiment.metrics:
        client.configure_tracking_metrics([metric])
    client.configure_metrics([ax.MapMetric(name=metric, lower_is_better=lower_is_better)])
    if es.rule == "percentile":  # trend and ASHA are hypd's own (hypd/trend.py, asha.py): Ax only learns the curves
        client.set_early_stopping_strategy(ax.PercentileEarlyStoppingStrategy(
            metric_signatures=[metric], min_progression=es.min_step))


def _ax_raw_data(client: Any, values: Mapping[str, float],
                 sems: Mapping[str, float] | None = None) -> dict[str, float | tuple[float, float]]:
    """The values Ax can use: metrics it knows, finite numbers; (mean, SEM) where a finite
    standard error is known (a trial's replicates), so Ax models the noise from it."""
    known = set(client._experiment.metrics)
    out: dict[str, float | tuple[float, float]] = {}
    for k, v in values.items():
        if k not in known or isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            sem = (sems or {}).get(k)
            out[k] = (f, float(sem)) if sem is not None and math.isfinite(sem) else f
    return out


def _last_step(client: Any, trial: int) -> int | None:
    """The last step a trial reported at (where its final values belong), if any."""
    df = client._experiment.lookup_data(trial_indices=[trial]).full_df
    if "step" not in df.columns or df.empty:
        return None
    steps = df["step"].dropna()
    return None if steps.empty else int(steps.max())


def _observed_and_predicted(client: Any, ax_params: Mapping[str, Any],
                            index: int) -> tuple[dict[str, list[float | None]], bool, dict[str, float | None]]:
    """For `AxSuggester.best`: a trial's prediction ({metric: [mean, sem]}, the model's at
    its parameters where there is a model, else the observed values), whether the model
    made it, and the observed values."""
    ax = _ax()

    def num(x: Any) -> float | None:
        x = float(x)
        return x if math.isfinite(x) else None

    df = client._experiment.lookup_data(trial_indices=[index]).df
    observed = {str(r.metric_name): num(r.mean) for r in df.itertuples()}
    sems = {str(r.metric_name): num(r.sem) for r in df.itertuples()}
    try:
        (pred,) = client.predict([dict(ax_params)])
        prediction = {m: [num(mean), num(sem)] for m, (mean, sem) in pred.items()}
        predicted = True
    except (ax.AxError, ValueError, AssertionError, NotImplementedError):
        prediction = {m: [v, sems.get(m)] for m, v in observed.items()}
        predicted = False
    return prediction, predicted, observed


def _model_best_in_sample(client: Any) -> tuple[int, dict[str, Any]] | None:
    """For `AxSuggester.best`: the trial whose parameters the model predicts best (its
    posterior mean at each trial, constraints met), or None without a fitted model.

    Ax's own `get_best_parameterization` first cross-validates the model and, when the
    fit looks poor, falls back to the best observed value. Under noise the fit looks poor
    because of the noise (leave-one-out errors are mostly noise), and the best observed
    value is then the luckiest draw (tests/test_search_ax.py has such a study). The
    posterior mean is the model's answer either way: it interpolates noiseless results
    and averages noisy ones."""
    from ax.adapter.torch import TorchAdapter  # noqa: TID251

    adapter = client._generation_strategy.adapter
    if not isinstance(adapter, TorchAdapter):
        return None
    found = adapter.model_best_point()
    if found is None:
        return None
    arm, _ = found
    for index, trial in client._experiment.trials.items():
        if arm in trial.arms:
            return int(index), dict(arm.parameters)
    return None


def _client_snapshot(client: Any) -> dict[str, Any]:
    """Ax's JSON snapshot of the client: the experiment and the generation strategy."""
    # Ax's snapshot holds the experiment twice: at its top level and inside the
    # generation strategy. Encoding it is most of dump()'s time (a pandas frame per
    # trial's data), and on restore Ax's decoder takes the top-level one for the
    # strategy (Client._from_json_snapshot passes it), so leave the inner one out.
    gs = client._maybe_generation_strategy
    saved = gs._experiment if gs is not None else None
    try:
        if gs is not None:
            gs._experiment = None
        return client._to_json_snapshot()
    finally:
        if gs is not None:
            gs._experiment = saved


def _client_from_state(state: Mapping[str, Any], space: _AxSpace) -> Any:
    """The ax.Client of a stored `AxSuggester.dump()`, checked to search the same
    parameters as the study."""
    ax = _ax()
    if not isinstance(state, Mapping) or state.get("format") != "ax-client-snapshot" \
            or not isinstance(state.get("ax"), dict):
        algorithm = state.get("algorithm") if isinstance(state, Mapping) else None
        raise SearchError(f"the stored search state is not an Ax snapshot (algorithm {algorithm!r})")
    snapshot = state["ax"]  # consumed: Ax's decoder pops keys off it
    try:
        client = ax.Client._from_json_snapshot(snapshot=snapshot)
    except Exception as exc:  # any decoding failure: a bad state
        raise SearchError(f"cannot restore the Ax state: {_one_line(exc)}") from None
    stored = set(client._experiment.search_space.parameters)
    if stored != set(space.by_name):
        raise SearchError(
            f"the stored Ax state searches {sorted(stored)}, the study {sorted(space.by_name)}; "
            "the study's parameters changed: start a new study")
    return client


WITHDRAWN = "withdrawn: asked again with more data before it ran"


class AxSuggester(Suggester):
    """Ax (1.x, `ax.Client`): "ax" is hypd's generation strategy (hypd/axstrategy.py: the
    centre of the space and Sobol points, or hypd's own design where a choice needs it, then
    Bayesian optimisation with a GP, "MBM"); "sobol" stays on scrambled Sobol points for
    good (no model).

    Trial numbers are Ax's trial indices. All trials Ax creates, hand-given ones included,
    count against `max_trials`, but those withdrawn (`withdraw`).

    - Fixed parameters are not given to Ax; they are added back to every trial's params.
    - A stepped range becomes an ordered choice in Ax (up to 1000 points; beyond that it
      stays a range and the value is rounded onto the step). Choice values of mixed kinds
      travel as JSON text and come back as the original values.
    - `complete` passes Ax the values of the metrics it knows (objectives, the metrics named
      in outcome constraints, the early-stopping metric); others are ignored. If an
      objective's value is missing or not finite (NaN, inf), the trial cannot be completed
      in Ax and is marked FAILED instead (Ax then avoids that region).
    - `early_stop` rule "percentile" uses Ax's PercentileEarlyStoppingStrategy on `early_stop.metric` (its
      defaults: a running trial whose latest value is in the worse half of the curves at
      that step is stopped, once at least 5 trials have COMPLETED with curve data and the
      trial has reached `min_step`). The trials it returns are already marked
      EARLY_STOPPED in Ax, and the data they reported stays in the model. Later calls of
      `complete`, `fail` or `abandon` for such a trial are accepted: `complete` adds its
      values, the others leave it EARLY_STOPPED.
    - With `early_stop` rule "trend" (the default) or "asha", hypd's own rule
      (hypd/trend.py, hypd/asha.py) decides; the curves
      still reach Ax, and `stopped` marks a trial it stopped EARLY_STOPPED.
    - `complete`, `fail`, `abandon` on a trial that has already ended are ignored.

    Not thread-safe as such (Ax's Client is not): every public method takes an internal
    lock, so overlapping calls from two threads wait for each other rather than corrupt
    the state; the daemon should still make one call at a time per study. Note that Ax
    re-seeds the global torch/numpy RNGs around each `ask` when the study has a seed.

    Running trials' intermediate reports are part of Ax's data: the model fits each trial's
    latest reported value (Ax's default for curves) until its final one arrives.

    In a finite space (every parameter a choice, an int, or a stepped float) `ask` never
    asks Ax for more points than are left unproposed (ignoring parameter constraints), so
    it ends with a short batch and then none, the space covered.

    Cost (2 CPU cores, CPU torch, ask(4) on a 6-d space): `ask` is milliseconds in the
    Sobol phase, then a GP fit plus the acquisition each call: ~1.5-4 s with 30 completed
    trials, ~1.6-5 s at 100, ~2-6 s at 200 (idle vs busy machine); choice parameters and
    linear parameter constraints make it several times slower (up to tens of seconds).
    `best` refits and cross-validates: ~0.5-2 s (more with several objectives). `dump()` is the whole Ax experiment and generation strategy as JSON, about
    7 kB per trial, and takes ~0.5 s per 100 trials (most of it Ax encoding its data).
    The first AxSuggester in a process pays for importing Ax and torch: ~5 s.
    """

    adaptive = True

    def __init__(self, spec: StudySpec) -> None:
        import threading

        self._lock = threading.Lock()
        super().__init__(spec)
        self._space = _AxSpace(spec.searched)
        self._objective_metrics = [o.metric for o in spec.objectives]
        self._client = _new_ax_client(spec, self._space)
        _attach_early_stopping(self._client, spec)
        self._spec_applied = True
        _quiet_ax_loggers()

    # -- set-up

    @property
    def spec(self) -> StudySpec:
        return self._spec

    @spec.setter
    def spec(self, spec: StudySpec) -> None:
        # The daemon swaps in an edited study file (same space) by assigning `spec`, from
        # the event loop and maybe while a call runs: the seed and the early-stopping
        # settings are applied to Ax at the start of the next call, under the lock.
        self._spec = spec
        self._spec_applied = False

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        with self._lock:
            if not self._spec_applied:
                self._client._random_seed = self._spec.seed
                _attach_early_stopping(self._client, self._spec)
                self._spec_applied = True
            yield

    def _objective_string(self) -> str:
        return _ax_objective(self.spec)

    # -- helpers

    def _full_params(self, ax_params: Mapping[str, Any]) -> dict[str, Any]:
        return self._space.from_ax(self.spec, ax_params)

    def _trial(self, trial: int) -> Any:
        try:
            return self._client._experiment.trials[trial]
        except KeyError:
            raise SearchError(f"Ax has no trial {trial}") from None

    def _ended(self, status: Any) -> bool:
        return bool(status.is_terminal)

    # -- the interface

    def ask(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        with self._session():
            ax = _ax()
            experiment = self._client._experiment
            budget = self.spec.max_trials if self.spec.max_trials is not None else 1 << 62
            withdrawn = sum(1 for t in experiment.trials.values() if t.status_reason == WITHDRAWN)
            k = min(n, budget - len(experiment.trials) + withdrawn)
            if self._space.size is not None:
                # A finite space: never ask Ax for more new points than are left (it
                # deduplicates against every arm but those of FAILED trials). Asked for
                # more, it searches for long and then gives nothing at all.
                k = min(k, self._space.size - len(experiment.arms_by_signature_for_deduplication))
            if k <= 0:
                return []
            designed = self._initial_design(k)
            if len(designed) == k:
                return designed
            try:
                trials = self._client.get_next_trials(max_trials=k - len(designed))
            except ax.no_trials_now:
                return designed
            finally:
                _quiet_ax_loggers()
            return designed + [(int(i), self._full_params(p)) for i, p in sorted(trials.items())]

    def _initial_design(self, k: int) -> list[tuple[int, dict[str, Any]]]:
        """(algorithm "ax", a space with an unordered choice of 3 or more values) Up to k
        of the study's first trials, from hypd's Latin hypercube (hypd/axstrategy.py says
        why), attached to Ax; none once as many trials as the design has were proposed
        (abandoned ones aside)."""
        sizes = self._space.unordered_choice_sizes()
        if self.spec.algorithm != "ax" or not sizes:
            return []
        experiment = self._client._experiment
        issued = sum(1 for t in experiment.trials.values() if not t.status.is_abandoned)
        size = initial_trials(sizes)
        if issued >= size:
            return []
        seen = {json.dumps(arm.parameters, sort_keys=True) for arm in experiment.arms_by_name.values()}
        out = []
        for point in initial_design(self.spec.searched, size, _stable_seed(self.spec))[issued:issued + k]:
            ax_params = self._space.to_ax(point)
            if json.dumps(ax_params, sort_keys=True) in seen:  # a small finite space
                continue
            if not experiment.search_space.check_membership(ax_params):
                continue  # outside a parameter constraint: Ax's Sobol, which keeps to them, fills in
            out.append((int(self._client.attach_trial(parameters=ax_params)), self._full_params(ax_params)))
        return out

    def attach(self, params: Mapping[str, Any]) -> int:
        with self._session():
            ax = _ax()
            try:
                full = complete_params(self.spec, params)
            except ValueError as exc:
                raise SearchError(str(exc)) from None
            ax_params = self._space.to_ax(full)
            try:
                return int(self._client.attach_trial(parameters=ax_params))
            except (ax.AxError, ValueError) as exc:
                raise SearchError(_one_line(exc)) from None

    def report(self, trial: int, step: int, values: Mapping[str, float]) -> None:
        with self._session():
            status = self._trial(trial).status
            if not (status.is_running or status.is_early_stopped):
                return
            data = _ax_raw_data(self._client, values)
            if data:
                self._client.attach_data(trial_index=trial, raw_data=data, progression=int(step))

    def complete(self, trial: int, values: Mapping[str, float], sems: Mapping[str, float] | None = None) -> None:
        with self._session():
            status = self._trial(trial).status
            data = _ax_raw_data(self._client, values, sems)
            if status.is_early_stopped:
                if data:  # its final values, where its curve ended
                    self._client.attach_data(trial_index=trial, raw_data=data,
                                             progression=_last_step(self._client, trial))
                return
            if self._ended(status):
                return
            missing = [m for m in self._objective_metrics if m not in data]
            if missing:
                self._client.mark_trial_failed(
                    trial, failed_reason=f"no finite value for objective {', '.join(missing)}")
                return
            # With intermediate reports, the final values sit at the last reported step, so
            # the curve and the final result stay one series (the model uses its latest row).
            self._client.complete_trial(trial_index=trial, raw_data=data,
                                        progression=_last_step(self._client, trial))

    def fail(self, trial: int) -> None:
        with self._session():
            if not self._ended(self._trial(trial).status):
                self._client.mark_trial_failed(trial)

    def abandon(self, trial: int) -> None:
        with self._session():
            if not self._ended(self._trial(trial).status):
                self._client.mark_trial_abandoned(trial)

    def withdraw(self, trial: int) -> None:
        # FAILED, not ABANDONED: Ax keeps an abandoned trial's point pending for good (the
        # acquisition would keep away from it), while a failed one without data is out of
        # the model, the initialisation count and the deduplication.
        with self._session():
            if not self._ended(self._trial(trial).status):
                self._client.mark_trial_failed(trial, failed_reason=WITHDRAWN)

    def early_stop(self, running: list[int]) -> list[int]:
        if self.spec.early_stop is None or self.spec.early_stop.rule != "percentile":
            return []
        with self._session():
            trials = self._client._experiment.trials
            candidates = [t for t in running if t in trials and trials[t].status.is_running]
            stop = [t for t in candidates if self._client.should_stop_trial_early(trial_index=t)]
            for t in stop:
                self._client.mark_trial_early_stopped(trial_index=t)
            return stop

    def stopped(self, trial: int) -> None:
        with self._session():
            if self._trial(trial).status.is_running:
                self._client.mark_trial_early_stopped(trial_index=trial)

    def best(self) -> dict[str, Any] | None:
        """{"trial", "params", "prediction": {metric: [mean, sem]}, "predicted", "observed"}
        for one objective; {"pareto": [such, ...]} for several. "prediction" is the model's
        (predicted = true) when there is a fitted model, else the observed values (sem None
        when unknown). None until some trial has a value for every objective."""
        with self._session():
            ax = _ax()
            client = self._client
            df = client._experiment.lookup_data().df
            if df.empty or not set(self._objective_metrics) <= set(df["metric_name"]):
                return None
            try:
                # The model as of the last ask() has not seen the results since: refit on
                # the current data (Ax skips the fit when the data has not changed).
                client._generation_strategy.fit(experiment=client._experiment)
            except (ax.AxError, ValueError):
                pass
            try:
                if len(self._objective_metrics) > 1:
                    frontier = client.get_pareto_frontier(use_model_predictions=True)
                    return {"pareto": [self._best_entry(p, i) for p, _, i, _ in frontier]}
                found = _model_best_in_sample(client)
                if found is None:  # no model yet (initial trials): Ax's raw best
                    params, _, index, _ = client.get_best_parameterization(use_model_predictions=True)
                else:
                    index, params = found
            except (ax.AxError, ValueError, NotImplementedError):
                return None
            finally:
                _quiet_ax_loggers()
            return self._best_entry(params, index)

    def _best_entry(self, ax_params: Mapping[str, Any], index: int) -> dict[str, Any]:
        prediction, predicted, observed = _observed_and_predicted(self._client, ax_params, index)
        return {"trial": int(index), "params": self._full_params(ax_params),
                "prediction": prediction, "predicted": predicted, "observed": observed}

    # -- state

    def dump(self) -> str:
        with self._session():
            return json.dumps({"algorithm": self.spec.algorithm, "format": "ax-client-snapshot",
                               "ax": _client_snapshot(self._client)})

    def _restore(self, state: Mapping[str, Any]) -> None:
        client = _client_from_state(state, self._space)
        with self._lock:
            self._client = client
            self._spec_applied = False  # the seed and early stopping are not in the snapshot
        _quiet_ax_loggers()


def grid_size(spec: StudySpec) -> int:
    return math.prod(len(a) for a in grid_axes(spec.params, spec.max_trials))


def make_suggester(spec: StudySpec) -> Suggester:
    """A fresh suggester for the study's algorithm.

    "ax" and "sobol" give an `AxSuggester` (Ax is imported then, not before). A study
    whose every parameter is fixed has nothing to search: it gets a `RandomSearch`, which
    proposes that one configuration each time (Ax needs a parameter to vary)."""
    if spec.algorithm == "grid":
        return GridSearch(spec)
    if spec.algorithm == "random":
        return RandomSearch(spec)
    if spec.algorithm in ("ax", "sobol"):
        if not spec.searched:
            return RandomSearch(spec)
        return AxSuggester(spec)
    raise SearchError(f"algorithm {spec.algorithm!r} is not available in this build of hypd")


def load_suggester(spec: StudySpec, state: str | None) -> Suggester:
    """The study's suggester, restored from a `dump()` (None: a fresh one)."""
    suggester = make_suggester(spec)
    if state:
        suggester._restore(json.loads(state))
    return suggester


__all__ = [
    "AxSuggester", "GridSearch", "RandomSearch", "SearchError", "Suggester", "grid_size",
    "load_suggester", "make_suggester", "sample_value",
]
