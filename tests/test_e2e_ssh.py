"""Remote hosts end to end: a real daemon, real OpenSSH sshd servers on 127.0.0.1 (one per
simulated host, each with its own fake nvidia-smi), the real CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import DaemonProc, use_hosts, wait_for, wait_hosts_up
from hypd.inventory import inventory_path, save_inventory
from tests.fakes.nvidia_smi import gpu
from tests.sshd import SshdCluster

pytestmark = [pytest.mark.slow, pytest.mark.ssh]

STUDY = """
[study]
name = "{name}"
objective = {{ metric = "loss" }}
algorithm = "grid"
parallel = {parallel}
gpus = {gpus}
retries = {retries}
[params]
x = {{ type = "choice", values = {values} }}
[run]
command = "echo \\"on=$(hostname) devices=$CUDA_VISIBLE_DEVICES\\"; python3 -u -c 'import time\\nfor i in range({steps}):\\n print(\\"METRICS: step=%d loss=%d\\" % (i, i))\\n time.sleep({sleep})'"
"""


def study(d: DaemonProc, name: str, n: int = 4, gpus: int = 0, parallel: int = 4, steps: int = 10,
          sleep: float = 0.1, retries: int = 0) -> str:
    return str(d.write_study(name, STUDY.format(name=name, values=list(range(n)), gpus=gpus, parallel=parallel,
                                                steps=steps, sleep=sleep, retries=retries)))


def test_a_study_spreads_over_two_hosts_and_leaves_a_busy_gpu_alone(cluster: SshdCluster,
                                                                     remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=[gpu(0), gpu(1, memory_used_mib=30000, utilization_pct=90)])
    b = cluster.add("b", gpus=[gpu(0), gpu(1)])
    use_hosts(remote_daemon, a.host_config(), b.host_config())
    d = remote_daemon.start()
    wait_hosts_up(d, "a", "b")
    wait_for(lambda: sum(len(h["gpus"]) for h in d.call("hosts")) == 4, timeout=20, what="GPU readings")
    hosts = d.cli("hosts").stdout
    assert "busy (someone else)" in hosts and "a  up" in hosts and "b  up" in hosts
    d.cli("submit", study(d, "spread", n=6, gpus=1, steps=15, sleep=0.1))
    seen: set[tuple[str, int]] = set()

    def finished() -> bool:
        for r in d.runs(state="running"):
            seen.add((r["host"], r["gpus"][0]))
        return all(r["state"] == "completed" for r in d.runs(study="spread"))
    wait_for(finished, timeout=90, interval=0.2, what="every run to complete")
    assert ("a", 1) not in seen  # someone else's GPU stays theirs
    assert {h for h, _ in seen} == {"a", "b"}
    for r in d.runs(study="spread"):
        first = d.cli("logs", r["name"]).stdout.splitlines()[0]
        assert first.endswith(f"devices={r['gpus'][0]}")
        assert [x["step"] for x in d.call("metrics", run=r["name"], since=0)["reports"]] == list(range(15))
        assert Path(r["run_dir"]).is_relative_to(a.root if r["host"] == "a" else b.root)


def test_sshd_killed_mid_run_and_restarted_loses_no_line(cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=1))
    d = remote_daemon.start()
    wait_hosts_up(d, "a")
    d.cli("submit", study(d, "drop", n=1, steps=40, sleep=0.1))
    d.wait_state("drop:1", "running")
    wait_for(lambda: d.run("drop:1")["reports"] >= 5, timeout=30, what="drop:1 reporting")
    a.kill()  # the listener and every connection: the daemon's connection drops
    wait_for(lambda: d.call("hosts")[0]["state"] == "down", timeout=30, what="host a down")
    time.sleep(1.5)
    a.start()
    run = d.wait_state("drop:1", "completed", timeout=60)
    assert run["reason"] == "all stages exited 0"
    log = d.cli("logs", "drop:1").stdout.splitlines()
    assert [line for line in log if line.startswith("METRICS")] == [
        f"METRICS: step={i} loss={i}" for i in range(40)]  # none lost, none doubled
    assert len(d.call("metrics", run="drop:1", since=0)["reports"]) == 40


def test_daemon_sigkilled_with_remote_runs_adopts_them(cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=None)
    b = cluster.add("b", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=2), b.host_config(cpu_slots=2))
    d = remote_daemon.start()
    wait_hosts_up(d, "a", "b")
    d.cli("submit", study(d, "adopt", n=4, steps=30, sleep=0.1))
    wait_for(lambda: len(d.runs(state="running")) == 4, timeout=30, what="four remote runs")
    wait_for(lambda: all(r["reports"] for r in d.runs(state="running")), timeout=30, what="every run reporting")
    d.kill9()
    time.sleep(1.5)
    d.start()
    d.wait_finished("adopt", timeout=90)
    for r in d.runs(study="adopt"):
        assert r["state"] == "completed", r
        assert [x["step"] for x in d.call("metrics", run=r["name"], since=0)["reports"]] == list(range(30))
    assert len(d.runs(study="adopt")) == 4  # nothing ran twice


def test_a_host_that_never_comes_back_loses_its_runs_and_they_are_retried(cluster: SshdCluster,
                                                                          remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=None)
    b = cluster.add("b", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=1, lost_after=3.0), b.host_config(cpu_slots=1))
    d = remote_daemon.start()
    wait_hosts_up(d, "a", "b")
    d.cli("submit", study(d, "lost", n=2, steps=150, sleep=0.1, retries=1))
    wait_for(lambda: len(d.runs(state="running")) == 2, timeout=30, what="a run on each host")
    on_a = next(r for r in d.runs(state="running") if r["host"] == "a")
    # Mid-run: the run has started on the host and reported, not just been placed there.
    wait_for(lambda: d.call("metrics", run=on_a["name"], since=0)["reports"], timeout=30, what="a first report")
    a.kill()
    lost = d.wait_state(on_a["name"], "lost", "completed", timeout=60)
    assert lost["state"] == "lost", lost
    assert lost["reason"].startswith("host a unreachable")
    # Its time stops where its host was lost: `ls`, `info` and the dashboard stop counting.
    assert lost["ended"] is not None and lost["started"] <= lost["ended"]
    retry = wait_for(lambda: next((r for r in d.runs(study="lost") if r["trial"] == on_a["trial"]
                                   and r["name"] != on_a["name"]), None), timeout=10, what="a retry")
    assert retry["attempt"] == 2
    d.wait_state(retry["name"], "completed", timeout=120)  # on b, once b's slot frees
    assert d.run(retry["name"])["host"] == "b"
    # The host comes back with the lost run still going: its trial has a newer attempt, so
    # the run is ended, not left running unseen.
    a.start()
    ended = d.wait_state(on_a["name"], "killed", "completed", timeout=60)
    assert ended["state"] == "completed" or "retried" in ended["reason"]


def test_kill_of_a_remote_run_leaves_no_process(cluster: SshdCluster, remote_daemon: DaemonProc) -> None:
    a = cluster.add("a", gpus=None)
    use_hosts(remote_daemon, a.host_config(cpu_slots=1))
    d = remote_daemon.start()
    wait_hosts_up(d, "a")
    d.write_study("stub", """
        [study]
        name = "stub"
        objective = { metric = "loss" }
        algorithm = "grid"
        [params]
        x = 1
        [run]
        command = "python3 -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)' & sleep 300"
    """)
    d.cli("submit", str(d.home / "studies" / "stub.toml"))
    run = d.wait_state("stub:1", "running")
    time.sleep(1)
    d.cli("kill", "stub:1")
    d.wait_state("stub:1", "killed", timeout=30)
    ctl = Path(a.root) / "runs" / "stub" / "0001"
    pid = int((ctl / "pid").read_text())
    wait_for(lambda: a.ssh(f"kill -0 -- -{pid} 2>/dev/null || echo gone").stdout.strip() == "gone",
             timeout=20, what="the remote process group to be gone")
    assert run["host"] == "a"


def test_hosts_add_with_an_unknown_host_key_is_refused_with_a_clear_reason(
        cluster: SshdCluster, remote_daemon: DaemonProc, tmp_path: Path) -> None:
    a = cluster.add("a", gpus=None)
    d = remote_daemon.start()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    out = d.cli("hosts", "add", "a", f"127.0.0.1:{a.port}", "--key", str(cluster.client_key)).stdout
    assert out.startswith("host a added")
    # The default known_hosts does not know this host's key: refused, and it says why.
    host = wait_for(lambda: next((h for h in d.call("hosts") if h["name"] == "a" and "key" in h["why"]), None),
                    timeout=20, what="a host-key refusal")
    assert host["state"] == "down" and "known_hosts" in host["why"]
    d.cli("hosts", "rm", "a")
    assert all(h["name"] != "a" for h in d.call("hosts"))
    # With its key known it comes up, and drain stops new runs there.
    d.cli("hosts", "add", "a", f"127.0.0.1:{a.port}", "--key", str(cluster.client_key),
          "--workdir", str(a.root))
    text = inventory_path(d.home).read_text()
    assert f'port = {a.port}' in text
    save_inventory(inventory_path(d.home), [a.host_config()])  # a hand edit, picked up live
    wait_hosts_up(d, "a")
    assert "draining" in d.cli("hosts", "drain", "a").stdout
    assert next(h for h in d.call("hosts") if h["name"] == "a")["state"] == "draining"
