"""What users of other sweep tools expect, end to end against a real daemon (and real
sshd hosts): host choice per study, artifacts fetched back, extending / archiving /
removing studies, and the Python client."""

from __future__ import annotations

from dataclasses import replace

import pytest

from conftest import DaemonProc, use_hosts, wait_hosts_up
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
