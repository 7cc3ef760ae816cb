"""The study spec: parsing and validating a study file, rendering a trial's commands.

Pure: no I/O beyond reading the file in `load_study`. Every refusal is a `StudyError`
whose message is one line naming the file, the key and the fix.

Caps (so that no study file can make the daemon hang, fill its memory or start runs that
cannot work); past one, the refusal names the key, the cap and the way out:

- MAX_STUDY_BYTES: the study file's size.
- MAX_TRIALS: `max_trials`, the points of a grid (counted before any is made), and
  trials x `replicates`.
- MAX_FORMAT_WIDTH: a width or precision in a placeholder's format spec (`{x:>8.3f}`).
- MAX_COMMAND_BYTES: a stage's command line once filled in (counted with each
  placeholder's longest value), and `[run] env` in all (Linux refuses a longer argument).
- MAX_INT: the bounds of an int range (beyond, a float holds it no longer exactly).
- MAX_SEED: `seed` (the searches' random generators take 32 bits).
"""

from __future__ import annotations

import math
import re
import shlex
import string
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from hypd.ahead import ASK_AHEAD
from hypd.display import trial_no
from hypd.scheduler import HostChoice, label_list

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ALGORITHMS = ("ax", "sobol", "random", "grid")
DEFAULT_ALGORITHM = "ax"
DEFAULT_MAX_TRIALS = 20
DEFAULT_MAX_FAILURES = 5  # runs failed in a row that pause a study
GOALS = ("minimize", "maximize")
# Placeholders every command may use besides the study's parameters.
BUILTIN_PLACEHOLDERS = ("run_dir", "run", "run_no", "trial", "replicate", "study", "stage", "prepare_dir")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # \Z: no trailing newline slips past

MAX_STUDY_BYTES = 256 * 1024
MAX_TRIALS = 10_000
MAX_FORMAT_WIDTH = 1000
MAX_COMMAND_BYTES = 64 * 1024
MAX_INT = 1 << 53
MAX_SEED = (1 << 32) - 1


class StudyError(ValueError):
    """A study file that cannot be accepted; str() is one line: file: key: what and fix."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        text = f"{source}: {key}: {message}" if key else f"{source}: {message}"
        super().__init__("".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                                 for c in text))


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None  # makes the range discrete (and griddable)


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class ChoiceParam:
    name: str
    values: tuple[Any, ...]
    ordered: bool = False


@dataclass(frozen=True)
class FixedParam:
    name: str
    value: Any


Param = Union[FloatParam, IntParam, ChoiceParam, FixedParam]


@dataclass(frozen=True)
class Objective:
    metric: str
    goal: str = "minimize"  # or "maximize"
    use: str = "last"  # "last" reported value is the result, or the "best" one

    @property
    def minimize(self) -> bool:
        return self.goal == "minimize"

    def better(self, a: float, b: float) -> bool:
        """True when a is strictly better than b under this objective."""
        return a < b if self.minimize else a > b


@dataclass(frozen=True)
class Stage:
    name: str
    command: str


@dataclass(frozen=True)
class EarlyStop:
    """`early_stop` in [study]. rule "trend" (the default): hypd's rule over the reports
    (hypd/trend.py), by rank at each step with a guard for runs still falling fast;
    rule "asha": asynchronous successive halving over the reports (hypd/asha.py), with
    rungs at min_step * eta^k below max_step; rule "percentile": Ax's percentile rule
    (the search judges; algorithm "ax" or "sobol" only)."""

    metric: str
    min_step: int = 0
    rule: str = "trend"  # or "asha", "percentile"
    max_step: int | None = None  # asha only
    eta: int = 3  # asha only: 1/eta of the runs at a rung go on
    guard: bool = True  # asha only: spare a run whose trend can still reach the kept runs
    minimize: bool = True  # the metric's direction: the objective's, else lower is better


@dataclass(frozen=True)
class Prepare:
    """[prepare]: a command run once per host (in the runs' workdir and shell) before the
    study's runs there, again only when it or its files change."""

    command: str
    files: tuple[str, ...] = ()  # relative to workdir: their content counts in what "changed" means


@dataclass(frozen=True)
class StudySpec:
    name: str
    objectives: tuple[Objective, ...]
    algorithm: str
    max_trials: int | None  # None only for grid: the grid's size
    parallel: int
    gpus: int  # per run; 0 = a CPU slot
    timeout: float | None  # seconds per run
    retries: int
    priority: int
    seed: int | None
    params: tuple[Param, ...]
    workdir: str  # absolute
    env: Mapping[str, str]
    stages: tuple[Stage, ...]
    metrics_regex: Mapping[str, str]
    output_dir: str | None  # absolute; None: <host root>/studies/<name>
    files: tuple[str, ...] = ()  # relative to workdir: copied to a remote host before its first run
    constraints: tuple[str, ...] = ()
    param_constraints: tuple[str, ...] = ()
    early_stop: EarlyStop | None = None
    gpu_mem_mib: int = 0  # GPU memory a run needs on each of its GPUs; 0: it takes whole GPUs
    keepalive: float | None = None  # seconds a run may go without output before it is ended as hung
    prepare: Prepare | None = None  # run once per host before the study's runs there
    replicates: int = 1  # runs of each trial (seeds); the trial's result is their mean
    max_failures: int = DEFAULT_MAX_FAILURES  # runs failed in a row that pause the study; 0: never
    ask_ahead: int = ASK_AHEAD  # adaptive searches: trials kept asked ahead (hypd/ahead.py); 0: none
    hosts: HostChoice = HostChoice()  # where its runs may go; empty: any host
    fetch: tuple[str, ...] = ()  # globs in a run's folder copied back from its host when it ends
    source: str = "<study>"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def objective(self) -> Objective:
        return self.objectives[0]

    @property
    def searched(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not isinstance(p, FixedParam))

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def fixed_values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.params if isinstance(p, FixedParam)}


