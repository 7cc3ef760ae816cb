"""End to end, what Diviner's and the YAML runner's users rely on: a keepalive watchdog for
hung runs, replicates, a readable leaderboard, exports, continuing a grid. A real daemon,
real processes, the real CLI."""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import DaemonProc, use_hosts, wait_for, wait_hosts_up
from hypd.client import Client, socket_path
from hypd.replicates import mean_and_sem
from hypd.search import load_suggester
from hypd.study import parse_study
from tests.sshd import SshdCluster

pytestmark = pytest.mark.slow


def test_a_silent_run_is_ended_as_hung_and_retried_and_a_run_may_widen_its_window(daemon: DaemonProc) -> None:
    # x=1 prints once and then hangs; x=2 asks for a wider window, is silent past the
    # study's, and completes.
    daemon.write_study("hang", """
        [study]
        name = "hang"
        objective = { metric = "loss" }
        algorithm = "grid"
        keepalive = "2s"
        timeout = "10m"
        retries = 1
        [params]
        x = { values = [1, 2] }
        [run]
        command = '''python3 -u -c "
        import time
        print('METRICS: loss=1')
        if {x} == 1:
            time.sleep(300)
        print('HYPD: keepalive 30s')
        time.sleep(8)
        print('METRICS: loss=0.5')
        "'''
    """)
    daemon.cli("submit", str(daemon.home / "studies" / "hang.toml"))
    hung = daemon.wait_state("hang:1", "failed", timeout=30)
    assert hung["reason"] == "no output for 2s (keepalive)"
    retry = daemon.wait_state("hang:3", "failed", timeout=30)  # retried like any failure
    assert retry["trial"] == hung["trial"] and retry["reason"] == "no output for 2s (keepalive)"
    def asked() -> bool:
        with sqlite3.connect(daemon.home / "hypd.db") as db:
            return db.execute("SELECT keepalive FROM runs WHERE run_no=2").fetchone()[0] == 30.0
    wait_for(asked, timeout=30, what="hang:2's own window stored")
    daemon.kill9()  # its own window outlives the daemon: silent past the study's 2 s, it is not ended
    daemon.start()
    widened = daemon.wait_state("hang:2", "completed", timeout=30)
    assert widened["objective"] == 0.5
    assert "keepalive window set to 30s by the run" in (daemon.home / "daemon.log").read_text()


REPLICATED = """
    [study]
    name = "{name}"
    objective = {{ metric = "loss" }}
    algorithm = "{algorithm}"
    {max_trials}
    replicates = 3
    retries = 1
    parallel = 3
    [params]
    x = {space}
    [run]
    command = '''python3 -u -c "
    import os, sys, time
    r = {{replicate}}
    assert os.environ['HYPD_REPLICATE'] == str(r)
    marker = os.path.join('{marker}', 't{{trial}}r{{replicate}}')
    if r == 2 and not os.path.exists(marker):  # replicate 2 of each trial fails once
        open(marker, 'w').close()
        sys.exit(1)
    time.sleep(1)
    print('METRICS: loss=%g' % (float({{x}}) * 10 + r))
    "'''
"""


