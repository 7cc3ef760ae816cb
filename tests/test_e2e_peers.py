"""What users of other sweep tools expect, end to end against a real daemon (and real
sshd hosts): host choice per study, artifacts fetched back, extending / archiving /
removing studies, and the Python client."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProc, use_hosts, wait_for, wait_hosts_up
from tests.sshd import SshdCluster

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss" }}
algorithm = "{algorithm}"
max_trials = {n}
parallel = {parallel}
retries = 0
{extra}
[params]
x = {{ type = "int", low = 0, high = 1000 }}
[run]
command = "echo METRICS: loss={{x}}; {body}"
{run_extra}
"""


def study_file(d: DaemonProc, name: str, n: int = 4, parallel: int = 4, algorithm: str = "random",
               extra: str = "", body: str = "sleep 0.1", run_extra: str = "") -> str:
    return str(d.write_study(name, STUDY.format(name=name, n=n, parallel=parallel, algorithm=algorithm,
                                                extra=extra, body=body, run_extra=run_extra)))


# ------------------------------------------------------------------ host choice

@pytest.mark.ssh
def test_runs_go_only_to_the_hosts_a_study_chooses(cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=None)
    b = cluster.add("b", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=4))
    d = remote_daemon.start()
    # b joins through the CLI, labelled.
    d.cli("hosts", "add", "b", f"127.0.0.1:{b.port}", "--key", str(cluster.client_key),
          "--known-hosts", str(cluster.known_hosts), "--workdir", str(b.root), "--cpu-slots", "4",
          "--label", "a100", "--label", "big,fast")
    wait_hosts_up(d, "a", "b")
    hosts = {h["name"]: h for h in d.call("hosts")}
    assert hosts["b"]["labels"] == ["a100", "big", "fast"] and hosts["a"]["labels"] == []
    assert "labels a100,big,fast" in d.cli("hosts").stdout

    by_label = study_file(d, "bylabel", n=6, extra='hosts = { labels = ["a100"] }')
    by_name = study_file(d, "byname", n=6, extra='hosts = ["a"]')
    anywhere = study_file(d, "anywhere", n=8, parallel=8)
    for path in (by_label, by_name, anywhere):
        assert "no host matches" not in d.cli("submit", path).stderr
    for name in ("bylabel", "byname", "anywhere"):
        d.wait_finished(name, timeout=90)
    assert {r["host"] for r in d.runs(study="bylabel")} == {"b"}
    assert {r["host"] for r in d.runs(study="byname")} == {"a"}
    assert {r["host"] for r in d.runs(study="anywhere")} == {"a", "b"}

    # A choice nothing matches says so at submit and in `studies`, and starts nothing.
    out = d.cli("submit", study_file(d, "nowhere", n=2, extra='hosts = { labels = ["h100"] }'))
    assert 'no host matches hosts = { labels = ["h100"] }' in out.stderr
    assert "a, b [a100, big, fast]" in out.stderr
    studies = d.cli("studies").stdout
    assert 'nowhere: no host matches hosts = { labels = ["h100"] }' in studies
    summary = next(s for s in d.call("studies") if s["name"] == "nowhere")
    assert summary["hosts"] == '{ labels = ["h100"] }' and summary["hosts_note"]
    assert all(r["state"] == "pending" for r in d.runs(study="nowhere"))
    waited = d.cli("wait", "nowhere", "--timeout", "1", check=False)
    assert waited.returncode == 1 and 'nowhere: no host matches hosts = { labels = ["h100"] }' in waited.stderr
    # A host with that label joins: the study's runs go there, and the note is gone.
    cfg = replace(b.host_config(cpu_slots=4), name="c", labels=("h100",))
    use_hosts(d, a.host_config(cpu_slots=4), replace(b.host_config(cpu_slots=4), labels=("a100", "big", "fast")), cfg)
    d.wait_finished("nowhere", timeout=90)
    assert {r["host"] for r in d.runs(study="nowhere")} == {"c"}
    assert next(s for s in d.call("studies") if s["name"] == "nowhere")["hosts_note"] == ""


