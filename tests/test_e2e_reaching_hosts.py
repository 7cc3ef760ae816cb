"""Reaching hosts as the README says, against real sshd servers: the setup line in bash on a
host whose /bin/sh is dash, `hosts add --known-hosts / --no-known-hosts`, and the ssh line
to try by hand when a host cannot be reached."""

from __future__ import annotations

import os
import shlex

import pytest

from conftest import DaemonProc, wait_for
from hypd.inventory import inventory_path
from tests.sshd import SshdCluster, free_port

pytestmark = [pytest.mark.slow, pytest.mark.ssh]

STUDY = """
[study]
name = "venv"
objective = { metric = "loss" }
algorithm = "grid"
[params]
x = { type = "choice", values = [1, 2] }
[run]
command = "venv-tool {x}; echo \\"venv=$VIRTUAL_ENV\\""
"""


def test_the_readme_setup_line_works_on_a_host_whose_bin_sh_is_dash(cluster: SshdCluster,
                                                                     remote_daemon: DaemonProc) -> None:
    if os.path.basename(os.path.realpath("/bin/sh")) != "dash":
        pytest.skip("the hosts' /bin/sh is not dash here")
    a = cluster.add("a", gpus=None)
    # A virtualenv in the host's home, as `python3 -m venv ~/venv` leaves one: bin/activate
    # is meant to be sourced (dash has no `source`), and it exports PATH.
    bin_dir = a.home / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text('VIRTUAL_ENV="$HOME/venv"; export VIRTUAL_ENV\n'
                                      'PATH="$VIRTUAL_ENV/bin:$PATH"; export PATH\n')
    (bin_dir / "venv-tool").write_text('#!/bin/sh\necho "METRICS: loss=$1"\n')
    (bin_dir / "venv-tool").chmod(0o755)
    d = remote_daemon.start()
    d.cli("hosts", "add", "gpu2", f"127.0.0.1:{a.port}", "--key", str(cluster.client_key),
          "--known-hosts", str(cluster.known_hosts), "--workdir", str(a.root),
          "--setup", "source ~/venv/bin/activate")
    wait_for(lambda: next(h for h in d.call("hosts") if h["name"] == "gpu2")["state"] == "up", 30,
             what="gpu2 up")
    d.cli("submit", str(d.write_study("venv", STUDY)))
    waited = d.cli("wait", "venv", check=False, timeout=90)
    assert waited.returncode == 0, waited.stdout + waited.stderr + d.cli("logs", "venv:1", check=False).stdout
    assert [d.run(f"venv:{n}")["objective"] for n in (1, 2)] == [1.0, 2.0]
    assert d.run("venv:1")["last_line"] == f"venv={a.home / 'venv'}"


def test_known_hosts_options_and_the_ssh_line_to_try_by_hand(cluster: SshdCluster, remote_daemon: DaemonProc,
                                                             tmp_path: object) -> None:
    a = cluster.add("a", gpus=None)
    d = remote_daemon.start()
    # Nothing listens there: the host is down, and says how to try the same by hand.
    port = free_port()
    d.cli("hosts", "add", "nowhere", f"alice@127.0.0.1:{port}", "--key", str(cluster.client_key),
          "--known-hosts", str(cluster.known_hosts))
    host = wait_for(lambda: next((h for h in d.call("hosts") if h["name"] == "nowhere" and h["why"]), None), 30,
                    what="nowhere's reason")
    line = (f"ssh -p {port} -i {shlex.quote(str(cluster.client_key))} "
            f"-o UserKnownHostsFile={shlex.quote(str(cluster.known_hosts))} alice@127.0.0.1")
    assert host["state"] == "down" and host["why"].endswith(f"try by hand: {line}")
    assert f"try by hand: {line}" in d.cli("hosts").stdout
    d.cli("hosts", "rm", "nowhere")

    # --known-hosts PATH: that file vouches for the host's key; --no-known-hosts: no check.
    d.cli("hosts", "add", "checked", f"127.0.0.1:{a.port}", "--key", str(cluster.client_key),
          "--known-hosts", str(cluster.known_hosts), "--workdir", str(a.root))
    d.cli("hosts", "add", "unchecked", f"127.0.0.1:{a.port}", "--key", str(cluster.client_key),
          "--no-known-hosts", "--workdir", str(a.root / "u"))
    wait_for(lambda: {h["name"]: h["state"] for h in d.call("hosts")} == {"checked": "up", "unchecked": "up"}, 30,
             what="both hosts up")
    text = inventory_path(d.home).read_text()
    assert f'known_hosts = "{cluster.known_hosts}"' in text and "known_hosts = false" in text
    # The file's header names a command that exists.
    assert text.startswith("# Hosts for hypd (see `hypd hosts add --help`)")
    assert "--known-hosts PATH" in d.cli("hosts", "add", "--help").stdout
    both = d.cli("hosts", "add", "x", "127.0.0.1", "--known-hosts", "k", "--no-known-hosts", check=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr
