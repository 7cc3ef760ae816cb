"""A Slurm cluster as a host, end to end: a real daemon, a real one-node Slurm
(tests/slurmd.py: slurmctld + slurmd on localhost, 4 GPUs as GRES), the real CLI. The
login node is this machine (login = "local") or reached over SSH (a real sshd)."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProc, use_hosts, wait_for
from hypd.inventory import inventory_path, load_inventory
from hypd.slurm.config import SlurmConfig
from tests.slurmd import SlurmCluster, slurm_cluster
from tests.sshd import SshdCluster
from tests.test_e2e_ssh import study  # runs that print their devices, then METRICS step=i loss=i

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    base = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))
    try:
        with slurm_cluster(base) as c:
            yield c
    finally:
        if not os.environ.get("HYPD_TEST_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_slurm(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster with its node up and no job of a test before."""
    yield slurm
    slurm.sh("scancel", "--user", getpass.getuser(), check=False)
    if any(word in slurm.node_state() for word in ("down", "drain")):
        slurm.set_node("resume")
    wait_for(lambda: not [j for j in slurm.jobs() if j.split()[2] in ("RUNNING", "PENDING", "COMPLETING")],
             timeout=60, what="the queue to empty")


def use_cluster(d: DaemonProc, slurm: SlurmCluster, **overrides: object) -> Path:
    """The cluster as the daemon's only host, its login node this machine; Slurm's commands
    on the daemon's PATH count their calls (the file returned)."""
    calls = slurm.install_commands(d.home / "bin")
    values: dict[str, object] = dict(name="cluster", login="local", partition=slurm.partition, max_jobs=10,
                                     workdir=str(d.home / "cluster"), poll=0.3, lost_after=600.0)
    values.update(overrides)
    use_hosts(d, SlurmConfig(**values))  # type: ignore[arg-type]
    return calls


def use_login_over_ssh(d: DaemonProc, slurm: SlurmCluster, cluster: SshdCluster) -> tuple[Any, Path]:
    """The cluster as the daemon's only host, its login node a real sshd (returned, with the
    file Slurm's commands count their calls in)."""
    login = cluster.add("login", gpus=None)
    calls = slurm.install_commands(login.bin_dir)
    ssh = login.host_config()
    use_hosts(d, SlurmConfig(
        "cluster", login=f"{ssh.user}@127.0.0.1:{ssh.port}", key=ssh.key, known_hosts=ssh.known_hosts,
        use_ssh_config=False, partition=slurm.partition, max_jobs=2, workdir=str(login.root), poll=0.3))
    return login, calls


def wait_up(d: DaemonProc) -> None:
    wait_for(lambda: [h for h in d.call("hosts") if h["name"] == "cluster" and h["state"] == "up"], timeout=30,
             what="the cluster up")


def reports(d: DaemonProc, run: str) -> list[int]:
    return [r["step"] for r in d.call("metrics", run=run, since=0)["reports"]]


def sbatch_calls(calls: Path) -> int:
    return calls.read_text().split().count("sbatch")


def test_runs_queue_while_the_node_is_full_then_complete_with_their_gpus_and_metrics(
        clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    calls = use_cluster(remote_daemon, clean_slurm)
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "q", n=5, gpus=2, parallel=5, steps=8, sleep=0.4))
    seen_queued: set[str] = set()
    shown: list[str] = []

    def finished() -> bool:
        for r in d.runs(state="queued"):
            seen_queued.add(r["reason"])
            if not shown:
                shown.append(d.cli("ls", "--state", "queued").stdout + d.cli("hosts").stdout)
        return all(r["state"] == "completed" for r in d.runs(study="q")) and len(d.runs(study="q")) == 5
    wait_for(finished, timeout=120, interval=0.2, what="every run to complete")
    # 4 GPUs, 2 a run: 3 of the 5 waited in Slurm's queue, and showed why
    assert seen_queued and all(r.startswith("queued: ") for r in seen_queued)
    assert any(w in " ".join(seen_queued) for w in ("Resources", "Priority")), seen_queued
    assert "queued (" in shown[0] and "partition gpu" in shown[0] and "queued (max 10)" in shown[0]
    devices = set()
    for r in d.runs(study="q"):
        first = d.cli("logs", r["name"]).stdout.splitlines()[0]
        assert first.split()[-1].startswith("devices=") and first.count(",") == 1, first  # 2 GPUs, from Slurm
        devices.add(first.split()[-1])
        assert reports(d, r["name"]) == list(range(8))
        assert r["exit_code"] == 0 and r["host"] == "cluster"
    assert devices <= {"devices=0,1", "devices=2,3"}
    listing = d.cli("ls", "--study", "q").stdout
    assert " cluster " in listing and "cluster:cpu" not in listing  # its GPUs were Slurm's to choose
    assert sbatch_calls(calls) == 5