def test_a_study_file_refuses_a_bad_host_choice(daemon: DaemonProc) -> None:
    for bad in ('hosts = []', 'hosts = ["a b"]', 'hosts = { label = ["x"] }', 'hosts = 3'):
        out = daemon.cli("submit", study_file(daemon, "bad", extra=bad), check=False)
        assert out.returncode == 5 and "study.hosts" in out.stderr, (bad, out.stderr)
    # The daemon's own machine is the host named "local"; config.toml [local] may label it.
    daemon.cli("submit", study_file(daemon, "onlocal", n=2, extra='hosts = ["local"]'))
    daemon.wait_finished("onlocal")
    assert {r["host"] for r in daemon.runs(study="onlocal")} == {"local"}


# ------------------------------------------------------------------ budget: extend, archive, rm

def test_extend_a_finished_study_carries_its_search_on(daemon: DaemonProc) -> None:
    d = daemon
    d.cli("submit", study_file(d, "more", n=3, parallel=3, algorithm="sobol"))
    d.wait_finished("more")
    first = sorted((r["trial"], r["params"]["x"]) for r in d.runs(study="more"))
    out = d.cli("extend", "more", "2").stdout
    assert "study more extended to 5 trials" in out
    done = d.wait_finished("more")
    assert (done["done"], done["total"]) == (5, 5)
    runs = sorted((r["trial"], r["params"]["x"]) for r in d.runs(study="more"))
    # The same search went on: the first trials are as they were, the new ones come after
    # them in its sequence (a new search would propose the first points again).
    assert runs[:3] == first and [t for t, _ in runs] == [0, 1, 2, 3, 4]
    assert len({x for _, x in runs}) == 5
    # It stays so after a restart (the stored file says max_trials = 5).
    d.stop()
    d.start()
    assert d.wait_finished("more")["total"] == 5
    # A random search (every trial queued at submit): extend queues the new ones at once;
    # resubmitting the file with a larger max_trials does the same.
    d.cli("submit", study_file(d, "rnd", n=2))
    d.wait_finished("rnd")
    assert "2 trials queued" in d.cli("extend", "rnd", "2").stdout
    d.wait_finished("rnd")
    out = d.cli("submit", study_file(d, "rnd", n=6))
    assert "continues" in out.stdout
    assert d.wait_finished("rnd")["done"] == 6
    # Refusals: nothing to add; a grid of all its points; no such study.
    assert d.cli("extend", "rnd", "0", check=False).returncode == 5
    grid = STUDY.format(name="g", n=2, parallel=2, algorithm="grid", extra="", body="true", run_extra="")
    d.cli("submit", str(d.write_study("g", grid.replace("max_trials = 2\n", "").replace(
        'x = { type = "int", low = 0, high = 1000 }', 'x = { type = "choice", values = [1, 2] }'))))
    refused = d.cli("extend", "g", "3", check=False)
    assert refused.returncode == 5 and "grid of all its points" in refused.stderr
    assert d.cli("extend", "nope", "3", check=False).returncode == 4


def test_archive_hides_a_study_and_rm_removes_it(daemon: DaemonProc) -> None:
    d = daemon
    d.cli("submit", study_file(d, "old", n=2, body="echo out > $HYPD_RUN_DIR/out.txt"))
    d.cli("submit", study_file(d, "slow", n=1, body="sleep 30"))
    d.wait_finished("old")
    d.wait_state("slow:1", "running")
    # Refused while runs are going, for both.
    for args in (("archive", "slow"), ("rm", "slow")):
        out = d.cli(*args, check=False)
        assert out.returncode == 6 and "slow:1 (running)" in out.stderr and "hypd kill slow" in out.stderr
    d.cli("archive", "old")
    assert "old" not in d.cli("studies").stdout
    assert "old" not in d.cli("ls").stdout
    assert "finished (archived)" in d.cli("studies", "--archived").stdout
    assert {r["study"] for r in d.cli_json("ls", "--archived")} == {"old", "slow"}
    assert len(d.cli_json("ls", "--study", "old")) == 2  # a named study is always listed
    d.cli("archive", "old", "--undo")
    assert "old" in d.cli("studies").stdout

    run_dirs = [r["run_dir"] for r in d.runs(study="old")]
    log_dir = d.home / "runs" / "old"
    assert log_dir.is_dir() and all(Path(x).is_dir() for x in run_dirs)
    out = d.cli("rm", "old").stdout
    assert "removed (2 runs); its logs and outputs are kept" in out
    assert log_dir.is_dir()
    assert "old" not in d.cli("studies", "--archived").stdout and d.cli("info", "old:1", check=False).returncode == 4
    # The name is free again; rm --files removes the logs and outputs too.
    d.cli("submit", study_file(d, "old", n=1, body="echo out > $HYPD_RUN_DIR/out.txt"))
    d.wait_finished("old")
    run_dir = d.run("old:1")["run_dir"]
    out = d.cli("rm", "old", "--files").stdout
    assert str(log_dir) in out and not log_dir.exists()
    assert not Path(run_dir).exists()
    # The daemon starts again with no word of lost data.
    d.cli("kill", "slow")
    d.stop()
    d.start()
    assert "lost data" not in d.output()