def test_replicates_run_each_trial_n_times_and_rank_it_by_their_mean(daemon: DaemonProc) -> None:
    marker = daemon.home / "markers"
    marker.mkdir()
    path = daemon.write_study("rep", REPLICATED.format(name="rep", algorithm="grid", max_trials="",
                                                       space="{ values = [2, 1] }", marker=marker))
    assert "2 trials queued" in daemon.cli("submit", str(path)).stdout
    daemon.wait_finished("rep", timeout=90)
    runs = daemon.runs(study="rep")
    t0 = min(r["trial"] for r in runs)  # the first trial's number (x = 2), the second's is t0 + 1
    done = sorted((r["trial"] - t0, r["replicate"], r["objective"]) for r in runs if r["state"] == "completed")
    assert done == [(0, 1, 21.0), (0, 2, 22.0), (0, 3, 23.0), (1, 1, 11.0), (1, 2, 12.0), (1, 3, 13.0)]
    failed = [(r["trial"] - t0, r["replicate"], r["attempt"]) for r in runs if r["state"] == "failed"]
    assert sorted(failed) == [(0, 2, 1), (1, 2, 1)]  # each retried, as its own replicate's attempt 2
    # The replicates of a trial ran side by side.
    first = [r for r in runs if r["trial"] == t0 and r["attempt"] == 1]
    assert max(r["started"] for r in first) < min(r["ended"] for r in first)

    board = daemon.cli_json("leaderboard", "rep")
    assert [(r["trial"] - t0, r["mean"], r["low"], r["high"], r["n"]) for r in board["runs"]] == \
        [(1, 12.0, 11.0, 13.0, 3), (0, 22.0, 21.0, 23.0, 3)]
    assert board["runs"][0]["sem"] == pytest.approx(1 / 3 ** 0.5)
    text = daemon.cli("leaderboard", "rep").stdout
    assert "12 [11–13] (3)" in text and "22 [21–23] (3)" in text
    second = next(r for r in runs if r["replicate"] == 2 and r["state"] == "completed")
    assert f"(trial {second['trial'] + 1}, replicate 2, attempt 2;" in daemon.cli("info", second["name"]).stdout
    every = daemon.cli_json("leaderboard", "rep", "--runs")["runs"]
    assert [r["objective"] for r in every] == [11.0, 12.0, 13.0, 21.0, 22.0, 23.0]
    assert "REP" in daemon.cli("leaderboard", "rep", "--runs").stdout
    studies = {s["name"]: s for s in daemon.call("studies")}
    assert studies["rep"]["best"] == 12.0 and studies["rep"]["trials"] == 2
    with sqlite3.connect(daemon.home / "hypd.db") as db:
        told = db.execute("SELECT told FROM trials WHERE study='rep' ORDER BY trial").fetchall()
    assert told == [("completed",), ("completed",)]


def test_the_search_is_told_each_trial_once_as_its_replicates_mean_and_sem(daemon: DaemonProc) -> None:
    marker = daemon.home / "markers"
    marker.mkdir()
    path = daemon.write_study("srep", REPLICATED.format(
        name="srep", algorithm="sobol", max_trials="max_trials = 2", marker=marker,
        space='{ type = "float", low = 0.0, high = 1.0 }'))
    daemon.cli("submit", str(path))
    daemon.wait_finished("srep", timeout=120)
    daemon.stop()
    with sqlite3.connect(daemon.home / "hypd.db") as db:
        state, text, source = db.execute("SELECT search_state, text, source FROM studies WHERE name='srep'").fetchone()
        told = db.execute("SELECT told FROM trials WHERE study='srep'").fetchall()
        results = db.execute("SELECT trial, objective FROM runs WHERE study='srep' AND state='completed'").fetchall()
    assert told == [("completed",), ("completed",)]
    suggester = load_suggester(parse_study(text, source), state)
    data = suggester._client._experiment.lookup_data().df.set_index("trial_index")  # type: ignore[attr-defined]
    assert len(data) == 2  # one row per trial, not one per replicate
    expected = sorted(mean_and_sem([o for t, o in results if t == trial]) for trial in {t for t, _ in results})
    told_ax = sorted(zip(data["mean"], data["sem"]))
    assert [x for pair in told_ax for x in pair] == pytest.approx([x for pair in expected for x in pair])


