"""Ax through the daemon: a real daemon, real runs, real Ax in its worker process."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FAST_CONFIG, DaemonProc, wait_for
from hypd.ipc import ExitCode

pytestmark = pytest.mark.slow

BRANIN = """
[study]
name = "{name}"
objective = {{ metric = "value", goal = "minimize" }}
max_trials = {trials}
parallel = {parallel}
seed = 7
{extra}

[params]
x1 = {{ type = "float", low = -5.0, high = 10.0 }}
x2 = {{ type = "float", low = 0.0, high = 15.0 }}

[run]
command = "python3 -c 'import math, sys, time; x1, x2 = map(float, sys.argv[1:3]); time.sleep(float(sys.argv[3])); print(\\"METRICS: value=%r\\" % ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10))' {{x1}} {{x2}} {sleep}"
"""


def branin(daemon: DaemonProc, name: str = "branin", trials: int = 10, parallel: int = 4, sleep: float = 0.2,
           extra: str = "") -> str:
    return str(daemon.write_study(name, BRANIN.format(name=name, trials=trials, parallel=parallel, sleep=sleep,
                                                      extra=extra)))


def trials_of(daemon: DaemonProc, study: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in daemon.runs(study=study):
        out.setdefault(r["trial"], []).append(r)
    return out


@pytest.mark.filterwarnings(r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")
def test_branin_runs_end_to_end_with_ax_as_the_default(daemon: DaemonProc) -> None:
    daemon.cli("submit", branin(daemon, trials=10))
    studies = daemon.call("studies")
    assert studies[0]["algorithm"] == "ax"
    daemon.wait_finished("branin", timeout=150)
    trials = trials_of(daemon, "branin")
    # A suggestion asked ahead and asked again (with more data) before it ran is withdrawn:
    # its index is skipped, never reused, and it does not count against max_trials.
    replaced = {s["name"]: s for s in daemon.call("studies")}["branin"]["ahead"]["replaced"]
    assert len(trials) == 10 and len(set(range(max(trials) + 1)) - set(trials)) <= replaced
    assert live_trials(daemon.home, "branin") == (set(trials), set(trials))
    assert all(len(runs) == 1 and runs[0]["state"] == "completed" for runs in trials.values())
    params = [json.dumps(r[0]["params"], sort_keys=True) for r in trials.values()]
    assert len(set(params)) == 10  # never the same trial twice
    best = json.loads(daemon.cli("best", "branin", "--json").stdout)
    assert best["observed"]["objective"] == min(r[0]["objective"] for r in trials.values())
    assert best["predicted"] is not None and "x1" in best["predicted"]["params"]
    text = daemon.cli("best", "branin").stdout
    assert "observed best  branin:" in text and "predicted best x1=" in text


@pytest.mark.filterwarnings(r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")
def test_resume_after_sigkill_continues_the_same_experiment(daemon: DaemonProc) -> None:
    daemon.cli("submit", branin(daemon, trials=12, parallel=3, sleep=1.0))
    wait_for(lambda: len([r for r in daemon.runs(study="branin") if r["state"] == "completed"]) >= 4,
             timeout=90, what="four completed trials")
    before = {t: runs[0]["params"] for t, runs in trials_of(daemon, "branin").items()}
    daemon.kill9()
    time.sleep(2)  # the running trials finish while no daemon watches
    daemon.start()
    daemon.wait_finished("branin", timeout=180)
    trials = trials_of(daemon, "branin")
    # Indices continue, none reused; one is skipped only for a suggestion asked ahead and
    # asked again (with more data) before it ran, which the search has withdrawn.
    assert len(trials) == 12 and live_trials(daemon.home, "branin") == (set(trials), set(trials))
    for t, params in before.items():
        assert trials[t][0]["params"] == params  # what was proposed before stays as it was
    assert all(len(runs) == 1 for runs in trials.values())  # nothing ran twice
    assert {runs[0]["state"] for runs in trials.values()} == {"completed"}
    params = {json.dumps(runs[0]["params"], sort_keys=True) for runs in trials.values()}
    assert len(params) == 12


def test_hand_given_trial_and_continuing_a_study(daemon: DaemonProc) -> None:
    path = branin(daemon, trials=3, parallel=2, sleep=0.1)
    daemon.cli("submit", path)
    daemon.wait_finished("branin", timeout=120)
    out = daemon.cli("suggest", "branin", "x1=3.14159", "x2=2.275").stdout
    run = daemon.wait_state("branin:4", "completed", timeout=60)
    # Trials are shown numbered from 1, as runs are (the fourth, unless a suggestion asked
    # ahead was withdrawn: its index is skipped).
    assert out.startswith(f"queued branin:4 (trial {run['trial'] + 1})") and run["trial"] >= 3
    assert run["objective"] == pytest.approx(0.397887, abs=1e-4)  # a known minimum of Branin
    assert daemon.cli_json("leaderboard", "branin")["runs"][0]["name"] == "branin:4"
    bad = daemon.cli("suggest", "branin", "x1=99", "x2=1", check=False)
    assert bad.returncode == ExitCode.INVALID and "x1" in bad.stderr
    # The same file again continues the study; with a changed space it is refused.
    assert "continues" in daemon.cli("submit", path).stdout
    changed = daemon.write_study("branin2", open(path).read().replace("high = 15.0", "high = 16.0"))
    refused = daemon.cli("submit", str(changed), check=False)
    assert refused.returncode == ExitCode.CONFLICT and "x2" in refused.stderr and "--as" in refused.stderr
    assert "study wide submitted" in daemon.cli("submit", str(changed), "--as", "wide").stdout


def test_an_unpromising_run_is_early_stopped_by_axs_percentile_rule(daemon: DaemonProc) -> None:
    # Every trial reports a curve; a large x is worse at every step.
    path = daemon.write_study("es", """
        [study]
        name = "es"
        objective = { metric = "loss", goal = "minimize" }
        max_trials = 6
        parallel = 3
        seed = 1
        early_stop = { rule = "percentile", metric = "loss", min_step = 3 }
        [params]
        x = { type = "float", low = 0.0, high = 1.0 }
        [run]
        command = "python3 -u -c 'import sys, time\\nx = float(sys.argv[1])\\nfor s in range(40):\\n print(\\"METRICS: step=%d loss=%r\\" % (s, 10 * x + 1 / (s + 1)))\\n time.sleep(0.15)' {x}"
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("es", timeout=180)
    assert {r["state"] for r in daemon.runs(study="es")} == {"completed"}  # too few curves to judge yet
    # With six full curves to compare against, a clearly worse one is stopped.
    assert daemon.cli("suggest", "es", "x=1.0").stdout.startswith("queued es:7")
    run = daemon.wait_state("es:7", "stopped", "completed", timeout=60)
    assert run["state"] == "stopped" and run["reason"].startswith("early-stopped")
    assert 3 <= len(daemon.call("metrics", run="es:7", since=0)["reports"]) < 40
    assert daemon.cli_json("leaderboard", "es")["runs"][-1]["name"] == "es:7"  # its data still counts