# ------------------------------------------------------------------ the Python client

def test_the_python_client_reads_studies_runs_and_reports(daemon: DaemonProc) -> None:
    pandas = pytest.importorskip("pandas")
    from hypd.client import Client, DaemonError, socket_path

    d = daemon
    body = "for i in 1 2 3; do echo METRICS: step=$i acc=0.$i; done"
    d.cli("submit", study_file(d, "nb", n=3, algorithm="random", body=body))
    d.wait_finished("nb")
    c = Client(socket_path(d.home))
    assert [s["name"] for s in c.studies()] == ["nb"] and c.study("nb")["done"] == 3
    runs = c.runs(study="nb")
    assert [r["name"] for r in runs] == ["nb:1", "nb:2", "nb:3"] and all(type(r) is dict for r in runs)
    assert c.run("nb:2")["params"] == runs[1]["params"]
    frame = runs.to_pandas()
    assert list(frame["name"]) == ["nb:1", "nb:2", "nb:3"]
    assert list(frame["params.x"]) == [r["params"]["x"] for r in runs]
    assert list(frame["objective"]) == [float(r["params"]["x"]) for r in runs]
    reports = c.reports("nb:1")
    assert [(r["run"], r["step"], r["acc"]) for r in reports if "acc" in r] == [
        ("nb:1", 1, 0.1), ("nb:1", 2, 0.2), ("nb:1", 3, 0.3)]
    every = c.reports("nb").to_pandas()
    assert set(every["run"]) == {"nb:1", "nb:2", "nb:3"} and {"step", "at", "acc", "loss"} <= set(every.columns)
    assert c.leaderboard("nb")[0]["name"] == c.best("nb")["observed"]["name"]
    with pytest.raises(DaemonError) as err:
        c.study("nope")
    assert err.value.code == "not_found"
    # A notebook's client outlives a daemon restart: its next read reconnects.
    d.stop()
    d.start()
    assert [r["name"] for r in c.runs(study="nb")] == ["nb:1", "nb:2", "nb:3"]
    c.close()
    assert pandas is not None


# ------------------------------------------------------------------ artifacts

ARTIFACTS_BODY = ("mkdir -p $HYPD_RUN_DIR/ckpt && echo weights-{x} > $HYPD_RUN_DIR/ckpt/best.pt && "
                  "echo {x} > $HYPD_RUN_DIR/result.json && echo no > $HYPD_RUN_DIR/other.txt && "
                  "head -c 64000000 /dev/zero > $HYPD_RUN_DIR/big.bin")
FETCH = 'fetch = ["ckpt/best.pt", "*.json", "*.bin", "nothing*"]'


def fetched_info(d: DaemonProc, run: str, timeout: float = 60) -> dict[str, Any]:
    """`info` of a run once the copy of its artifacts has ended."""
    return wait_for(lambda: (i := d.call("info", run=run)).get("artifacts") and not i["artifacts"]["fetching"] and i,
                    timeout, what=f"{run}'s artifacts fetched")


def one_slot_host(cluster: SshdCluster, remote_daemon: DaemonProc) -> DaemonProc:
    """The daemon started with one SSH host "a" of one CPU slot, up."""
    a = cluster.add("a", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=1))
    d = remote_daemon.start()
    wait_hosts_up(d, "a")
    return d