def test_a_grid_resubmitted_with_more_values_runs_only_its_new_points(daemon: DaemonProc) -> None:
    grid = """
        [study]
        name = "sweep"
        objective = {{ metric = "loss" }}
        algorithm = "grid"
        {max_trials}
        parallel = 4
        [params]
        lr = {{ values = {lrs} }}
        x = {{ type = "float", low = 0.0, high = 1.0 }}
        [run]
        command = "python3 -c 'print(\\"METRICS: loss=%g\\" % ({{lr}} + {{x}}))'"
    """
    path = daemon.write_study("sweep", grid.format(lrs="[0.1, 0.2]", max_trials="max_trials = 4"))
    assert "4 trials queued" in daemon.cli("submit", str(path)).stdout
    daemon.wait_finished("sweep")
    daemon.write_study("sweep", grid.format(lrs="[0.1, 0.2, 0.3]", max_trials="max_trials = 6"))
    assert "continues: 2 new trials queued" in daemon.cli("submit", str(path)).stdout
    wait_for(lambda: len(daemon.runs(study="sweep")) == 6, what="the new points to be queued")
    daemon.wait_finished("sweep")
    # A larger max_trials: x gets a third point (0.5) on every lr; 0.0 and 1.0 are kept.
    daemon.write_study("sweep", grid.format(lrs="[0.1, 0.2, 0.3]", max_trials="max_trials = 9"))
    assert "continues: 3 new trials queued" in daemon.cli("submit", str(path)).stdout
    wait_for(lambda: len(daemon.runs(study="sweep")) == 9, what="the new points to be queued")
    daemon.wait_finished("sweep")
    runs = daemon.runs(study="sweep")
    points = sorted((r["params"]["lr"], r["params"]["x"]) for r in runs)
    assert points == [(lr, x) for lr in (0.1, 0.2, 0.3) for x in (0.0, 0.5, 1.0)]  # each once
    assert {r["state"] for r in runs} == {"completed"}
    board = daemon.cli_json("leaderboard", "sweep")["runs"]
    assert len(board) == 9 and board[0]["params"] == {"lr": 0.1, "x": 0.0}
    assert "continues (same search space)" in daemon.cli("submit", str(path)).stdout  # nothing new
    assert len(daemon.runs(study="sweep")) == 9
    renamed = daemon.write_study("sweep", grid.format(lrs="[0.1]", max_trials="max_trials = 2").replace("lr =", "rate =")
                                 .replace("{lr}", "{rate}"))
    refused = daemon.cli("submit", str(renamed), check=False)  # other parameters: another study
    assert refused.returncode == 6 and "--as" in refused.stderr