def test_socket_answers_while_ax_fits(daemon: DaemonProc) -> None:
    """Model fitting happens in the search worker process: the daemon's socket answers
    `ls` as fast while Ax fits as when idle."""
    idle = []
    for _ in range(20):
        t = time.perf_counter()
        daemon.call("ls", state=None, study=None, limit=None)
        idle.append(time.perf_counter() - t)
    daemon.cli("submit", branin(daemon, trials=24, parallel=4, sleep=0.0))
    busy = []
    deadline = time.time() + 40
    while time.time() < deadline and not any(s.get("finished") for s in daemon.call("studies")):
        t = time.perf_counter()
        daemon.call("ls", state=None, study=None, limit=None)
        busy.append(time.perf_counter() - t)
        time.sleep(0.02)
    assert len(busy) > 50
    # Generous bounds: this runs on 2 shared cores beside Ax's own process.
    assert statistics.median(busy) < max(0.05, 5 * statistics.median(idle)), (statistics.median(idle), statistics.median(busy))


def test_a_slot_that_frees_starts_a_suggestion_asked_ahead(daemon: DaemonProc) -> None:
    """One slot, runs of 2 s: while a run goes, the next trial is asked (and fitted) in the
    background, so each run after the first starts from the queue: its lead (ready before
    its launch) shows in `hypd studies`."""
    daemon.cli("submit", branin(daemon, trials=8, parallel=1, sleep=2.0))
    daemon.wait_finished("branin", timeout=150)
    (study,) = daemon.call("studies")
    ahead = study["ahead"]
    assert ahead["launches"] == 8 and ahead["ready"] == 0
    assert ahead["lead"] > 0  # most launches took a suggestion ready before the slot freed
    trials = trials_of(daemon, "branin")
    assert len(trials) == 8 and all(r[0]["state"] == "completed" for r in trials.values())
    assert len(trials) + ahead["replaced"] == max(trials) + 1  # a trial number is skipped only for a replaced one
    text = daemon.cli("studies").stdout
    assert "AHEAD" in text and f"0 ready, lead {ahead['lead']:.1f}s" in text