# ---------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|d|h|m|s)")
_DURATION_HINT = "write e.g. '90s', '10m', '1h30m'"
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: Any) -> float:
    """'10m', '1h30m', '90s', '2.5h', or a number of seconds -> seconds. ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} ({_DURATION_HINT})")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"duration must be positive, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} ({_DURATION_HINT})")
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError(f"empty duration ({_DURATION_HINT})")
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text):
            raise ValueError(f"not a duration: {value!r} (write e.g. '90s', '10m', '1h30m')") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(GiB|GB|G|MiB|MB|M|TiB|TB|T)?\s*$", re.IGNORECASE)
_MEMORY_MIB = {"t": 1024 * 1024, "g": 1024, "m": 1}


def parse_memory_mib(value: Any) -> int:
    """'20GiB', '20G', '512MiB', or a number of MiB -> MiB. ValueError if not."""
    if isinstance(value, bool):
        raise ValueError(f"not an amount of memory: {value!r} (write e.g. '20GiB' or '512MiB')")
    if isinstance(value, (int, float)):
        mib = float(value)
    else:
        m = _MEMORY_RE.match(str(value))
        if not m:
            raise ValueError(f"not an amount of memory: {value!r} (write e.g. '20GiB' or '512MiB')")
        mib = float(m.group(1)) * _MEMORY_MIB[(m.group(2) or "m")[0].lower()]
    if not math.isfinite(mib) or mib <= 0:
        raise ValueError(f"memory must be positive, got {value!r}")
    return int(math.ceil(mib))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if m:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    return f"{s}s"


# ---------------------------------------------------------------- parsing

_STUDY_KEYS = {
    "name", "objective", "algorithm", "max_trials", "parallel", "gpus", "timeout",
    "retries", "priority", "seed", "constraints", "param_constraints", "early_stop", "gpu_mem",
    "keepalive", "replicates", "max_failures", "hosts", "ask_ahead",
}
_RUN_KEYS = {"workdir", "env", "command", "stages", "output_dir", "files", "fetch"}
_METRICS_KEYS = {"regex"}
_TOP_KEYS = {"study", "params", "run", "metrics", "prepare"}
_PREPARE_KEYS = {"command", "files"}


class _Reader:
    """Typed look-ups in a study file's tables, each refusal a StudyError naming the file
    and the key. The section parsers of one file share its warnings list."""

    def __init__(self, source: str, warnings: list[str], capped: bool = True) -> None:
        self.source = source
        self.warnings = warnings
        self.capped = capped  # False: a stored study, loaded again, is held to no cap

    def fail(self, key: str, message: str) -> StudyError:
        return StudyError(self.source, key, message)

    def table(self, doc: Mapping[str, Any], key: str, required: bool) -> dict[str, Any]:
        value = doc.get(key)
        if value is None:
            if required:
                raise self.fail(f"[{key}]", f"missing table; add a [{key}] section")
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table ([{key}]), got {type(value).__name__}")
        return value

    def no_unknown(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(f"{where}.{key}" if where else key,
                                f"unknown key; known keys here: {known}")

    def integer(self, table: Mapping[str, Any], key: str, where: str, default: int | None,
                minimum: int) -> int | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}.{key}", f"must be a whole number, got {value!r}")
        if value < minimum:
            raise self.fail(f"{where}.{key}", f"must be at least {minimum}, got {value}")
        return value

    def string(self, table: Mapping[str, Any], key: str, where: str,
               default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, got {value!r}")
        return value


@dataclass(frozen=True)
class _StudySettings:
    """The [study] keys read before [params]. Its other keys (max_trials, constraints,
    early_stop) are read after the sections they depend on or follow, in the order that
    decides which of several mistakes in a file is the one reported."""

    name: str
    objectives: tuple[Objective, ...]
    algorithm: str
    parallel: int
    gpus: int
    gpu_mem_mib: int
    retries: int
    priority: int
    seed: int | None
    timeout: float | None
    keepalive: float | None
    replicates: int
    max_failures: int
    hosts: HostChoice
    ask_ahead: int


class _StudySectionParser(_Reader):
    """[study]: the name, objectives, algorithm, resources, and the search's options."""

    def settings(self, study: Mapping[str, Any], name_override: str | None = None) -> _StudySettings:
        """name_override: the name given with `hypd submit --as NAME`, in place of study.name."""
        name = study.get("name") if name_override is None else name_override
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 64:
            key = "study.name" if name_override is None else "--as"
            raise self.fail(key, f"missing or not a short name (up to 64 letters, digits, _ . -), got {name!r}"[:200])
        objectives = self.objectives(study.get("objective"))
        algorithm = study.get("algorithm", DEFAULT_ALGORITHM)
        if algorithm not in ALGORITHMS:
            raise self.fail("study.algorithm", f"unknown {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        parallel = self.integer(study, "parallel", "study", 1, 1)
        gpus = self.integer(study, "gpus", "study", 0, 0)
        gpu_mem = 0
        if "gpu_mem" in study:
            try:
                gpu_mem = parse_memory_mib(study["gpu_mem"])
            except ValueError as exc:
                raise self.fail("study.gpu_mem", str(exc)) from None
            if not gpus:
                raise self.fail("study.gpu_mem", "needs gpus = 1 or more; drop it for CPU runs")
        retries = self.integer(study, "retries", "study", 0, 0)
        priority = self.integer(study, "priority", "study", 1, 1)
        max_failures = self.integer(study, "max_failures", "study", DEFAULT_MAX_FAILURES, 0)
        seed = study.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or self.capped and not 0 <= seed <= MAX_SEED):
            raise self.fail("study.seed", f"must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
        replicates = self.integer(study, "replicates", "study", 1, 1)
        return _StudySettings(
            name=name, objectives=objectives, algorithm=algorithm, parallel=parallel or 1,
            gpus=gpus or 0, gpu_mem_mib=gpu_mem, retries=retries or 0, priority=priority or 1,
            seed=seed, timeout=self.duration(study, "timeout"), keepalive=self.duration(study, "keepalive"),
            replicates=replicates or 1, max_failures=max_failures or 0, hosts=self.host_choice(study),
            ask_ahead=self.integer(study, "ask_ahead", "study", ASK_AHEAD, 0) or 0)

    def host_choice(self, study: Mapping[str, Any]) -> HostChoice:
        """`hosts = ["gpu1", "gpu2"]` (by name) or `hosts = { labels = ["a100"] }` (hosts
        carrying every label; `names` may narrow it further)."""
        raw = study.get("hosts")
        if raw is None:
            return HostChoice()
        example = 'e.g. hosts = ["gpu1", "gpu2"] or hosts = { labels = ["a100"] }'
        if isinstance(raw, dict):
            self.no_unknown(raw, {"names", "labels"}, "study.hosts")
            names, labels = label_list(raw.get("names", [])), label_list(raw.get("labels", []))
        else:
            names, labels = label_list(raw), ()
        if names is None or labels is None:
            raise self.fail("study.hosts", f"must list host names or labels (letters, digits, _ . -), {example}")
        if not names and not labels:
            raise self.fail("study.hosts", f"empty: name at least one host or label (or drop it for any host), {example}")
        return HostChoice(names, labels)

    def duration(self, study: Mapping[str, Any], key: str) -> float | None:
        if key not in study:
            return None
        try:
            return parse_duration(study[key])
        except ValueError as exc:
            raise self.fail(f"study.{key}", str(exc)) from None

    def objectives(self, raw: Any) -> tuple[Objective, ...]:
        key = "study.objective"
        if raw is None:
            raise self.fail(key, 'missing; add objective = { metric = "loss", goal = "minimize" }')
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise self.fail(key, "empty list; name at least one metric")
        out = []
        for item in items:
            if isinstance(item, str):
                item = {"metric": item}
            if not isinstance(item, dict):
                raise self.fail(key, 'must be { metric = "loss", goal = "minimize" }')
            self.no_unknown(item, {"metric", "goal", "use"}, key)
            metric = item.get("metric")
            if not isinstance(metric, str) or not metric:
                raise self.fail(f"{key}.metric", 'missing; name the metric, e.g. metric = "loss"')
            goal = item.get("goal", "minimize")
            if goal not in GOALS:
                raise self.fail(f"{key}.goal", f'must be "minimize" or "maximize", got {goal!r}')
            use = item.get("use", "last")
            if use not in ("last", "best"):
                raise self.fail(f"{key}.use", f'must be "last" or "best", got {use!r}')
            out.append(Objective(metric, goal, use))
        names = [o.metric for o in out]
        if len(set(names)) != len(names):
            raise self.fail(key, "the same metric is named twice")
        return tuple(out)

    def early_stop(self, study: Mapping[str, Any], objectives: tuple[Objective, ...]) -> EarlyStop | None:
        if "early_stop" not in study:
            return None
        es = study["early_stop"]
        where = "study.early_stop"
        if not isinstance(es, dict):
            raise self.fail(where, 'must be { metric = "loss", min_step = 3 } or '
                                   '{ rule = "asha", min_step = 1, max_step = 81, eta = 3 }')
        rule = es.get("rule", "trend")
        if rule not in ("trend", "asha", "percentile"):
            raise self.fail(f"{where}.rule", f'must be "trend", "asha" or "percentile", got {rule!r}')
        known = {"metric", "min_step", "rule"} | ({"max_step", "eta", "guard"} if rule == "asha" else set())
        self.no_unknown(es, known, where)
        metric = es.get("metric", objectives[0].metric)
        if not isinstance(metric, str):
            raise self.fail(f"{where}.metric", "must be a metric name")
        minimize = next((o.minimize for o in objectives if o.metric == metric), True)
        if rule != "asha":
            min_step = self.integer(es, "min_step", where, 0, 0)
            return EarlyStop(metric, min_step or 0, rule=rule, minimize=minimize)
        if "min_step" not in es or "max_step" not in es:
            raise self.fail(where, 'rule "asha" needs min_step and max_step, e.g. '
                                   '{ rule = "asha", min_step = 1, max_step = 81, eta = 3 }')
        min_step = self.integer(es, "min_step", where, None, 1)
        max_step = self.integer(es, "max_step", where, None, 1)
        eta = self.integer(es, "eta", where, 3, 2)
        assert min_step is not None and max_step is not None and eta is not None
        if max_step <= min_step:
            raise self.fail(f"{where}.max_step", f"must be above min_step ({min_step}), got {max_step}")
        guard = es.get("guard", True)
        if not isinstance(guard, bool):
            raise self.fail(f"{where}.guard", f"must be true or false, got {guard!r}")
        return EarlyStop(metric, min_step, rule="asha", max_step=max_step, eta=eta, minimize=minimize, guard=guard)

    def string_list(self, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"study.{key}", 'must be a list of strings, e.g. ["x + y <= 1.0"]')
        return tuple(value)


class _ParamsParser(_Reader):
    """[params]: each parameter's space, and how a grid covers them."""

    def params(self, raw_params: Mapping[str, Any], algorithm: str) -> tuple[Param, ...]:
        params = tuple(self.param(n, s) for n, s in raw_params.items())
        if not any(not isinstance(p, FixedParam) for p in params) and algorithm != "grid":
            self.warnings.append("no parameter varies: every trial runs the same configuration")
        return params

    def number(self, spec: Mapping[str, Any], key: str, where: str, kind: type) -> Any:
        if key not in spec:
            raise self.fail(f"{where}.{key}", f"missing; give {key} = <number>")
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(f"{where}.{key}", f"must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"{where}.{key}", f"must be finite, got {value!r}")
        if kind is int and not isinstance(value, int) and not float(value).is_integer():
            raise self.fail(f"{where}.{key}", f"must be a whole number for an int range, got {value!r}")
        if kind is int and abs(value) > MAX_INT and self.capped:
            raise self.fail(f"{where}.{key}", f"{value} is beyond the cap of ±{MAX_INT} (2**53) for an int range; "
                                              'use a float range (type = "float"), or a smaller range')
        try:
            return kind(value)
        except OverflowError:
            raise self.fail(f"{where}.{key}", "too large for a float; give a smaller number") from None

    def param(self, name: str, spec: Any) -> Param:
        where = f"params.{name}"
        if not NAME_RE.match(name) or not name.isidentifier():
            raise self.fail(where, "parameter names must be identifiers (letters, digits, _)")
        if name in BUILTIN_PLACEHOLDERS:
            raise self.fail(where, f"'{name}' is a reserved placeholder; rename the parameter")
        if not isinstance(spec, dict):
            if isinstance(spec, (str, int, float, bool)):
                return FixedParam(name, spec)
            raise self.fail(where, "give a fixed value or a table such as "
                                   '{ type = "float", low = 0.0, high = 1.0 }')
        ptype = spec.get("type")
        if ptype is None:
            if "values" in spec:
                ptype = "choice"
            elif "value" in spec:
                ptype = "fixed"
            else:
                raise self.fail(f"{where}.type", 'missing; use "float", "int", "choice" or "fixed"')
        if ptype == "fixed":
            self.no_unknown(spec, {"type", "value"}, where)
            if "value" not in spec:
                raise self.fail(f"{where}.value", "missing; give value = ...")
            return FixedParam(name, spec["value"])
        if ptype == "choice":
            self.no_unknown(spec, {"type", "values", "ordered"}, where)
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise self.fail(f"{where}.values", 'must be a non-empty list, e.g. values = ["adam", "sgd"]')
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise self.fail(f"{where}.values", f"values must be strings, numbers or booleans, got {v!r}")
            if len({repr(v) for v in values}) != len(values):
                raise self.fail(f"{where}.values", "a value is listed twice")
            ordered = spec.get("ordered")
            if ordered is None:
                ordered = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            elif not isinstance(ordered, bool):
                raise self.fail(f"{where}.ordered", "must be true or false")
            if len(values) == 1:
                return FixedParam(name, values[0])
            return ChoiceParam(name, tuple(values), ordered)
        if ptype in ("float", "int"):
            self.no_unknown(spec, {"type", "low", "high", "log", "step"}, where)
            kind = float if ptype == "float" else int
            low = self.number(spec, "low", where, kind)
            high = self.number(spec, "high", where, kind)
            if low >= high:
                raise self.fail(where, f"low ({low}) must be below high ({high}); "
                                       "swap them, or use a fixed value")
            if not math.isfinite(high - low):
                raise self.fail(where, f"the range from {low} to {high} is too wide to sample (its width "
                                       "overflows a float); narrow it, or use log = true with low > 0")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise self.fail(f"{where}.log", "must be true or false")
            if log and low <= 0:
                raise self.fail(f"{where}.low", f"a log-scale range needs low > 0, got {low}")
            step = spec.get("step")
            if step is not None:
                if log:
                    raise self.fail(f"{where}.step", "step and log = true do not mix; drop one")
                step = self.number(spec, "step", where, kind)
                if step <= 0 or step > high - low:
                    raise self.fail(f"{where}.step", f"must be in (0, high - low], got {step}")
            if kind is int:
                return IntParam(name, low, high, log, step or 1)
            return FloatParam(name, low, high, log, step)
        raise self.fail(f"{where}.type", f'unknown type {ptype!r}; use "float", "int", "choice" or "fixed"')

    def grid_check(self, params: tuple[Param, ...], max_trials: int | None) -> None:
        continuous = [p for p in params if isinstance(p, FloatParam) and p.step is None]
        if continuous and max_trials is None:
            p = continuous[0]
            raise self.fail(f"params.{p.name}", "a grid cannot cover a continuous range; give step = ..., "
                                                "values = [...], or max_trials to size the grid")
        sizes = grid_axis_sizes(params, max_trials)  # counted: no point is made before the cap is checked
        size = math.prod(sizes)
        if size > MAX_TRIALS and self.capped:
            widest = params[sizes.index(max(sizes))]
            raise self.fail(f"params.{widest.name}", f"the grid has {_count(size)} points, over the cap of "
                                                     f"{MAX_TRIALS}; give {widest.name} a coarser step or fewer "
                                                     'values, or sample the space with algorithm = "random"')
        if continuous:
            names = ", ".join(p.name for p in continuous)
            self.warnings.append(f"grid: {sizes[params.index(continuous[0])]} points along the "
                                 f"continuous range(s) {names}, sized to max_trials = {max_trials}")
        if max_trials is not None and size > max_trials:
            self.warnings.append(f"grid has {size} points; max_trials = {max_trials} runs the first {max_trials}")


@dataclass(frozen=True)
class _RunSettings:
    """What [run] says: the stages' commands, where they run, and with what."""

    stages: tuple[Stage, ...]
    workdir: Path
    output_dir: str | None
    files: tuple[str, ...]
    env: dict[str, str]
    fetch: tuple[str, ...] = ()


class _RunParser(_Reader):
    """[run] and [metrics]: the commands (checked against the parameters they fill in),
    their folder, files and environment, and how metrics are read from their output."""

    def __init__(self, source: str, warnings: list[str], base_dir: Path, capped: bool) -> None:
        super().__init__(source, warnings, capped)
        self.base_dir = base_dir

    def run(self, run: Mapping[str, Any], params: tuple[Param, ...]) -> _RunSettings:
        self.no_unknown(run, _RUN_KEYS, "run")
        stages = self.stages(run)
        self.check_placeholders(stages, params)
        workdir_raw = self.string(run, "workdir", "run", ".")
        assert workdir_raw is not None
        workdir = (self.base_dir / Path(workdir_raw).expanduser()).resolve()
        output_raw = self.string(run, "output_dir", "run")
        output_dir = str((workdir / Path(output_raw).expanduser()).resolve()) if output_raw else None
        return _RunSettings(stages=stages, workdir=workdir, output_dir=output_dir,
                            files=self.workdir_files(run, "run", '["train.py", "data/"]'), env=self.env(run),
                            fetch=self.fetch(run))

    def workdir_files(self, table: Mapping[str, Any], where: str, example: str) -> tuple[str, ...]:
        """`files`: paths inside the workdir, relative to it."""
        raw = table.get("files", [])
        if not isinstance(raw, list) or not all(isinstance(f, str) and f for f in raw):
            raise self.fail(f"{where}.files", f"must be a list of paths relative to workdir, e.g. {example}")
        for f in raw:
            if Path(f).is_absolute() or ".." in Path(f).parts:
                raise self.fail(f"{where}.files", f"{f!r}: give paths inside workdir, relative to it")
        return tuple(raw)

    def prepare(self, table: Mapping[str, Any]) -> Prepare | None:
        if not table:
            return None
        self.no_unknown(table, _PREPARE_KEYS, "prepare")
        command = table.get("command")
        if not isinstance(command, str) or not command.strip():
            raise self.fail("prepare.command", 'missing; give the command, e.g. command = "python fetch_data.py"')
        return Prepare(command, self.workdir_files(table, "prepare", '["fetch_data.py"]'))

    def fetch(self, run: Mapping[str, Any]) -> tuple[str, ...]:
        """[run] fetch: globs relative to a run's folder on its host, copied back when it ends."""
        raw = run.get("fetch", [])
        if not isinstance(raw, list) or not all(isinstance(f, str) and f.strip() for f in raw):
            raise self.fail("run.fetch", 'must be a list of paths or globs in the run\'s folder, '
                                         'e.g. ["ckpt/best.pt", "*.json"]')
        for f in raw:
            if Path(f).is_absolute() or f.startswith("~") or ".." in Path(f).parts:
                raise self.fail("run.fetch", f"{f!r}: give paths inside the run's folder ({{run_dir}}), relative to it")
        return tuple(raw)

    def env(self, run: Mapping[str, Any]) -> dict[str, str]:
        env_raw = run.get("env", {})
        if not isinstance(env_raw, dict):
            raise self.fail("run.env", 'must be a table, e.g. env = { PYTHONUNBUFFERED = "1" }')
        env: dict[str, str] = {}
        for k, v in env_raw.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise self.fail(f"run.env.{k}", "not a valid environment variable name")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise self.fail(f"run.env.{k}", f"must be a string or number, got {v!r}")
            env[k] = str(v)
        size = sum(len(k) + len(v.encode()) + 2 for k, v in env.items())
        if size > MAX_COMMAND_BYTES and self.capped:
            raise self.fail("run.env", f"{size:,} bytes in all, over the cap of {MAX_COMMAND_BYTES:,}; pass long "
                                       "values in a file the command reads")
        return env

    def stages(self, run: Mapping[str, Any]) -> tuple[Stage, ...]:
        command, stages = run.get("command"), run.get("stages")
        if command is not None and stages is not None:
            raise self.fail("run", "give either command or [[run.stages]], not both")
        if command is not None:
            if not isinstance(command, str) or not command.strip():
                raise self.fail("run.command", "must be a non-empty string")
            return (Stage("main", command),)
        if stages is None:
            raise self.fail("run.command", 'missing; add command = "python train.py --lr {lr} --out {run_dir}"')
        if not isinstance(stages, list) or not stages:
            raise self.fail("run.stages", "must be a non-empty list of [[run.stages]] tables")
        out = []
        for i, stage in enumerate(stages):
            where = f"run.stages[{i}]"
            if not isinstance(stage, dict):
                raise self.fail(where, 'must be a table with name = "..." and command = "..."')
            self.no_unknown(stage, {"name", "command"}, where)
            name = stage.get("name", f"stage{i + 1}")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise self.fail(f"{where}.name", "must be a short name of letters, digits, _ . -")
            cmd = stage.get("command")
            if not isinstance(cmd, str) or not cmd.strip():
                raise self.fail(f"{where}.command", "missing; give the stage's command line")
            out.append(Stage(name, cmd))
        names = [s.name for s in out]
        if len(set(names)) != len(names):
            raise self.fail("run.stages", "two stages have the same name")
        return tuple(out)

    def check_placeholders(self, stages: tuple[Stage, ...], params: tuple[Param, ...]) -> None:
        known = {p.name for p in params} | set(BUILTIN_PLACEHOLDERS)
        for i, stage in enumerate(stages):
            where = "run.command" if stage.name == "main" and len(stages) == 1 else f"run.stages[{i}].command"
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(stage.command) if f is not None]
            except ValueError as exc:
                raise self.fail(where, f"bad placeholder syntax ({exc}); write {{{{ and }}}} for literal braces") from None
            for f in fields:
                base = re.split(r"[.\[!:]", f, maxsplit=1)[0]
                if base == "":
                    raise self.fail(where, "empty placeholder {}; name a parameter, e.g. {lr}")
                if base not in known:
                    raise self.fail(where, f"placeholder {{{base}}} has no parameter; add it under "
                                           f"[params] or fix the name (known: {', '.join(sorted(known))})")
            for quoted in _quoted_placeholders(stage.command):
                base = re.split(r"[.\[!:]", quoted, maxsplit=1)[0]
                if not _always_shell_safe(base, params):
                    raise self.fail(where, f"placeholder {{{base}}} is inside quotes but its values may need "
                                           "quoting; drop the quotes, hypd quotes every value itself")
            for _, f, spec, _ in string.Formatter().parse(stage.command):
                for digits in re.findall(r"\d+", spec or ""):
                    if self.capped and (len(digits.lstrip("0")) > 9 or int(digits) > MAX_FORMAT_WIDTH):
                        raise self.fail(where, f"placeholder {{{f}:{spec}}}"[:120] + f": width {digits[:30]} is over "
                                               f"the cap of {MAX_FORMAT_WIDTH}; give a smaller width or precision")
            samples = {"run_dir": "/run", "run": "study:0", "run_no": 0, "trial": 0, "replicate": 1, "prepare_dir": "/prepare", "study": "study",
                       "stage": stage.name}
            longest = _command_bound(stage.command, params)
            for p in params:
                for value in ([example_value(p)] if not isinstance(p, ChoiceParam) else p.values):
                    try:
                        rendered = render_stage(stage.command, {**samples, **{q.name: example_value(q) for q in params},
                                                                p.name: value})
                    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
                        raise self.fail(where, f"cannot fill a placeholder with {p.name} = {value!r} ({exc}); "
                                               "fix its format spec") from None
                    longest = max(longest, len(rendered.encode(errors="surrogatepass")))
            if longest > MAX_COMMAND_BYTES and self.capped:
                raise self.fail(where, f"up to {longest:,} bytes once filled in, over the cap of "
                                       f"{MAX_COMMAND_BYTES:,} for a command line; put the long part in a script "
                                       "(or a file the command reads) and run that")

    def check_metrics(self, wanted: Iterable[tuple[str, str, str]], metrics_regex: Mapping[str, str],
                      stages: tuple[Stage, ...]) -> None:
        """Each metric the study needs (key, role, metric: its objectives, the metrics its
        outcome constraints name, its early-stopping metric) is one the run can report: a
        METRICS line can name it, and where [metrics] regexes read an unmodified program's
        log, one of them reads it (with several stages, a later one may print it from a
        file the run wrote: a warning then)."""
        from hypd.metrics import is_metric_name  # (hypd.metrics imports this module)

        seen: set[str] = set()
        for key, role, metric in wanted:
            if metric in metrics_regex or metric in seen:
                continue
            seen.add(metric)
            if not is_metric_name(metric):
                raise self.fail(key, f"{metric!r}"[:80] + " cannot be named on a METRICS line "
                                "(letters, digits, _ . / -, up to 200, not starting with a digit) and no [metrics] "
                                "regex reads it; rename it, or add a regex for it under [metrics]")
            if metrics_regex:
                why = (f"{metric!r}: no [metrics] regex reads it (they read "
                       f"{', '.join(sorted(metrics_regex))})"[:300])
                if len(stages) == 1:
                    raise self.fail(key, f"{why}; name one of those as the {role}, or add "
                                         f"a regex for {metric} under [metrics] regex"[:400])
                self.warnings.append(f"{role} {why}: a stage must print METRICS: {metric}=..., or runs end "
                                     f"with no value for it")

    def metrics_regex(self, metrics: Mapping[str, Any]) -> dict[str, str]:
        self.no_unknown(metrics, _METRICS_KEYS, "metrics")
        regex_raw = metrics.get("regex", {})
        if not isinstance(regex_raw, dict):
            raise self.fail("metrics.regex", "must be a table of metric = 'regular expression'")
        metrics_regex: dict[str, str] = {}
        for k, pattern in regex_raw.items():
            if not isinstance(pattern, str):
                raise self.fail(f"metrics.regex.{k}", "must be a regular expression string")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise self.fail(f"metrics.regex.{k}", f"bad regular expression: {exc}") from None
            if compiled.groups < 1:
                raise self.fail(f"metrics.regex.{k}", "needs one capturing group around the number, "
                                                      "e.g. 'val_loss ([0-9.eE+-]+)'")
            metrics_regex[k] = pattern
        return metrics_regex


class _Parser(_Reader):
    """A whole study file: its sections, read in a fixed order (so of several mistakes the
    same one is always reported), into a StudySpec."""

    def __init__(self, source: str, base_dir: Path, name: str | None = None, capped: bool = True) -> None:
        super().__init__(source, [], capped)
        self.name = name
        self.study_parser = _StudySectionParser(source, self.warnings, capped)
        self.params_parser = _ParamsParser(source, self.warnings, capped)
        self.run_parser = _RunParser(source, self.warnings, base_dir, capped)

    def parse(self, doc: Mapping[str, Any]) -> StudySpec:
        self.no_unknown(doc, _TOP_KEYS, "")
        study = self.table(doc, "study", required=True)
        self.no_unknown(study, _STUDY_KEYS, "study")
        settings = self.study_parser.settings(study, self.name)
        params = self.params_parser.params(self.table(doc, "params", required=True), settings.algorithm)

        max_trials = self.integer(study, "max_trials", "study", None, 1)
        if max_trials is not None and max_trials > MAX_TRIALS and self.capped:
            raise self.fail("study.max_trials", f"{_count(max_trials)} trials, over the cap of {MAX_TRIALS} per "
                                                "study; split the search into studies of at most that many "
                                                "(hypd submit FILE --as NAME)")
        if settings.algorithm == "grid":
            self.params_parser.grid_check(params, max_trials)
        elif max_trials is None:
            max_trials = DEFAULT_MAX_TRIALS
        trials = min(max_trials or MAX_TRIALS, math.prod(grid_axis_sizes(params, max_trials))) \
            if settings.algorithm == "grid" else max_trials
        if trials * settings.replicates > MAX_TRIALS and self.capped:
            raise self.fail("study.replicates", f"{trials} trials x {_count(settings.replicates)} replicates: more runs "
                                                f"than the cap of {MAX_TRIALS} per study; give fewer replicates or "
                                                "trials, or split the search into studies (--as NAME)")

        run = self.run_parser.run(self.table(doc, "run", required=True), params)
        metrics_regex = self.run_parser.metrics_regex(self.table(doc, "metrics", required=False))
        prepare = self.run_parser.prepare(self.table(doc, "prepare", required=False))
        constraints = self.study_parser.string_list(study, "constraints")
        param_constraints = self.study_parser.string_list(study, "param_constraints")
        early_stop = self.study_parser.early_stop(study, settings.objectives)
        if self.capped:  # (a refusal at submit: a study stored before it still loads)
            self.run_parser.check_metrics(
                [*(("study.objective.metric", "objective", o.metric) for o in settings.objectives),
                 *(("study.constraints", "constraint's metric", m) for c in constraints for m in constraint_metrics(c)),
                 *([("study.early_stop.metric", "early_stop metric", early_stop.metric)] if early_stop else [])],
                metrics_regex, run.stages)
        if early_stop is not None and settings.replicates > 1:
            raise self.fail("study.early_stop", "cannot go with replicates (the search judges one run per trial); "
                                                "drop one of the two")
        if (self.capped and early_stop is not None and early_stop.rule == "percentile"  # (a study stored before loads)
                and settings.algorithm not in ("ax", "sobol")):
            raise self.fail("study.early_stop.rule", f'"percentile" is Ax\'s rule: it needs algorithm "ax" or '
                                                     f'"sobol", not {settings.algorithm!r}; hypd\'s "trend" (the '
                                                     'default) and "asha" work with any')

        return StudySpec(
            name=settings.name, objectives=settings.objectives, algorithm=settings.algorithm,
            max_trials=max_trials, parallel=settings.parallel, gpus=settings.gpus,
            timeout=settings.timeout, retries=settings.retries, priority=settings.priority,
            seed=settings.seed, params=params, workdir=str(run.workdir), env=run.env,
            stages=run.stages, metrics_regex=metrics_regex, output_dir=run.output_dir,
            files=run.files, constraints=constraints, param_constraints=param_constraints,
            early_stop=early_stop, gpu_mem_mib=settings.gpu_mem_mib,
            keepalive=settings.keepalive, replicates=settings.replicates,
            prepare=prepare, max_failures=settings.max_failures, ask_ahead=settings.ask_ahead,
            hosts=settings.hosts, fetch=run.fetch, source=self.source, warnings=tuple(self.warnings),
        )


def parse_study(text: str, source: str = "<study>", base_dir: str | Path | None = None,
                name: str | None = None, capped: bool = True) -> StudySpec:
    """Parse a study file's text. base_dir resolves a relative workdir (default: the file's
    folder); name, when given, stands for the file's study.name (`hypd submit --as NAME`).
    capped=False: the caps (MAX_*) and the objective's check are not applied, for a study
    stored before them that is loaded again (it was accepted then, and may have runs)."""
    if base_dir is None:
        base_dir = Path(source).parent if source != "<study>" else Path.cwd()
    if capped:
        check_size(len(text.encode("utf-8", errors="surrogatepass")), source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(source, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise StudyError(source, "", "not a study file: arrays or tables nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise StudyError(source, "", f"not valid TOML: {exc}") from None
    return _Parser(source, Path(base_dir), name, capped).parse(doc)


def with_max_trials(text: str, max_trials: int) -> str:
    """The study file's text with [study] max_trials set (the line replaced, or added under
    the [study] header), so the stored file says what the study now is (`hypd extend`).
    ValueError when the text cannot be edited so (the caller parses the result to check)."""
    lines = text.splitlines(keepends=True)
    section = ""
    header = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.split("#", 1)[0].strip()
            if section == "[study]":
                header = i
            continue
        if section == "[study]" and re.match(r"max_trials\s*=", stripped):
            indent = line[:len(line) - len(line.lstrip())]
            comment = re.search(r"\s+#.*$", line.rstrip("\r\n"))
            lines[i] = f"{indent}max_trials = {max_trials}{comment.group(0) if comment else ''}\n"
            return "".join(lines)
    if header is None:
        raise ValueError("no [study] header line to put max_trials under")
    lines.insert(header + 1, f"max_trials = {max_trials}\n")
    return "".join(lines)


def check_size(size: int, source: str) -> None:
    """A study file of `size` bytes is refused past MAX_STUDY_BYTES (before it is read whole,
    where the reader can tell the size first)."""
    if size > MAX_STUDY_BYTES:
        raise StudyError(source, "", f"{size:,} bytes, over the cap of {MAX_STUDY_BYTES:,} for a study file; "
                                     "move long values (commands, lists) into a script the study runs")


def load_study(path: str | Path) -> tuple[StudySpec, str]:
    """Read and parse a study file; returns the spec and the file's text."""
    p = Path(path)
    try:
        check_size(p.stat().st_size, str(path))
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StudyError(str(path), "", "not a UTF-8 text file") from None
    return parse_study(text, str(path), p.resolve().parent), text


# ---------------------------------------------------------------- grids

def grid_axes(params: tuple[Param, ...], max_trials: int | None) -> list[list[Any]]:
    """The points a grid takes along each parameter. A continuous range (a float with no
    step) gets as many evenly spaced points (log-spaced on a log scale) as let the whole
    grid fit in max_trials, and at least its two ends. (A parsed study's grid is within
    MAX_TRIALS points; `grid_axis_sizes` counts them without making them.)"""
    sizes = grid_axis_sizes(params, max_trials)
    return [_spaced(p, n) if isinstance(p, FloatParam) and p.step is None else _discrete_values(p)  # type: ignore[misc]
            for p, n in zip(params, sizes)]


def constraint_metrics(constraint: str) -> list[str]:
    """The metrics an outcome constraint names ("acc >= 0.9", "2*a + b <= 5"): its words
    that are not numbers, as Ax's parser reads them."""
    return re.findall(r"(?<![\w.])[A-Za-z_][\w.]*", constraint)


def grid_axis_sizes(params: tuple[Param, ...], max_trials: int | None) -> list[int]:
    """How many points a grid takes along each parameter (as `grid_axes` makes them)."""
    sizes = [axis_size(p) for p in params]
    continuous = [i for i, n in enumerate(sizes) if n is None]
    if continuous:
        if max_trials is None:
            raise ValueError("a grid over a continuous range needs max_trials or a step")
        fixed_size = math.prod(n for n in sizes if n is not None)
        per_range = max(2, int((max_trials / fixed_size) ** (1 / len(continuous)) + 1e-9))
        for i in continuous:
            sizes[i] = per_range
    return sizes  # type: ignore[return-value]


def axis_size(param: Param) -> int | None:
    """How many values a parameter takes on a grid; None for a continuous range."""
    if isinstance(param, FixedParam):
        return 1
    if isinstance(param, ChoiceParam):
        return len(param.values)
    if isinstance(param, IntParam):
        return (param.high - param.low) // (1 if param.log else param.step) + 1
    if param.step is None:
        return None
    steps = (param.high - param.low) / param.step + 1e-9
    return int(math.floor(steps)) + 1 if steps < 1e18 else 10**18  # (past 1e18: "more than any cap")


def _count(n: int) -> str:
    if n >= 10**18:
        return "more than 10**18"
    return f"{n:,}" if n < 10**15 else f"{float(n):.3g}"


def _discrete_values(param: Param) -> list[Any] | None:
    if isinstance(param, FixedParam):
        return [param.value]
    if isinstance(param, ChoiceParam):
        return list(param.values)
    if isinstance(param, IntParam):
        return list(range(param.low, param.high + 1, 1 if param.log else param.step))
    if param.step is None:
        return None
    return [round(param.low + i * param.step, 12) for i in range(axis_size(param) or 0)]


def _spaced(param: FloatParam, n: int) -> list[float]:
    inner = _spaced_raw(param, n)[1:-1]
    return [param.low, *(min(param.high, max(param.low, v)) for v in inner), param.high]


def _spaced_raw(param: FloatParam, n: int) -> list[float]:
    if param.log:
        ratio = param.high / param.low
        return [float(f"{param.low * ratio ** (i / (n - 1)):.6g}") for i in range(n)]
    return [float(f"{param.low + (param.high - param.low) * i / (n - 1):.6g}") for i in range(n)]


# ---------------------------------------------------------------- values

def coerce_value(param: Param, raw: str) -> Any:
    """A parameter value typed on a command line (`lr=0.01`) as the parameter's type;
    ValueError naming the parameter otherwise."""
    if isinstance(param, (FloatParam, IntParam)):
        kind = "a number" if isinstance(param, FloatParam) else "a whole number"
        try:
            return float(raw) if isinstance(param, FloatParam) else int(raw)
        except ValueError:
            raise ValueError(f"{param.name}: {raw!r} is not {kind} (the study's range is {param.low} to "
                             f"{param.high})") from None
    candidates = param.values if isinstance(param, ChoiceParam) else (param.value,)
    for v in candidates:
        if raw in (str(v), format_value(v)) or (isinstance(v, (int, float)) and not isinstance(v, bool) and _num_eq(raw, v)):
            return v
    if isinstance(param, ChoiceParam):
        raise ValueError(f"{param.name}: {raw!r} is not one of {list(param.values)}")
    raise ValueError(f"{param.name} is fixed at {param.value!r}")


def _num_eq(raw: str, v: float) -> bool:
    try:
        return float(raw) == float(v)
    except ValueError:
        return False


def check_value(param: Param, value: Any) -> None:
    """ValueError unless value lies in the parameter's space."""
    if isinstance(param, FixedParam):
        if value != param.value:
            raise ValueError(f"{param.name} is fixed at {param.value!r}")
    elif isinstance(param, ChoiceParam):
        if value not in param.values:
            raise ValueError(f"{param.name}: {value!r} is not one of {list(param.values)}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{param.name}: {value!r} is not a number")
        if isinstance(param, IntParam) and (not isinstance(value, int) or (value - param.low) % param.step):
            raise ValueError(f"{param.name}: {value!r} is not one of {param.low}, {param.low + param.step}, ..."
                             f" up to {param.high}")
        if not (param.low <= value <= param.high):
            raise ValueError(f"{param.name}: {value!r} is outside [{param.low}, {param.high}]")


def format_value(value: Any) -> str:
    """How a parameter value is written into a command and a folder name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return repr(value)  # keep the '.0': a float parameter stays a float for the program
        return f"{value:.6g}" if abs(value) >= 1e-4 else f"{value:.4g}"
    return str(value)


def complete_params(spec: StudySpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """All of a trial's parameters: fixed ones added, unknown names refused."""
    names = {p.name for p in spec.params}
    for k in given:
        if k not in names:
            raise ValueError(f"unknown parameter {k!r}; the study has {', '.join(sorted(names))}")
    values = dict(given)
    for p in spec.params:
        if isinstance(p, FixedParam):
            values.setdefault(p.name, p.value)
        if p.name not in values:
            raise ValueError(f"missing a value for parameter {p.name!r}")
        check_value(p, values[p.name])
    return {p.name: values[p.name] for p in spec.params}


def example_value(param: Param) -> Any:
    """A representative value for `hypd render`: the middle of a range, the middle choice."""
    if isinstance(param, FixedParam):
        return param.value
    if isinstance(param, ChoiceParam):
        return param.values[len(param.values) // 2]
    if param.log:
        mid = math.sqrt(param.low * param.high)
    else:
        mid = (param.low + param.high) / 2
    if isinstance(param, IntParam):
        return int(round(mid))
    if param.step:
        return param.low + round((mid - param.low) / param.step) * param.step
    short = float(f"{mid:.3g}")
    return short if param.low <= short <= param.high else mid


# ---------------------------------------------------------------- rendering

_UNSAFE_DIR_CHARS = re.compile(r"[^A-Za-z0-9_.+-]+")


def run_dir_name(run_no: int, params: Mapping[str, Any], spec: StudySpec) -> str:
    """A folder name a person can read: run number, then the varying parameters."""
    parts = [f"{run_no:04d}"]
    for p in spec.searched:
        if p.name in params:
            value = _UNSAFE_DIR_CHARS.sub("_", format_value(params[p.name]))[:24]
            parts.append(f"{p.name}={value}")
    return "_".join(parts)[:200]


def run_dir_path(root: str | Path, spec: StudySpec, run_no: int, params: Mapping[str, Any]) -> Path:
    """A run's folder ({run_dir}) under a host's root: the study's output_dir, else
    ROOT/studies/STUDY, then the run's folder name. With the daemon's home as the root,
    the run's local folder (where a remote run's artifacts are fetched to)."""
    study_dir = Path(spec.output_dir) if spec.output_dir else Path(root) / "studies" / spec.name
    return study_dir / run_dir_name(run_no, params, spec)


def render_stage(command: str, values: Mapping[str, Any]) -> str:
    """Fill a command template; every value is shell-quoted so it stays one argument."""
    out = []
    formatter = string.Formatter()
    for literal, field_name, format_spec, conversion in formatter.parse(command):
        out.append(literal)
        if field_name is None:
            continue
        value, _ = formatter.get_field(field_name, (), values)
        if conversion:
            value = formatter.convert_field(value, conversion)
        text = format(value, format_spec) if format_spec else format_value(value)
        out.append(shlex.quote(text))
    return "".join(out)


def render_commands(spec: StudySpec, params: Mapping[str, Any], *, run_dir: str,
                    run: str = "", run_no: int = 0, trial: int = 0, replicate: int = 1,
                    prepare_dir: str = "") -> list[tuple[str, str]]:
    """The shell command line of each stage, in order, for one run of a trial (`trial`: as
    stored; `{trial}` is its number as shown, from 1)."""
    values = dict(params)
    values.update(run_dir=run_dir, run=run or f"{spec.name}:{run_no}", run_no=run_no,
                  trial=trial_no(trial), replicate=replicate, study=spec.name, prepare_dir=prepare_dir)
    return [(s.name, render_stage(s.command, {**values, "stage": s.name})) for s in spec.stages]


_BUILTIN_VALUE_BYTES = {"run_dir": 4096, "run": 100, "run_no": 20, "trial": 20, "replicate": 20, "study": 64, "stage": 64,
                        "prepare_dir": 4096}


def _command_bound(command: str, params: tuple[Param, ...]) -> int:
    """An upper bound on the bytes of a command once its placeholders are filled with any
    of their values (a formatted one counted at its widest, quoting at its worst)."""
    by_name = {p.name: p for p in params}
    total = 0
    for literal, field_name, spec, _ in string.Formatter().parse(command):
        total += len(literal.encode(errors="surrogatepass"))
        if field_name is None:
            continue
        base = re.split(r"[.\[!:]", field_name, maxsplit=1)[0]
        p = by_name.get(base)
        if isinstance(p, (ChoiceParam, FixedParam)):
            values = p.values if isinstance(p, ChoiceParam) else (p.value,)
            quoted = max(len(shlex.quote(format_value(v)).encode(errors="surrogatepass")) for v in values)
        else:
            quoted = _BUILTIN_VALUE_BYTES.get(base, 32)
        if spec:  # format() first: at most its width and precision more, then quoted at 5 bytes a byte
            quoted = 5 * (quoted + sum(int(n) for n in re.findall(r"\d+", spec))) + 2
        total += quoted
    return total


def _always_shell_safe(name: str, params: tuple[Param, ...]) -> bool:
    """Whether every value a placeholder can take reaches the shell unquoted as itself
    (numbers, and choices of plain words), so it may stand inside the template's quotes."""
    if name in ("run", "run_no", "trial", "replicate", "study", "stage"):
        return True
    for p in params:
        if p.name == name:
            if isinstance(p, (FloatParam, IntParam)):
                return True
            values = p.values if isinstance(p, ChoiceParam) else (p.value,)
            return all(shlex.quote(format_value(v)) == format_value(v) for v in values)
    return False  # run_dir: a path may hold anything


def _quoted_placeholders(command: str) -> list[str]:
    """The placeholders written inside '...' or "..." in the template (where hypd's own
    quoting would break). $( ... ) opens a fresh, unquoted context, even inside "..."."""
    found: list[str] = []
    stack: list[str] = []  # open contexts: "'", '"', or "(" for $( ... )
    for literal, field_name, _, _ in string.Formatter().parse(command):
        i = 0
        while i < len(literal):
            ch, top = literal[i], (stack[-1] if stack else None)
            if top == "'":
                if ch == "'":
                    stack.pop()
            elif ch == "\\":
                i += 1
            elif ch == "$" and literal[i + 1:i + 2] == "(":
                stack.append("(")
                i += 1
            elif top == '"' and ch == '"' or top == "(" and ch == ")":
                stack.pop()
            elif top != '"' and ch in "'\"":
                stack.append(ch)
            i += 1
        if field_name is not None and stack and stack[-1] in ("'", '"'):
            found.append(field_name)
    return found