def test_export_writes_tidy_tables_read_back_with_csv_json_pyarrow_and_pandas(daemon: DaemonProc) -> None:
    path = daemon.write_study("tidy", """
        [study]
        name = "tidy"
        objective = { metric = "loss" }
        algorithm = "grid"
        parallel = 3
        [params]
        x = { values = [1, 2, 3] }
        opt = { values = ["adam", "s g,d"] }
        epochs = 3
        [run]
        command = '''python3 -u -c "
        for i in range({epochs}):
            print('METRICS: step=%d loss=%g' % (i, {x} / (i + 1)))
        if {x} == 3:
            print('METRICS: acc=0.5')
        "'''
    """)
    daemon.cli("submit", str(path))
    daemon.wait_finished("tidy", timeout=60)
    out = daemon.home / "tidy.csv"
    result = daemon.cli("export", "tidy", "-o", str(out))
    assert "6 runs of tidy written to" in result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["study", "run", "trial", "replicate", "attempt", "state", "host", "gpus", "started",
                             "ended", "objective", "param_x", "param_opt", "param_epochs", "acc", "loss"]
    assert [(r["run"], r["param_x"], r["param_opt"], r["loss"], r["acc"]) for r in rows] == [
        ("tidy:1", "1", "adam", "0.333333", ""), ("tidy:2", "1", "s g,d", "0.333333", ""),
        ("tidy:3", "2", "adam", "0.666667", ""), ("tidy:4", "2", "s g,d", "0.666667", ""),
        ("tidy:5", "3", "adam", "1.0", "0.5"), ("tidy:6", "3", "s g,d", "1.0", "0.5")]
    assert {(r["state"], r["host"], r["trial"], r["replicate"]) for r in rows[:1]} == {("completed", "local", "1", "1")}
    assert all(float(r["started"]) <= float(r["ended"]) for r in rows)

    lines = daemon.cli("export", "tidy", "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["param_opt"] for line in lines] == ["adam", "s g,d"] * 3

    reports = daemon.cli("export", "tidy", "--reports").stdout.splitlines()
    assert reports[0] == "study,run,trial,replicate,step,at,acc,loss"
    assert len(reports) == 1 + 6 * 3 + 2 and reports[1].startswith("tidy,tidy:1,1,1,0,")

    parquet = daemon.home / "tidy.parquet"
    daemon.cli("export", "tidy", "-o", str(parquet))
    table = pq.read_table(parquet)
    assert table.num_rows == 6 and table.column("loss").to_pylist()[4] == 1.0
    assert table.schema.field("param_x").type == pa.int64() and table.schema.field("acc").type == pa.float64()
    assert table.column("acc").to_pylist() == [None, None, None, None, 0.5, 0.5]

    with Client(socket_path(daemon.home)) as c:
        frame = c.export("tidy").to_pandas()  # the same rows as a DataFrame
        assert frame.shape == (6, 16) and frame["loss"].max() == 1.0
        assert list(frame.columns) == list(rows[0]) and list(frame["param_opt"]) == ["adam", "s g,d"] * 3
        assert len(c.export("tidy", reports=True).to_pandas()) == 20

    for reports, limit, total in ((False, 4, 6), (True, 7, 20)):  # page after page: each row once, in order
        got, after = [], None
        while True:
            page = daemon.call("export", study="tidy", reports=reports, after=after, limit=limit)
            got += [dict(zip(page["fields"], row)) for row in json.loads(page["rows"])]
            if page["next"] is None:
                break
            after = page["next"]
        keys = [(r["id"], r.get("seq")) for r in got]
        assert len(got) == total and keys == sorted(set(keys))

    missing = daemon.cli("export", "nope", check=False)
    assert missing.returncode == 4 and "nope" in missing.stderr


PREPARED = """
    [study]
    name = "prep"
    objective = {{ metric = "loss" }}
    algorithm = "grid"
    parallel = 4
    retries = 1
    [params]
    x = {{ values = {values} }}
    [prepare]
    command = "python3 prep.py"
    files = ["prep.py"]
    [run]
    command = '''python3 -c "
    import os, sys
    assert os.environ['HYPD_PREPARE_DIR'] == sys.argv[1]
    print('METRICS: loss=%g' % (float(open(sys.argv[1] + '/data.txt').read()) + float(sys.argv[2])))
    " {{prepare_dir}} {{x}}'''
"""

PREP = """
import os, sys, time
open({count!r}, 'a').write('ran\\n')
if os.path.exists({flag!r}):
    sys.exit(3)
time.sleep(1)
open(os.path.join(os.environ['HYPD_PREPARE_DIR'], 'data.txt'), 'w').write('{value}')
"""


def test_prepare_runs_once_per_host_before_the_runs_there_and_again_only_when_it_changes(
        daemon: DaemonProc) -> None:
    count, flag = daemon.home / "prepared", daemon.home / "fail-prepare"
    prep = daemon.home / "studies" / "prep.py"

    def submit(values: str, value: str = "10") -> str:
        prep.parent.mkdir(parents=True, exist_ok=True)
        prep.write_text(PREP.format(count=str(count), flag=str(flag), value=value))
        path = daemon.write_study("prep", PREPARED.format(values=values))
        return daemon.cli("submit", str(path)).stdout

    def prepared() -> int:
        return len(count.read_text().splitlines()) if count.exists() else 0

    submit("[1, 2, 3, 4]")
    daemon.wait_finished("prep")
    runs = daemon.runs(study="prep")
    assert sorted(r["objective"] for r in runs) == [11.0, 12.0, 13.0, 14.0]  # each read what it prepared
    assert prepared() == 1  # once, the other runs waiting for it
    daemon.stop()
    daemon.start()
    submit("[1, 2, 3, 4, 5]")  # a restart and a new point: the step is not run again
    wait_for(lambda: len(daemon.runs(study="prep")) == 5, what="the new point")
    daemon.wait_finished("prep")
    assert prepared() == 1
    submit("[1, 2, 3, 4, 5, 6]", value="20")  # its file changed: it runs again
    wait_for(lambda: len(daemon.runs(study="prep")) == 6, what="the new point")
    daemon.wait_finished("prep")
    assert prepared() == 2 and max(r["objective"] for r in daemon.runs(study="prep")) == 26.0

    flag.touch()  # the step fails from now on
    submit("[1, 2, 3, 4, 5, 6, 7]", value="30")
    failed = daemon.wait_state("prep:7", "failed", timeout=30)
    assert "stage prepare exited with status 3" in failed["reason"]
    wait_for(lambda: "unusable for study prep" in daemon.cli("hosts").stdout, what="the host marked")
    assert "prepare failed on local" in daemon.cli("studies").stdout
    time.sleep(2)  # its retry waits: the only host is unusable for this study
    assert [r["state"] for r in daemon.runs(study="prep") if r["trial"] == failed["trial"]] == ["failed", "pending"]
    assert prepared() == 3
    flag.unlink()
    assert "runs again on every host" in daemon.cli("retry", "prep", "--prepare").stdout
    daemon.wait_finished("prep")
    assert prepared() == 4 and max(r["objective"] or 0 for r in daemon.runs(study="prep")) == 37.0
    assert "unusable" not in daemon.cli("hosts").stdout


SLOW_PREP = """
import os, time
open({count!r}, 'a').write(os.environ['HYPD_PREPARE_DIR'] + '\\n')
time.sleep(4)
open(os.path.join(os.environ['HYPD_PREPARE_DIR'], 'data.txt'), 'w').write('10')
"""


@pytest.mark.ssh
def test_prepare_runs_once_on_each_of_two_ssh_hosts_across_a_daemon_restart(
        cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    a, b = cluster.add("a", gpus=None), cluster.add("b", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=2), b.host_config(cpu_slots=2))
    d = remote_daemon.start()
    wait_hosts_up(d, "a", "b")
    count = d.home / "prepared"
    prep = d.home / "studies" / "prep.py"
    prep.parent.mkdir(parents=True, exist_ok=True)
    prep.write_text(SLOW_PREP.format(count=str(count)))
    path = d.write_study("prep", PREPARED.format(values="[1, 2, 3, 4, 5, 6, 7, 8]"))
    d.cli("submit", str(path))
    wait_for(lambda: count.exists() and len(count.read_text().splitlines()) == 2, timeout=30,
             what="the prepare step started on both hosts")
    d.kill9()  # while both prepare (their runs and the ones waiting for them go on)
    d.start()
    d.wait_finished("prep", timeout=120)
    dirs = count.read_text().splitlines()
    assert len(dirs) == 2 and {Path(x).parts[:len(Path(a.root).parts)] == Path(a.root).parts for x in dirs} == \
        {True, False}  # once in each host's folder, not again after the restart
    runs = d.runs(study="prep")
    assert sorted(r["objective"] for r in runs) == [11.0 + i for i in range(8)]
    assert {r["host"] for r in runs} == {"a", "b"}
    d.write_study("prep", PREPARED.format(values="[1, 2, 3, 4, 5, 6, 7, 8, 9]"))
    d.cli("submit", str(path))
    wait_for(lambda: len(d.runs(study="prep")) == 9, what="the new point")
    d.wait_finished("prep", timeout=60)
    assert len(count.read_text().splitlines()) == 2