@pytest.mark.ssh
def test_artifacts_come_back_from_an_ssh_host_after_its_gpu_is_released(cluster: SshdCluster,
                                                                       remote_daemon: DaemonProc) -> None:
    d = one_slot_host(cluster, remote_daemon)
    d.cli("submit", study_file(d, "art", n=2, parallel=1, body=ARTIFACTS_BODY, run_extra=FETCH))
    d.wait_finished("art", timeout=120)
    runs = {r["name"]: r for r in d.runs(study="art")}
    assert {r["state"] for r in runs.values()} == {"completed"}
    fetched = {}
    for name, run in runs.items():
        info = fetched_info(d, name)
        record = fetched[name] = info["artifacts"]
        local = Path(record["dir"])
        assert local.is_relative_to(d.home / "studies" / "art") and record["run_dir"] == run["run_dir"]
        assert record["error"] == "" and sorted(record["files"]) == ["big.bin", "ckpt/best.pt", "result.json"]
        assert record["missing"] == ["nothing*"]
        x = run["params"]["x"]
        assert (local / "ckpt" / "best.pt").read_text() == f"weights-{x}\n"
        assert (local / "result.json").read_text() == f"{x}\n"
        assert (local / "big.bin").stat().st_size == 64_000_000 and not (local / "other.txt").exists()
        assert f"artifacts  {local}  (" in d.cli("info", name).stdout
    # Release first, fetch after: the next run on the one slot started before the first
    # run's 64 MB were back.
    assert runs["art:2"]["started"] < fetched["art:1"]["at"]
    best = d.cli("best", "art").stdout
    best_run = d.call("best", study="art")["observed"]["name"]
    assert f"artifacts      {fetched[best_run]['dir']}  (" in best
    # By hand: hypd pull copies them again.
    (Path(fetched["art:1"]["dir"]) / "ckpt" / "best.pt").unlink()
    out = d.cli("pull", "art:1")
    assert f"{fetched['art:1']['dir']}/ckpt/best.pt" in out.stdout and "nothing matched nothing*" in out.stderr
    assert (Path(fetched["art:1"]["dir"]) / "ckpt" / "best.pt").exists()

    # A fetch that fails (here: the local folder cannot be made) is one log line and a
    # note in info; the run stays completed.
    blocker = d.home / "studies" / "stuck"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the study's folder would go")
    d.cli("submit", study_file(d, "stuck", n=1, body=ARTIFACTS_BODY, run_extra=FETCH))
    d.wait_finished("stuck", timeout=60)
    info = fetched_info(d, "stuck:1")
    assert info["run"]["state"] == "completed" and info["artifacts"]["error"]
    assert "fetch failed" in d.cli("info", "stuck:1").stdout
    log = (d.home / "daemon.log").read_text()
    assert sum("stuck:1: artifacts not fetched" in line for line in log.splitlines()) == 1
    assert d.cli("pull", "stuck:1", check=False).returncode == 1


def test_artifacts_of_a_local_run_are_where_it_wrote_them(daemon: DaemonProc) -> None:
    d = daemon
    d.cli("submit", study_file(d, "here", n=1, body=ARTIFACTS_BODY.replace("64000000", "10"), run_extra=FETCH))
    d.wait_finished("here")
    info = fetched_info(d, "here:1")
    assert info["artifacts"]["dir"] == info["run"]["run_dir"] and "ckpt/best.pt" in info["artifacts"]["files"]
    assert f"artifacts      {info['run']['run_dir']}  (" in d.cli("best", "here").stdout
    # A study without [run] fetch: `best` says where the run's folder is; pull says how to ask.
    d.cli("submit", study_file(d, "plain", n=1))
    d.wait_finished("plain")
    assert "(the run's folder; [run] fetch" in d.cli("best", "plain").stdout
    assert d.cli("pull", "plain:1", check=False).returncode == 5


@pytest.mark.ssh
def test_a_fetch_cut_by_a_daemon_sigkill_is_done_again_at_the_next_start(cluster: SshdCluster,
                                                                        remote_daemon: DaemonProc) -> None:
    d = one_slot_host(cluster, remote_daemon)
    body = "head -c 400000000 /dev/zero > $HYPD_RUN_DIR/big.bin"
    d.cli("submit", study_file(d, "cut", n=1, body=body, run_extra='fetch = ["*.bin"]'))
    wait_for(lambda: (d.call("info", run="cut:1").get("artifacts") or {}).get("fetching"), 60, interval=0.05,
             what="the copy under way")
    assert "being copied to" in d.cli("info", "cut:1").stdout
    d.kill9()
    d.start()
    record = fetched_info(d, "cut:1", timeout=120)["artifacts"]
    assert record["error"] == "" and record["files"] == ["big.bin"]
    assert (Path(record["dir"]) / "big.bin").stat().st_size == 400_000_000