def test_kill_cancels_a_running_and_a_queued_job(clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm)
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "k", n=3, gpus=2, parallel=3, steps=600, sleep=0.1))
    wait_for(lambda: len(d.runs(state="running")) == 2 and len(d.runs(state="queued")) == 1, timeout=60,
             what="2 runs running and 1 queued")
    running, queued = d.runs(state="running")[0]["name"], d.runs(state="queued")[0]["name"]
    wait_for(lambda: d.run(running)["reports"] > 2, timeout=30, what=f"{running} reporting")
    d.cli("kill", running)
    d.cli("kill", queued)
    for name in (running, queued):
        r = d.wait_state(name, "killed", timeout=60)
        assert r["reason"] == "killed on request"
    jobs = {line.split()[1]: line.split()[2] for line in clean_slurm.jobs()}
    assert jobs.get(f"hypd:{running}") == "CANCELLED" and jobs.get(f"hypd:{queued}") == "CANCELLED"
    assert len(d.runs(state="running")) == 1 and len(d.runs(study="k")) == 3  # killed: not retried


def test_daemon_sigkill_with_jobs_queued_and_running_adopts_every_job_once(
        clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    calls = use_cluster(remote_daemon, clean_slurm)
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "a", n=6, gpus=2, parallel=6, steps=15, sleep=0.4))
    wait_for(lambda: len(d.runs(state="running")) == 2 and len(d.runs(state="queued")) == 4, timeout=60,
             what="2 runs running and 4 queued")
    d.kill9()
    time.sleep(2)  # jobs go on without the daemon; some end meanwhile
    d.start()
    wait_for(lambda: all(r["state"] == "completed" for r in d.runs(study="a")), timeout=180, interval=0.3,
             what="every run to complete after the restart")
    assert len(d.runs(study="a")) == 6
    assert sbatch_calls(calls) == 6  # nothing submitted twice
    names = [line.split()[1] for line in clean_slurm.jobs() if line.split()[1].startswith("hypd:a:")]
    assert sorted(names) == sorted(f"hypd:a:{i}" for i in range(1, 7))
    for r in d.runs(study="a"):
        assert reports(d, r["name"]) == list(range(15)), r["name"]  # no report lost or doubled


def test_a_node_going_down_loses_its_runs_which_are_retried_when_it_is_back(
        clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm, sbatch=("--no-requeue",))
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "n", n=2, gpus=1, parallel=2, steps=400, sleep=0.1, retries=1))
    for name in ("n:1", "n:2"):
        d.wait_state(name, "running", timeout=60)
    wait_for(lambda: d.run("n:1")["reports"] > 2, timeout=30, what="n:1 reporting")
    clean_slurm.set_node("down")
    for name in ("n:1", "n:2"):
        r = d.wait_state(name, "lost", timeout=60)
        assert "NODE_FAIL" in r["reason"]
    retries = wait_for(lambda: [r for r in d.runs(study="n") if r["attempt"] == 2 and r["state"] == "queued"]
                       if len(d.runs(study="n")) == 4 else None, timeout=60, what="the retries queued")
    assert len(retries) == 2
    clean_slurm.set_node("resume")
    for r in retries:
        d.wait_state(r["name"], "running", timeout=60)
    assert len(d.runs(study="n")) == 4  # one retry each, nothing more


def test_a_job_slurm_requeues_after_its_node_failed_stays_the_same_run(
        clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm)  # Slurm's default: a batch job whose node fails is requeued
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "r", n=1, gpus=1, parallel=1, steps=30, sleep=0.1, retries=1))
    d.wait_state("r:1", "running", timeout=60)
    wait_for(lambda: d.run("r:1")["reports"] > 2, timeout=30, what="r:1 reporting")
    clean_slurm.set_node("down")
    r = d.wait_state("r:1", "queued", timeout=60)  # requeued by Slurm: waiting again, the same run
    clean_slurm.set_node("resume")
    r = d.wait_state("r:1", "completed", timeout=240)
    assert len(d.runs(study="r")) == 1 and r["attempt"] == 1  # one attempt: nothing retried by hypd
    steps = reports(d, "r:1")
    assert steps[-30:] == list(range(30)) and steps[:3] == [0, 1, 2]  # its log went on after the requeue


def test_a_job_past_its_time_limit_is_a_timeout(clean_slurm: SlurmCluster, remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm, sbatch=("--time=1",))  # a minute: Slurm's smallest limit
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "t", n=1, gpus=1, parallel=1, steps=100000, sleep=0.1))
    r = d.wait_state("t:1", "failed", timeout=150)
    assert r["reason"] == "timeout: past its job's time limit (Slurm TIMEOUT)"