RANDOM_SLEEPER = """
[study]
name = "other"
objective = {{ metric = "value", goal = "minimize" }}
algorithm = "random"
max_trials = {trials}
parallel = 1

[params]
x = {{ type = "float", low = 0.0, high = 1.0 }}

[run]
command = "python3 -c 'import time; time.sleep({sleep}); print(\\"METRICS: value={{x}}\\")'"
"""


@pytest.fixture
def one_slot(hypd_home: Path, daemon_env: dict[str, str]) -> Iterator[DaemonProc]:
    (hypd_home / "config.toml").write_text(FAST_CONFIG.replace("cpu_slots = 4", "cpu_slots = 1"))
    d = DaemonProc(hypd_home, daemon_env)
    yield d.start()
    d.stop(kill_runs=True)


def live_trials(home: Path, study: str) -> tuple[set[int], set[int]]:
    """What a daemon started now would load: the trials the stored search state has (but
    those withdrawn), and the trials the store holds."""
    from hypd.search import WITHDRAWN, load_suggester
    from hypd.study import parse_study

    with contextlib.closing(sqlite3.connect(home / "hypd.db")) as db:
        text, state = db.execute("SELECT text, search_state FROM studies WHERE name=?", (study,)).fetchone()
        stored = {t for (t,) in db.execute("SELECT trial FROM trials WHERE study=?", (study,))}
    search = load_suggester(parse_study(text), state)
    in_search = {t for t, trial in search._client._experiment.trials.items() if trial.status_reason != WITHDRAWN}
    return in_search, stored


@pytest.mark.filterwarnings(r"ignore::Warning:(ax|botorch|gpytorch|linear_operator|torch|pandas)(\.|$)")
def test_a_suggestion_that_waited_while_a_result_came_is_asked_again_and_survives_sigkill(
        one_slot: DaemonProc) -> None:
    """One slot shared by two studies: when the Ax study's run ends the slot goes to the
    other study, so its queued suggestion waits while its result reaches the search; it
    is asked again with that result. Killed and restarted meanwhile, the daemon finds the
    store and the search agreeing on every trial."""
    d = one_slot
    d.cli("submit", branin(d, name="ax", trials=6, parallel=1, sleep=1.0))
    d.cli("submit", str(d.write_study("other", RANDOM_SLEEPER.format(trials=6, sleep=1.0))))
    wait_for(lambda: {s["name"]: s for s in d.call("studies")}["ax"]["ahead"]["replaced"] >= 1, timeout=120,
             what="a suggestion asked again")
    in_search, stored = live_trials(d.home, "ax")
    assert in_search == stored
    d.kill9()
    d.start()
    d.wait_finished("ax", timeout=150)
    d.wait_finished("other", timeout=60)
    in_search, stored = live_trials(d.home, "ax")
    assert in_search == stored and len(stored) == 6  # withdrawn trials took none of the budget
    runs = d.runs(study="ax")
    assert sorted(r["run_no"] for r in runs) == list(range(1, 7))  # a replaced suggestion kept its run
    assert {r["state"] for r in runs} == {"completed"} and {r["trial"] for r in runs} == stored