@pytest.mark.ssh
def test_the_login_node_over_ssh(clean_slurm: SlurmCluster, cluster: SshdCluster,
                                 remote_daemon: DaemonProc) -> None:
    login, calls = use_login_over_ssh(remote_daemon, clean_slurm, cluster)
    ssh = login.host_config()
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "s", n=3, gpus=1, parallel=3, steps=10, sleep=0.2))
    wait_for(lambda: len(d.runs(study="s", state="completed")) == 3, timeout=120, interval=0.3,
             what="every run to complete")
    for r in d.runs(study="s"):
        assert reports(d, r["name"]) == list(range(10))
        assert Path(r["run_dir"]).is_relative_to(login.root)
    assert sbatch_calls(calls) == 3
    hosts = d.cli("hosts").stdout
    assert f"slurm via {ssh.user}@127.0.0.1:{ssh.port}" in hosts and "partition gpu" in hosts
    os.kill(login.proc.pid, signal.SIGKILL) if login.proc else None


@pytest.mark.ssh
def test_the_login_node_dropped_and_back_loses_no_line_and_submits_nothing_twice(
        clean_slurm: SlurmCluster, cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    login, calls = use_login_over_ssh(remote_daemon, clean_slurm, cluster)
    d = remote_daemon.start()
    wait_up(d)
    d.cli("submit", study(d, "drop", n=3, gpus=1, parallel=3, steps=40, sleep=0.1))
    wait_for(lambda: any(r["reports"] > 3 for r in d.runs(study="drop")), timeout=60, what="a run reporting")
    login.kill()  # the listener and every connection: the daemon's connection drops; the jobs go on
    wait_for(lambda: d.call("hosts")[0]["state"] == "down", timeout=30, what="the cluster down")
    time.sleep(2)
    login.start()
    wait_for(lambda: len(d.runs(study="drop", state="completed")) == 3, timeout=120, interval=0.3,
             what="every run to complete")
    for r in d.runs(study="drop"):
        assert reports(d, r["name"]) == list(range(40)), r["name"]  # none lost or doubled across the drop
        assert r["attempt"] == 1
    assert sbatch_calls(calls) == 3


ARTIFACTS_STUDY = """
    [study]
    name = "art"
    objective = { metric = "loss" }
    algorithm = "grid"
    parallel = 2
    gpus = 1
    [params]
    x = { type = "choice", values = [1, 2] }
    [run]
    fetch = ["ckpt/*.pt"]
    command = "mkdir -p $HYPD_RUN_DIR/ckpt && echo w{x} > $HYPD_RUN_DIR/ckpt/best.pt && echo METRICS: loss={x}"
    """


def check_artifacts(d: DaemonProc, cluster_root: Path) -> None:
    d.cli("submit", str(d.write_study("art", ARTIFACTS_STUDY)))
    wait_for(lambda: len(d.runs(study="art", state="completed")) == 2, timeout=120, interval=0.3,
             what="both runs to complete")
    for r in d.runs(study="art"):
        record = wait_for(lambda n=r["name"]: (a := d.call("info", run=n).get("artifacts")) and not a["fetching"] and a,
                          30, what="the fetch")
        assert record["error"] == "" and record["files"] == ["ckpt/best.pt"]
        assert Path(r["run_dir"]).is_relative_to(cluster_root)
        assert (Path(record["dir"]) / "ckpt" / "best.pt").read_text() == f"w{r['params']['x']}\n"
        assert Path(record["dir"]).is_relative_to(d.home / "studies" / "art")


def test_artifacts_come_back_from_the_clusters_filesystem(clean_slurm: SlurmCluster,
                                                          remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm)
    d = remote_daemon.start()
    wait_up(d)
    check_artifacts(d, d.home / "cluster")


@pytest.mark.ssh
def test_artifacts_come_back_through_the_login_node(clean_slurm: SlurmCluster, cluster: SshdCluster,
                                                    remote_daemon: DaemonProc) -> None:
    login, _ = use_login_over_ssh(remote_daemon, clean_slurm, cluster)
    d = remote_daemon.start()
    wait_up(d)
    check_artifacts(d, login.root)


FILES_STUDY = """
    [study]
    name = "code"
    objective = {{ metric = "loss" }}
    algorithm = "grid"
    parallel = 2
    gpus = 1
    [params]
    x = {{ type = "choice", values = [1, 2] }}
    [run]
    workdir = "{src}"
    files = ["train.py", "data/"]
    command = "python3 train.py {{x}}"
    """

TRAIN = """import os, sys
offset = int(open("data/offset").read())
print("cwd=" + os.getcwd(), flush=True)
print("METRICS: loss=%d" % (int(sys.argv[1]) + offset), flush=True)
"""


def check_files_copied(d: DaemonProc, cluster_root: Path) -> None:
    """A study whose code is only here: `[run] files` copied to the cluster's workdir, the
    jobs run in that copy."""
    src = d.home / "src"
    (src / "data").mkdir(parents=True)
    (src / "train.py").write_text(TRAIN)
    (src / "data" / "offset").write_text("10")
    d.cli("submit", str(d.write_study("code", FILES_STUDY.format(src=src))))
    wait_for(lambda: len(d.runs(study="code", state="completed")) == 2, timeout=120, interval=0.3,
             what="both runs to complete")
    code = cluster_root / "studies" / "code" / "code"
    assert (code / "train.py").read_text() == TRAIN and (code / "data" / "offset").read_text() == "10"
    for r in d.runs(study="code"):
        assert d.cli("logs", r["name"]).stdout.splitlines()[0] == f"cwd={code}"
        assert reports(d, r["name"]) == [0] and r["objective"] == 10 + r["params"]["x"]


def test_a_studys_files_are_copied_to_the_clusters_filesystem(clean_slurm: SlurmCluster,
                                                              remote_daemon: DaemonProc) -> None:
    use_cluster(remote_daemon, clean_slurm)
    d = remote_daemon.start()
    wait_up(d)
    check_files_copied(d, d.home / "cluster")


@pytest.mark.ssh
def test_a_studys_files_are_copied_through_the_login_node(clean_slurm: SlurmCluster, cluster: SshdCluster,
                                                          remote_daemon: DaemonProc) -> None:
    login, _ = use_login_over_ssh(remote_daemon, clean_slurm, cluster)
    d = remote_daemon.start()
    wait_up(d)
    check_files_copied(d, login.root)


def test_hosts_add_adds_a_slurm_cluster_that_runs_a_study(clean_slurm: SlurmCluster,
                                                          remote_daemon: DaemonProc) -> None:
    calls = clean_slurm.install_commands(remote_daemon.home / "bin")
    d = remote_daemon.start()
    refused = d.cli("hosts", "add", "cluster", "local", "--kind", "slurm", "--gpus", "0", check=False)
    assert refused.returncode != 0 and "hosts.cluster.gpus: unknown key for a Slurm host" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    added = d.cli("hosts", "add", "cluster", "local", "--kind", "slurm", "--partition", clean_slurm.partition,
                  "--account", "lab42", "--max-jobs", "3", "--sbatch=--time=10", "--sbatch=--nice=0",
                  "--workdir", str(d.home / "cluster"), "--label", "a100")
    assert added.stdout.startswith("host cluster added (up")
    [config] = load_inventory(inventory_path(d.home))
    assert config == SlurmConfig("cluster", login="local", partition=clean_slurm.partition, account="lab42",
                                 max_jobs=3, sbatch=("--time=10", "--nice=0"), workdir=str(d.home / "cluster"),
                                 labels=("a100",))
    hosts = d.cli("hosts").stdout
    assert "partition gpu" in hosts and "queued (max 3)" in hosts, hosts
    d.cli("submit", study(d, "added", n=2, gpus=1, parallel=2, steps=3, sleep=0.1))
    wait_for(lambda: len(d.runs(study="added", state="completed")) == 2, timeout=120, interval=0.3,
             what="both runs to complete")
    assert sbatch_calls(calls) == 2
    assert {r["host"] for r in d.runs(study="added")} == {"cluster"}


@pytest.mark.ssh
def test_hosts_add_adds_a_slurm_cluster_whose_login_node_is_reached_over_ssh(
        clean_slurm: SlurmCluster, cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    login = cluster.add("login", gpus=None)
    calls = clean_slurm.install_commands(login.bin_dir)
    ssh = login.host_config()
    d = remote_daemon.start()
    target = f"{ssh.user}@127.0.0.1:{ssh.port}"
    added = d.cli("hosts", "add", "cluster", target, "--kind", "slurm", "--partition", clean_slurm.partition,
                  "--key", str(ssh.key), "--known-hosts", str(ssh.known_hosts), "--workdir", str(login.root))
    assert added.stdout.startswith("host cluster added (up")
    [config] = load_inventory(inventory_path(d.home))
    assert (config.kind, config.login, config.key) == ("slurm", target, str(ssh.key))
    d.cli("submit", study(d, "added", n=2, gpus=1, parallel=2, steps=3, sleep=0.1))
    wait_for(lambda: len(d.runs(study="added", state="completed")) == 2, timeout=120, interval=0.3,
             what="both runs to complete")
    assert sbatch_calls(calls) == 2
    assert f"slurm via {target}" in d.cli("hosts").stdout
